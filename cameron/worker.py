"""Run one ticket: call the start step, follow each answer's next steps (in parallel or in
order), and record every step transition in the store.

The code reads as plain blocking calls; the dispatcher runs each ticket in its own greenlet,
which walks the step tree in a loop (so its depth never comes near Python's recursion
limit) and hands each parallel branch but one to a greenlet of its own. A ticket that was
taken before (by a process that died) is resumed: steps recorded done are not called
again, their recorded next steps are followed.
"""
import dataclasses
import datetime
import logging
import math
import time

import gevent

from . import protocol
from .errors import InvalidAnswer, StoreUnavailable
from .store import FINISHED

MAX_STORE_BACKOFF = 5.0  # seconds between tries of a Redis that does not answer

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Call:
    """A step about to run: where it sits in the tree and what it is sent."""
    id: str
    name: str
    url: str
    data: object
    parent: str = None
    requestor: str = None

    def identity(self):
        """The fields that place the step in the tree, in each of its records: the running
        one is sent without waiting for Redis, so the final one must stand on its own."""
        return {'name': self.name, 'url': self.url, 'parent': self.parent,
                'requestor': self.requestor}


@dataclasses.dataclass
class _TicketRun:
    workflow: object  # catalogue.Workflow
    ticket: str
    key: str
    recorded: dict  # step id -> step record, from an earlier run of this ticket
    deadline: float = math.inf  # epoch seconds after which no step is called
    steps: int = 1  # steps counted against workflow.max_steps: the start step, and every
    # step named in an answer as soon as the answer is read, started or not
    failed: bool = False


