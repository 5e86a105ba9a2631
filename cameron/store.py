"""The Redis layout (SPEC §3) and every Redis command Cameron sends.

    key                                              type    holds
    {ns}:workflow:{name}:queue:incoming              list    tickets waiting; LPUSH in, taken from the right
    {ns}:workflow:{name}:queue:processing:{process}  list    tickets a process has taken and not ended
    {ns}:workflow:{name}:ticket:{ticket}             hash    the ticket's whole record
    {ns}:workflow:{name}:idempotency:{key}           string  the ticket a start with this Idempotency-Key made
    {ns}:processes                                   hash    process id -> the workflows it takes from
    {ns}:process:{process}:heartbeat                 string  present while the process lives (TTL)
    {ns}:endings                                     pubsub  each ticket id as the ticket ends

Ticket hash fields: payload.key, payload.data (JSON), status.current, status.{state}.time,
and for each step step.{id}.{field}: name, url, parent, requestor, answer_name,
status.current, status.{state}.time (text), attempts, http_status, duration_ms, data, next,
parallel, error (JSON). Times are ISO 8601 UTC with milliseconds.

Nothing else in Cameron imports redis: a lost connection leaves this module as
StoreUnavailable.
"""
import functools
import itertools
import json
import socket
import time

import gevent
import gevent.event
import hiredis
import redis
from gevent import monkey
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from . import idle
from .errors import StoreUnavailable

FINISHED = ('done', 'error')
# gevent's socket class is not a subclass of the standard one: a connection made before
# patching (or with patching left out) has the standard one.
_SOCKETS = (socket.socket, monkey.get_original('socket', 'socket'))
_STEP_ORDER = ('id', 'name', 'parent', 'requestor', 'url', 'status', 'attempts', 'http_status',
               'duration_ms', 'data', 'next', 'parallel', 'error', 'answer_name')


def _text(value):
    return value


def _flag(value):
    return 'true' if value else 'false'  # as JSON spells it


def _is_true(text):
    return text == 'true'


# How each step field is written, and read back: text as it is, numbers and flags as their
# JSON text, the rest as JSON.
_STEP_FIELDS = {
    'name': (_text, _text), 'url': (_text, _text), 'parent': (_text, _text),
    'requestor': (_text, _text), 'answer_name': (_text, _text),
    'attempts': (str, int), 'http_status': (str, int), 'duration_ms': (repr, float),
    'parallel': (_flag, _is_true),
    'data': (json.dumps, json.loads), 'next': (json.dumps, json.loads),
    'error': (json.dumps, json.loads),
}
_STEP_DECODERS = {name: decode for name, (_, decode) in _STEP_FIELDS.items()}


def incoming_key(ns, workflow):
    return f'{ns}:workflow:{workflow}:queue:incoming'


def processing_key(ns, workflow, process):
    return f'{ns}:workflow:{workflow}:queue:processing:{process}'


def ticket_key(ns, workflow, ticket):
    return f'{ns}:workflow:{workflow}:ticket:{ticket}'


def idempotency_key(ns, workflow, key):
    return f'{ns}:workflow:{workflow}:idempotency:{key}'


def endings_channel(ns):
    return f'{ns}:endings'


def processes_key(ns):
    return f'{ns}:processes'


def heartbeat_key(ns, process):
    return f'{ns}:process:{process}:heartbeat'


# Answers of a Redis that cannot take writes for now (a replica during failover, out of
# memory, unable to persist, busy): to Cameron, as good as unreachable. redis-py has classes
# for some of them, and leaves the others as a ResponseError that starts with the code.
_REFUSALS = tuple(getattr(redis.exceptions, name) for name in
                  ('ReadOnlyError', 'OutOfMemoryError', 'TryAgainError', 'MasterDownError')
                  if hasattr(redis.exceptions, name))
_REFUSAL_CODES = ('READONLY', 'OOM', 'MISCONF', 'MASTERDOWN', 'BUSY', 'TRYAGAIN', 'NOREPLICAS')


def _is_refusal(error):
    # In a pipeline redis-py puts "Command # N (...) of pipeline caused error: " first.
    reply = str(error).rpartition('caused error: ')[2]
    return isinstance(error, _REFUSALS) or reply.startswith(_REFUSAL_CODES)


