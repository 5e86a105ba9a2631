"""Take tickets from the workflows' queues and run each in its own greenlet.

At most max_running_tickets run at once; the rest wait in Redis. The loop sleeps on an
in-process event that the API sets when it starts a ticket (the original's "notify"), and
looks at the queues every poll_interval anyway, for tickets started through other
processes. It never spins on an empty queue.
"""
import collections
import logging

import gevent
import gevent.event
import gevent.pool

from .errors import StoreUnavailable

log = logging.getLogger(__name__)
BATCH = 100  # most tickets taken in one round trip to Redis
MAX_BACKOFF = 5.0  # seconds between looks at a Redis that does not answer


class Dispatcher:
    def __init__(self, store, worker, catalogue, process, max_running_tickets, poll_interval,
                 endings):
        self.store = store
        self.worker = worker
        self.catalogue = catalogue
        self.process = process
        self.poll_interval = poll_interval
        self.tickets = gevent.pool.Pool(max_running_tickets)
        self._names = sorted(catalogue)
        self._next_name = 0
        self._appetite = {}  # workflow -> tickets to ask for next time
        self._wake = gevent.event.Event()
        self._stopping = False
        self._loop = None
        self.endings = endings  # told when a ticket ends here
        self._running = {}  # (workflow, ticket) -> its greenlet
        self._orphans = set()  # held in Redis but not running here, at the last look
        self._unheld = set()  # running here but not held in Redis, at the last look
        self.suspended = False  # no lease on Redis: take nothing, run nothing

    def start(self):
        self._loop = gevent.spawn(self._run_loop)

    def notify(self):
        """A ticket was queued: look at the queues now."""
        self._wake.set()

    def run_once(self):
        """Take what tickets there is room for and spawn them; returns how many."""
        room = min(self.tickets.free_count(), BATCH)
        if not room or not self._names or self.suspended:
            return 0
        taken = self.store.take_tickets(self._asks(room), self.process)
        self._learn(taken)
        if self.suspended:  # the lease lapsed during the take: hold them, run nothing
            return 0
        for workflow, ticket, record in taken:
            if (workflow, ticket) in self._running:
                # Put back by a peer that took this process for dead, and taken again here:
                # it runs here already, and this copy in the processing list holds it again.
                continue
            log.info('ticket %s/%s: dispatched', workflow, ticket)
            greenlet = self.tickets.spawn(self._run_ticket, workflow, ticket, record)
            self._running[workflow, ticket] = greenlet
            # A link, not a finally: it also runs for a greenlet killed before it started.
            greenlet.link(lambda g, key=(workflow, ticket): self._ended(key, g))
        return len(taken)

    def reconcile(self, lapsed=False):
        """Make what runs here match what this process holds in Redis.

        A ticket running here but no longer held is one whose end has just been written,
        or one that a peer, taking this process for dead, put back: that one is stopped
        (another process may run it) as soon as a look finds it so after the heartbeat had
        `lapsed`, or else at the second look in a row. A ticket held but not running here
        (a take or a finish cut short by Redis) is put back in its queue once two looks in
        a row find it so."""
        held = self.store.held_tickets(self.process, self._names)
        unheld = {key for key in self._running if key not in held}
        for key in unheld if lapsed else unheld & self._unheld:
            log.warning('ticket %s/%s: taken back from this process; stopped here', *key)
            self._running.pop(key).kill(block=False)
        self._unheld = set() if lapsed else unheld - self._unheld
        orphans = {key for key in held if key not in self._running}
        for workflow, ticket in orphans & self._orphans:
            log.warning('ticket %s/%s: held here but not running; put back in its queue',
                        workflow, ticket)
            self.store.requeue_ticket(workflow, ticket, self.process)
            self.notify()
        self._orphans = orphans - self._orphans

    def suspend(self):
        """Redis has not confirmed this process alive for most of a heartbeat TTL: peers
        may soon recover its tickets, so it stops them, and takes no more, first."""
        self.suspended = True
        for key in list(self._running):
            self._running.pop(key).kill(block=False)

    def resume(self):
        self.suspended = False
        self.notify()

    def _asks(self, room):
        """Workflow names to take a ticket from, one entry per ticket asked for, starting
        with a different workflow each time so that a busy one cannot starve the others."""
        start = self._next_name
        self._next_name = (start + 1) % len(self._names)
        asks = []
        for name in self._names[start:] + self._names[:start]:
            asks += [name] * self._appetite.get(name, 1)
        return asks[:room]

    def _learn(self, taken):
        """A workflow whose queue gave all that was asked is asked for twice as many next
        time; an idle one for one, so that idle looks cost one LMOVE per workflow."""
        got = collections.Counter(workflow for workflow, _, _ in taken)
        for name in self._names:
            asked = self._appetite.get(name, 1)
            self._appetite[name] = min(asked * 2, BATCH) if got[name] >= asked else 1

    def stop(self, timeout):
        """Take no more tickets, give the running ones timeout seconds, then kill the rest
        (they stay in the processing list, for Liveness.stop to put back). True if all had
        finished."""
        self._stopping = True
        self._wake.set()
        if self._loop is not None:
            self._loop.join(timeout=5)  # a hung Redis call must not hold the exit
            self._loop.kill()
        finished = self.tickets.join(timeout=timeout)
        if not finished:
            log.warning('%d tickets still running after %ss; stopped, to be resumed',
                        len(self.tickets), timeout)
            self.tickets.kill()
        return finished

    def _run_loop(self):
        backoff = 0.0
        while not self._stopping:
            try:
                taken = self.run_once()
                backoff = 0.0
            except StoreUnavailable as e:
                backoff = min(max(backoff * 2, 0.1), MAX_BACKOFF)
                log.warning('dispatcher: %s; next look in %.1fs', e, backoff)
                self._wait(backoff)
                continue
            except Exception:
                log.exception('dispatcher: unexpected error; next look in %ss', self.poll_interval)
                self._wait(self.poll_interval)
                continue
            if taken:
                gevent.sleep(0)  # let the new tickets and the API run between batches
            elif self.tickets.full():
                self.tickets.wait_available(timeout=self.poll_interval)
            else:
                self._wait(self.poll_interval)

    def _wait(self, timeout):
        self._wake.wait(timeout)
        self._wake.clear()

    def _run_ticket(self, workflow, ticket, record):
        try:
            self.worker.run_ticket(self.catalogue[workflow], ticket, record)
        except Exception:
            # A fault of Cameron's own: end the ticket rather than leave it held here for
            # ever; resuming it would most likely meet the same fault again.
            log.exception('ticket %s/%s: unexpected error; the ticket ends in error',
                          workflow, ticket)
            self.worker.end_ticket(workflow, ticket, 'error')

    def _ended(self, key, greenlet):
        if self._running.get(key) is greenlet:  # not a successor started after a kill
            del self._running[key]
        self.endings.tell(key[1])  # at once, and also if it ended without finishing