class Worker:
    def __init__(self, store, client, process, max_fanout, clock=time.time, sleep=gevent.sleep):
        self.store = _Persistent(store, sleep)
        self.client = client
        self.process = process
        self.max_fanout = max_fanout
        self._clock = clock

    def run_ticket(self, workflow, ticket, record):
        """Run the ticket, whose record was read as it was taken, to its end; returns its
        final state, or None if it has no record."""
        key, state = record['payload']['key'], record['status'].get('current')
        if key is None:
            log.warning('ticket %s/%s: no record (expired or deleted), dropped', workflow.name, ticket)
            self.store.drop_ticket(workflow.name, ticket, self.process)
            return None
        if state in FINISHED:  # it had ended, and was taken again before it was released
            self.store.release_ticket(workflow.name, ticket, self.process)
            return state
        run = _TicketRun(workflow, ticket, key, {s['id']: s for s in record['steps']},
                         deadline=_epoch(record['status']['enqueued']) + workflow.deadline)
        self.store.mark_ticket(workflow.name, ticket, 'running')
        log.info('ticket %s/%s: running', workflow.name, ticket)
        url = protocol.expand_url(workflow.start_point_url, key)
        self._run_tree(run, _Call('1', 'start', url, record['payload']['data']))
        state = 'error' if run.failed else 'done'
        self.end_ticket(workflow.name, ticket, state)
        return state

    def end_ticket(self, workflow, ticket, state):
        """Record the ticket's final state and release it, waiting out a Redis outage."""
        self.store.finish_ticket(workflow, ticket, self.process, state)
        log.info('ticket %s/%s: %s', workflow, ticket, state)

    def _run_tree(self, run, root):
        """Run the step root and every step under it. The first next step of each goes on
        in this greenlet, each further parallel one in a greenlet of its own: a loop over
        what is left to do, not recursion, so that a chain of any length stays flat, and
        one greenlet fewer per step that names next steps."""
        todo = [root]  # steps to run here, the last first, and [greenlets] to wait for
        try:
            while todo:
                item = todo.pop()
                if isinstance(item, list):
                    _join(item)
                    continue
                children, parallel = self._run_step(run, item)
                if parallel and len(children) > 1:
                    todo.append([gevent.spawn(self._run_tree, run, child)
                                 for child in children[1:]])
                    todo.append(children[0])
                else:
                    todo.extend(reversed(children))  # each with its subtree before the next
        except Exception:
            # A fault of Cameron's own ends the ticket in error, but what runs beside it
            # first runs to its end, records and all, as a fault in a sibling would let it.
            gevent.joinall([g for item in todo if isinstance(item, list) for g in item])
            raise
        finally:
            for item in todo:  # left running only if this ticket is being stopped
                if isinstance(item, list):
                    gevent.killall(item)

    def _run_step(self, run, call):
        """Run one step (or follow its recorded answer); returns (next calls, parallel)."""
        recorded = run.recorded.get(call.id)
        if recorded and recorded['status']['current'] in FINISHED:
            answer = _recorded_answer(run, recorded)
        else:
            answer = self._call_step(run, call)
        if answer is None or not answer.next:
            return [], False
        if len(answer.next) > self.max_fanout:
            self._fail(run, call, protocol.step_error(
                'limit', f'{len(answer.next)} next steps are more than max_fanout '
                         f'({self.max_fanout}); none were run'))
            return [], False
        if run.steps + len(answer.next) > run.workflow.max_steps:
            self._fail(run, call, protocol.step_error(
                'limit', f'{len(answer.next)} next steps would pass max_steps '
                         f'({run.workflow.max_steps}); none were run'))
            return [], False
        run.steps += len(answer.next)
        return [_Call(protocol.child_step_id(call.id, i), step.name, step.url, answer.data,
                      parent=call.id, requestor=call.name)
                for i, step in enumerate(answer.next, 1)], answer.parallel

    def _call_step(self, run, call):
        """Call the step and record the outcome; the Answer, or None if the step failed."""
        workflow = run.workflow
        self.store.record_step(workflow.name, run.ticket, call.id, 'running', **call.identity())
        left = run.deadline - self._clock()
        if left <= 0:
            self._fail(run, call, protocol.step_error(
                'timeout', f'the ticket deadline ({workflow.deadline:g}s) passed before '
                           'this step was called'))
            return None
        request = protocol.step_request(run.key, call.data, run.ticket, workflow.name, call.id,
                                        call.requestor)
        result = self.client.call(call.url, request, run.ticket, call.id,
                                  workflow.step_timeout, workflow.retries, budget=left)
        outcome = dict(attempts=result.attempts, http_status=result.http_status,
                       duration_ms=result.duration_ms)
        if result.error is None:
            try:
                answer = protocol.parse_answer(result.body, call.url, run.key,
                                               workflow.allowed_hosts)
            except InvalidAnswer as e:
                result.error = protocol.step_error('invalid_response', str(e),
                                                   result.http_status, result.body)
        if result.error is not None:
            self._fail(run, call, result.error, **outcome)
            return None
        self.store.record_step(
            workflow.name, run.ticket, call.id, 'done', data=answer.data,
            next=[{'name': s.name, 'url': s.url} for s in answer.next],
            parallel=answer.parallel, answer_name=answer.name, **call.identity(), **outcome)
        return answer

    def _fail(self, run, call, error, **outcome):
        run.failed = True
        self.store.record_step(run.workflow.name, run.ticket, call.id, 'error', error=error,
                               **call.identity(), **outcome)
        log.warning('ticket %s/%s step %s (%s): %s: %s', run.workflow.name, run.ticket,
                    call.id, call.name, error['type'], error['message'])


class _Persistent:
    """The store, with each call tried again, with backoff, while Redis is unavailable: a
    ticket waits for Redis to come back rather than lose the record of a step."""

    def __init__(self, store, sleep):
        self._store = store
        self._sleep = sleep

    def __getattr__(self, name):
        method = getattr(self._store, name)

        def call(*args, **kwargs):
            delay = 0.1
            while True:
                try:
                    return method(*args, **kwargs)
                except StoreUnavailable as e:
                    log.debug('%s: %s; again in %.1fs', name, e, delay)
                    self._sleep(delay)
                    delay = min(delay * 2, MAX_STORE_BACKOFF)
        setattr(self, name, call)  # made once: __getattr__ is not asked for it again
        return call


def _join(greenlets):
    """Wait for the greenlets to end, even if one raises; a kill of this ticket stops
    them all. Then raise what the first one that failed raised."""
    try:
        gevent.joinall(greenlets)
    finally:
        gevent.killall(greenlets)  # only if this ticket itself is being killed
    for greenlet in greenlets:
        if greenlet.exception is not None:
            raise greenlet.exception


def _epoch(iso_time):
    return datetime.datetime.fromisoformat(iso_time).timestamp()


def _recorded_answer(run, step):
    """A step finished by an earlier run: follow its recorded next steps, call nothing."""
    if step['status']['current'] == 'error':
        run.failed = True
        return None
    return protocol.Answer(name=step['answer_name'], data=step['data'],
                           next=tuple(protocol.NextStep(**s) for s in step['next'] or ()),
                           parallel=step['parallel'])