def _unavailable_on_redis_errors(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise StoreUnavailable(f'Redis is unavailable: {e}') from e
        except redis.ResponseError as e:
            if _is_refusal(e):
                raise StoreUnavailable(f'Redis refuses writes for now: {e}') from e
            raise
    return wrapper


def connect(url, max_connections):
    """A client of the Redis at url, which must answer now; with no url, an embedded
    in-process one (fakeredis) whose data is lost at exit."""
    if url is None:
        import fakeredis  # only the embedded mode needs it
        return fakeredis.FakeRedis(decode_responses=True)
    try:
        # A blocking pool: past max_connections, a command waits for a free connection
        # instead of failing, so thousands of tickets share a bounded number of sockets.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=10, decode_responses=True,
            socket_timeout=10, socket_connect_timeout=5,
            # For single commands, one quick retry hides a pooled connection gone stale
            # (Redis restarted); longer outages reach the dispatcher and the API, which back
            # off or answer 503. Batches are never sent twice: see _Connections.
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 1))
        client = redis.Redis(connection_pool=pool)
        client.ping()
    except (redis.RedisError, ValueError) as e:
        raise StoreUnavailable(f'cannot reach Redis at {url}: {e}') from None
    return client


def step_sort_key(step_id):
    """Steps are listed by id, the index paths compared as numbers: 1-2 before 1-10."""
    return tuple(int(part) for part in step_id.split('-'))


def timestamp(seconds):
    """ISO 8601 UTC with milliseconds, as every status.{state}.time field holds."""
    whole = int(seconds)
    if whole != _second[0]:  # formatting is the slow part; it changes once a second
        _second[:] = [whole, time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(whole))]
    return f'{_second[1]}.{int((seconds - whole) * 1000):03d}Z'


_second = [None, '']


class _Gathering:
    """Commands from many greenlets sent together: each caller adds its command to the
    batch being gathered, one greenlet sends the whole batch in one round trip, and every
    caller returns (or raises) once its batch is done. Under load, hundreds of commands
    cost one round trip; alone, a command waits one turn of the event loop."""

    def __init__(self, connections, new_batch):
        self._connections = connections
        self._new_batch = new_batch
        self._batch = new_batch()
        self._sender = None

    def batch(self):
        """The batch being gathered, which is sent at the next turn of the event loop."""
        if self._sender is None:
            self._sender = gevent.spawn(self._send)
        return self._batch

    def _send(self):
        try:
            while self._batch:
                batch, self._batch = self._batch, self._new_batch()
                commands = batch.commands()
                try:
                    replies = self._connections.round_trip(commands)
                except Exception as e:  # each caller gets it, and retries or reports it
                    replies = [e] * len(commands)
                batch.answer(replies)
        finally:
            self._sender = None


class _Connections:
    """The connections batches go out on, kept between round trips rather than given back
    to the pool.

    redis-py's pool looks at a connection for a close by the server (Redis restarted) as
    it lends it, through gevent's poll, which goes round the event loop even when it need
    not wait: 87 µs of the 152 µs of CPU a round trip cost. A kept connection is looked at
    with the real poll instead. At most KEPT are kept, out of redis_connections; a round
    trip that finds none free borrows one from the pool.

    A batch is never sent twice: one that fails on the way (a close that the look could not
    see yet, say, after a failover) fails its callers, who try again (the worker) or answer
    503 (the API). Resending could queue a ticket twice."""

    KEPT = 4

    def __init__(self, pool):
        self._pool = pool
        self._free = []

    def round_trip(self, commands):
        """The replies to commands (tuples), sent in one write and read in order; an error
        reply is a ResponseError in its place. What a redis-py pipeline does, but for its
        retry, at half its CPU per command: each command is packed by hiredis at once rather
        than through redis-py's command methods, serializer and response callbacks."""
        connection = self._free.pop() if self._free else self._pool.get_connection()
        try:
            if not _quiet(connection) or _moved(connection):
                connection.disconnect()  # it connects again as it sends
            connection.send_packed_command([b''.join(map(hiredis.pack_command, commands))])
            replies = []
            for _ in commands:
                try:
                    replies.append(connection.read_response())
                except redis.ResponseError as e:
                    replies.append(e)
        except BaseException:
            connection.disconnect()  # replies may be left unread on it
            self._pool.release(connection)
            raise
        if len(self._free) < self.KEPT:
            self._free.append(connection)
        else:
            self._pool.release(connection)
        return replies


def _moved(connection):
    """True if the server has said it moves (redis-py 8's maintenance notices), which the
    pool would act on as the connection came back to it; a kept one does not come back."""
    should_reconnect = getattr(connection, 'should_reconnect', None)
    return should_reconnect is not None and should_reconnect()


def _quiet(connection):
    """True unless something waits to be read on the connection: the server's close, say.
    fakeredis's connections are never closed."""
    sock = getattr(connection, '_sock', None)  # None while not connected
    return not isinstance(sock, _SOCKETS) or idle.quiet(sock, idle.watch(sock))


def _hset(key, fields):
    return ('HSET', key, *itertools.chain.from_iterable(fields.items()))


class _Writes:
    """HSETs, merged per key (later fields win, as in Redis), then other commands; in a
    MULTI/EXEC if transaction, so that all of it or nothing is written. Every caller gets
    the batch's first error."""

    def __init__(self, transaction=False):
        self.transaction = transaction
        self.fields = {}  # key -> {field: value}
        self.then = []  # commands (tuples) sent after the fields
        self.written = gevent.event.AsyncResult()

    def __bool__(self):
        return bool(self.fields)

    def add(self, key, fields, then=()):
        self.fields.setdefault(key, {}).update(fields)
        self.then.extend(then)

    def commands(self):
        commands = [_hset(key, fields) for key, fields in self.fields.items()] + self.then
        return [('MULTI',), *commands, ('EXEC',)] if self.transaction else commands

    def answer(self, replies):
        if self.transaction and isinstance(replies[-1], list):
            replies = replies[:-1] + replies[-1]  # errors of commands run by EXEC
        error = next((reply for reply in replies if isinstance(reply, Exception)), None)
        if error is None:
            self.written.set(None)
        else:
            self.written.set_exception(error)


class _Reads:
    """Read commands, each with its own reply (or error) for its caller."""

    def __init__(self):
        self._commands = []
        self._replies = []  # an AsyncResult for each command

    def __bool__(self):
        return bool(self._commands)

    def add(self, *command):
        reply = gevent.event.AsyncResult()
        self._commands.append(command)
        self._replies.append(reply)
        return reply

    def commands(self):
        return self._commands

    def answer(self, replies):
        for reply, value in zip(self._replies, replies):
            if isinstance(value, Exception):
                reply.set_exception(value)
            else:
                reply.set(value)


class Store:
    def __init__(self, client, namespace, ticket_ttl, clock=time.time):
        self.redis = client
        self.ns = namespace
        self.ticket_ttl = ticket_ttl
        self._clock = clock
        self._connections = _Connections(client.connection_pool)
        self._writes = _Gathering(self._connections, _Writes)
        # Starts and finishes are all or nothing: Redis short of memory refuses an HSET but
        # not the LREM that frees memory, and a ticket must never be released unrecorded.
        self._starts = _Gathering(self._connections, lambda: _Writes(transaction=True))
        self._finishes = _Gathering(self._connections, lambda: _Writes(transaction=True))
        self._reads = _Gathering(self._connections, _Reads)

    @staticmethod
    def _write(gathering, key, fields, then=(), wait=True):
        """HSET fields on key, then the commands in `then`, with the batch being gathered.
        With wait=False, return at once: for a write that a later, waited-for write of the
        same caller makes good."""
        batch = gathering.batch()
        batch.add(key, fields, then)
        if wait:
            batch.written.get()

    def _pipelined(self, commands):
        """The replies to commands, sent at once, as a pipeline without a transaction;
        the first error reply is raised."""
        commands = list(commands)
        replies = self._connections.round_trip(commands) if commands else []
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _read(self, *command):
        return self._reads.batch().add(*command).get()

    def _status(self, state, prefix=''):
        return {f'{prefix}status.current': state,
                f'{prefix}status.{state}.time': timestamp(self._clock())}

    @_unavailable_on_redis_errors
    def ping(self):
        self.redis.ping()

    @_unavailable_on_redis_errors
    def push_ticket(self, workflow, ticket, key, data, idempotency=None):
        """Create the ticket's hash and queue it, in one transaction (which concurrent starts
        share). With an idempotency key seen before (within ticket_ttl), create nothing and
        return the earlier ticket."""
        if idempotency is None:
            self._write(self._starts, *self._new_ticket(workflow, ticket, key, data))
            return ticket
        guard = idempotency_key(self.ns, workflow, idempotency)
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(guard)  # two starts with one key: one EXEC wins, one sees it
                    earlier = pipe.get(guard)
                    if earlier is not None:
                        return earlier
                    pipe.multi()
                    pipe.set(guard, ticket, ex=self.ticket_ttl)
                    ticket_hash, fields, (queue,) = self._new_ticket(workflow, ticket, key, data)
                    pipe.hset(ticket_hash, mapping=fields)
                    pipe.execute_command(*queue)
                    pipe.execute()
                    return ticket
                except redis.WatchError:
                    continue

    def _new_ticket(self, workflow, ticket, key, data):
        """(ticket key, its first fields, [the command that queues it])."""
        return (ticket_key(self.ns, workflow, ticket),
                {'payload.key': key, 'payload.data': json.dumps(data), **self._status('enqueued')},
                [('LPUSH', incoming_key(self.ns, workflow), ticket)])

    @_unavailable_on_redis_errors
    def take_tickets(self, workflows, process):
        """Move up to one ticket from each named workflow's queue into this process's
        processing list, read its record and mark it dispatched unless it has ended.
        Returns [(workflow, ticket, record)]; the record has no key if the ticket had none."""
        taken = [(w, t) for w, t in zip(workflows, self._pipelined(
            ('LMOVE', incoming_key(self.ns, w), processing_key(self.ns, w, process), 'RIGHT',
             'LEFT') for w in workflows)) if t is not None]
        records = [_decode_ticket(w, t, _as_dict(fields)) for (w, t), fields in zip(
            taken, self._pipelined(('HGETALL', ticket_key(self.ns, w, t)) for w, t in taken))]
        dispatched = self._status('dispatched')
        marks = []
        for record in records:
            if record['payload']['key'] is not None \
                    and record['status'].get('current') not in FINISHED:
                marks.append(_hset(ticket_key(self.ns, record['workflow'], record['ticket']),
                                   dispatched))
                record['status'].update(current='dispatched',
                                        dispatched=dispatched['status.dispatched.time'])
        self._pipelined(marks)
        return [(r['workflow'], r['ticket'], r) for r in records]

    @_unavailable_on_redis_errors
    def mark_ticket(self, workflow, ticket, state):
        self._write(self._writes, ticket_key(self.ns, workflow, ticket), self._status(state))

    @_unavailable_on_redis_errors
    def finish_ticket(self, workflow, ticket, process, state):
        """Record the final state, start the expiry clock and release the ticket from the
        processing list, in one transaction: a ticket is never released unrecorded. The
        LREM looks from the tail, where the tickets taken longest ago are: from the head, it
        passed every ticket taken since, thousands with thousands in flight."""
        key = ticket_key(self.ns, workflow, ticket)
        self._write(self._finishes, key, self._status(state), then=[
            ('EXPIRE', key, self.ticket_ttl),
            ('LREM', processing_key(self.ns, workflow, process), -1, ticket),
            ('PUBLISH', endings_channel(self.ns), ticket)])

    @_unavailable_on_redis_errors
    def listen_endings(self, told, subscribed):
        """Call subscribed() once listening, then told(ticket) for each ticket that ends,
        in any process, until Redis fails."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(endings_channel(self.ns))
            subscribed()
            while True:
                message = pubsub.get_message(timeout=1.0)
                if message is not None:
                    told(message['data'])
        finally:
            pubsub.close()

    @_unavailable_on_redis_errors
    def drop_ticket(self, workflow, ticket, process):
        """Release a taken ticket that has no record to run (it expired or was deleted
        while queued)."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrem(processing_key(self.ns, workflow, process), 1, ticket)
            pipe.delete(ticket_key(self.ns, workflow, ticket))  # a stub, if anything
            pipe.execute()

    @_unavailable_on_redis_errors
    def release_ticket(self, workflow, ticket, process):
        """Release a taken ticket that had already ended."""
        self.redis.lrem(processing_key(self.ns, workflow, process), 1, ticket)

    @_unavailable_on_redis_errors
    def requeue_ticket(self, workflow, ticket, process):
        """Put one ticket this process holds back at the taking end of its queue."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrem(processing_key(self.ns, workflow, process), 1, ticket)
            pipe.rpush(incoming_key(self.ns, workflow), ticket)
            pipe.execute()

    @_unavailable_on_redis_errors
    def held_tickets(self, process, workflows):
        """{(workflow, ticket)} in the process's processing lists."""
        with self.redis.pipeline(transaction=False) as pipe:
            for workflow in workflows:
                pipe.lrange(processing_key(self.ns, workflow, process), 0, -1)
            return {(w, t) for w, tickets in zip(workflows, pipe.execute()) for t in tickets}

    @_unavailable_on_redis_errors
    def record_step(self, workflow, ticket, step_id, state, **fields):
        """Write a step's state and the given fields (see the module doc for the encoding).
        A step's 'running' record is sent without waiting for Redis (its end, written
        later, is waited for, and holds the step's identity again)."""
        prefix = f'step.{step_id}.'
        mapping = {prefix + name: _STEP_FIELDS[name][0](value)
                   for name, value in fields.items() if value is not None}
        mapping.update(self._status(state, prefix))
        self._write(self._writes, ticket_key(self.ns, workflow, ticket), mapping,
                    wait=state != 'running')

    @_unavailable_on_redis_errors
    def read_ticket(self, workflow, ticket):
        """The whole record as the API shows it, read in one round trip; None if unknown."""
        fields = _as_dict(self._read('HGETALL', ticket_key(self.ns, workflow, ticket)))
        if not fields:
            return None
        return _decode_ticket(workflow, ticket, fields)

    @_unavailable_on_redis_errors
    def ticket_status(self, workflow, ticket):
        """status.current of the ticket, None if it is unknown."""
        return self._read('HGET', ticket_key(self.ns, workflow, ticket), 'status.current')

    @_unavailable_on_redis_errors
    def queue_lengths(self, workflows):
        with self.redis.pipeline(transaction=False) as pipe:
            for workflow in workflows:
                pipe.llen(incoming_key(self.ns, workflow))
            return dict(zip(workflows, pipe.execute()))


    # -- Processes: heartbeats, and putting back what a dead one had taken --------------

    @_unavailable_on_redis_errors
    def beat(self, process, workflows, ttl):
        """Register the process and renew its heartbeat. False if the heartbeat had
        lapsed: others may have taken this process for dead and put its tickets back."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(heartbeat_key(self.ns, process), timestamp(self._clock()),
                     px=int(ttl * 1000), get=True)
            pipe.hset(processes_key(self.ns), process, json.dumps(sorted(workflows)))
            previous, _ = pipe.execute()
        return previous is not None

    @_unavailable_on_redis_errors
    def processes(self):
        """{process: (workflows, alive)} for every registered process."""
        registry = self.redis.hgetall(processes_key(self.ns))
        with self.redis.pipeline(transaction=False) as pipe:
            for process in registry:
                pipe.exists(heartbeat_key(self.ns, process))
            alive = pipe.execute()
        return {process: (json.loads(workflows), bool(up))
                for (process, workflows), up in zip(registry.items(), alive)}

    @_unavailable_on_redis_errors
    def requeue_tickets(self, process, workflows):
        """Move every ticket in the process's processing lists back to the taking end of
        its incoming queue, oldest taken first. Returns [(workflow, ticket)] moved."""
        moved = []
        for workflow in workflows:
            source = processing_key(self.ns, workflow, process)
            while True:
                # LMOVE one at a time: each ticket moves once even if two processes recover.
                ticket = self.redis.lmove(source, incoming_key(self.ns, workflow), 'LEFT', 'RIGHT')
                if ticket is None:
                    break
                moved.append((workflow, ticket))
        return moved

    @_unavailable_on_redis_errors
    def forget_process(self, process):
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(processes_key(self.ns), process)
            pipe.delete(heartbeat_key(self.ns, process))
            pipe.execute()


def _as_dict(reply):
    """A hash as HGETALL answers it: a dict over RESP3, a flat list of fields and values
    over RESP2."""
    return reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2]))


@functools.lru_cache(maxsize=65536)
def _field_parts(field):
    """(step id, name, decoder) of a hash field: "step.1-2.data" is ('1-2', 'data',
    json.loads), "step.1-2.status.running.time" ('1-2', 'running', None), "status.current"
    (None, 'current', None); (None, None, None) for one that is not shown this way. Worked
    out once per field name: the same few hundred names recur in every ticket, and taking
    them apart was most of the cost of reading one."""
    if field.startswith('step.'):
        _, step_id, name = field.split('.', 2)
        if name in _STEP_DECODERS:
            return step_id, name, _STEP_DECODERS[name]
        if name.startswith('status.'):
            # "status.current" stays as it is; "status.running.time" becomes "running".
            return step_id, name.removeprefix('status.').removesuffix('.time'), None
    elif field.startswith('status.'):
        return None, field.removeprefix('status.').removesuffix('.time'), None
    return None, None, None


def _decode_ticket(workflow, ticket, fields):
    status, steps = {}, {}
    for field, value in fields.items():
        step_id, name, decode = _field_parts(field)
        if step_id is None:
            if name is not None:
                status[name] = value
            continue
        step = steps.get(step_id)
        if step is None:
            step = steps[step_id] = {'id': step_id, 'status': {}}
        if decode is None:
            step['status'][name] = value
        else:
            step[name] = decode(value)
    return {
        'workflow': workflow,
        'ticket': ticket,
        'payload': {'key': fields.get('payload.key'),
                    'data': json.loads(fields.get('payload.data', 'null'))},
        'status': status,
        'steps': [{name: steps[i].get(name) for name in _STEP_ORDER}
                  for i in sorted(steps, key=step_sort_key)],
    }
