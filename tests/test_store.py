"""The Redis layout, checked with the literal key and field names an operator would read
with redis-cli, on a real Redis and on fakeredis."""

import uuid

import gevent
import pytest
import redis

from cameron.errors import StoreUnavailable
from cameron.store import Store, _Connections, _is_refusal, step_sort_key, timestamp

from .conftest import REDIS_URL, keys_of, real_redis

WORKFLOW = 'bar'
TICKET = '3bd73a7731e5efca25b5ef05e3f79af9'


@pytest.fixture
def store(redis_client, namespace):
    # A clock that moves one second per reading makes every recorded time predictable.
    ticks = iter(range(1_800_000_000, 1_900_000_000))
    return Store(redis_client, namespace, ticket_ttl=3600, clock=lambda: next(ticks))


def test_timestamp_is_iso_utc_with_milliseconds():
    assert timestamp(1_800_000_000.1234) == '2027-01-15T08:00:00.123Z'


def test_push_ticket_creates_the_hash_and_queues_it(store, redis_client, namespace):
    store.push_ticket(WORKFLOW, TICKET, '007', {'any': 'json'})
    ticket_key = f'{namespace}:workflow:bar:ticket:{TICKET}'
    queue_key = f'{namespace}:workflow:bar:queue:incoming'
    assert keys_of(redis_client, namespace) == sorted([ticket_key, queue_key])
    assert redis_client.lrange(queue_key, 0, -1) == [TICKET]
    assert redis_client.hgetall(ticket_key) == {
        'payload.key': '007', 'payload.data': '{"any": "json"}',
        'status.current': 'enqueued', 'status.enqueued.time': '2027-01-15T08:00:00.000Z'}


def test_take_tickets_moves_oldest_first_into_the_processing_list(store, redis_client, namespace):
    for ticket in ('t1', 't2', 't3'):
        store.push_ticket(WORKFLOW, ticket, 'k', None)
    taken = store.take_tickets([WORKFLOW, WORKFLOW], 'proc-a')
    assert [(w, t) for w, t, _ in taken] == [(WORKFLOW, 't1'), (WORKFLOW, 't2')]
    record = taken[0][2]  # read in the same round trip, already dispatched
    assert record['payload'] == {'key': 'k', 'data': None}
    assert record['status']['current'] == 'dispatched'
    assert redis_client.lrange(f'{namespace}:workflow:bar:queue:incoming', 0, -1) == ['t3']
    assert redis_client.lrange(f'{namespace}:workflow:bar:queue:processing:proc-a', 0, -1) \
        == ['t2', 't1']
    fields = redis_client.hgetall(f'{namespace}:workflow:bar:ticket:t1')
    assert fields['status.current'] == 'dispatched'
    assert 'status.dispatched.time' in fields


def test_take_tickets_from_empty_queues_takes_nothing(store, redis_client, namespace):
    assert store.take_tickets([WORKFLOW, 'zar'], 'proc-a') == []
    assert keys_of(redis_client, namespace) == []


def test_record_step_encodes_structured_fields_as_json(store, redis_client, namespace):
    store.push_ticket(WORKFLOW, TICKET, '007', None)
    store.record_step(WORKFLOW, TICKET, '1-2', 'done', name='kar', url='http://x/1',
                      parent='1', requestor='start', attempts=2, http_status=200,
                      duration_ms=12.5, data={'a': [1]}, next=[{'name': 'n', 'url': 'http://y'}],
                      parallel=False, error=None)
    fields = redis_client.hgetall(f'{namespace}:workflow:bar:ticket:{TICKET}')
    step = {k[len('step.1-2.'):]: v for k, v in fields.items() if k.startswith('step.1-2.')}
    assert step == {
        'name': 'kar', 'url': 'http://x/1', 'parent': '1', 'requestor': 'start',
        'attempts': '2', 'http_status': '200', 'duration_ms': '12.5', 'data': '{"a": [1]}',
        'next': '[{"name": "n", "url": "http://y"}]', 'parallel': 'false',
        'status.current': 'done', 'status.done.time': '2027-01-15T08:00:01.000Z'}


def test_read_ticket_returns_the_record_with_steps_in_numeric_id_order(store):
    store.push_ticket(WORKFLOW, TICKET, '007', [1, 2])
    for step_id in ('1', '1-10', '1-2', '1-2-1'):
        store.record_step(WORKFLOW, TICKET, step_id, 'running', name=f's{step_id}')
    store.record_step(WORKFLOW, TICKET, '1', 'done', data={'x': 1}, next=[], parallel=True,
                      attempts=1, http_status=200, duration_ms=3.0)
    record = store.read_ticket(WORKFLOW, TICKET)
    assert record['workflow'] == WORKFLOW and record['ticket'] == TICKET
    assert record['payload'] == {'key': '007', 'data': [1, 2]}
    assert record['status'] == {'current': 'enqueued', 'enqueued': '2027-01-15T08:00:00.000Z'}
    assert [s['id'] for s in record['steps']] == ['1', '1-2', '1-2-1', '1-10']
    first = record['steps'][0]
    assert first['status'] == {'current': 'done', 'running': '2027-01-15T08:00:01.000Z',
                               'done': '2027-01-15T08:00:05.000Z'}
    assert (first['data'], first['next'], first['parallel'], first['attempts']) \
        == ({'x': 1}, [], True, 1)
    assert record['steps'][1]['error'] is None and record['steps'][1]['parent'] is None


def test_read_ticket_of_unknown_ticket_is_none(store):
    assert store.read_ticket(WORKFLOW, TICKET) is None


def test_finish_ticket_releases_it_and_starts_its_expiry(store, redis_client, namespace):
    store.push_ticket(WORKFLOW, TICKET, 'k', None)
    store.take_tickets([WORKFLOW], 'proc-a')
    store.finish_ticket(WORKFLOW, TICKET, 'proc-a', 'error')
    key = f'{namespace}:workflow:bar:ticket:{TICKET}'
    assert redis_client.hget(key, 'status.current') == 'error'
    assert 'status.error.time' in redis_client.hgetall(key)
    assert 0 < redis_client.ttl(key) <= 3600
    assert redis_client.exists(f'{namespace}:workflow:bar:queue:processing:proc-a') == 0


def test_queue_lengths(store):
    store.push_ticket(WORKFLOW, 't1', 'k', None)
    store.push_ticket(WORKFLOW, 't2', 'k', None)
    assert store.queue_lengths([WORKFLOW, 'zar']) == {WORKFLOW: 2, 'zar': 0}


def test_payload_data_round_trips_any_json(store):
    data = {'unicode': 'ção', 'nested': [None, True, 1.5, {'k': 'v'}]}
    store.push_ticket(WORKFLOW, TICKET, 'k', data)
    assert store.read_ticket(WORKFLOW, TICKET)['payload']['data'] == data


def test_step_sort_key_orders_numerically():
    ids = ['1-10', '2', '1-2', '1', '1-1-1', '1-2-1', '1-1', '1-9']
    assert sorted(ids, key=step_sort_key) == \
        ['1', '1-1', '1-1-1', '1-2', '1-2-1', '1-9', '1-10', '2']


def test_step_sort_key_value():
    assert step_sort_key('1-2-10') == (1, 2, 10)
    assert step_sort_key('1-2') < step_sort_key('1-10')


# -- A Redis that refuses writes -----------------------------------------------------------

@pytest.mark.parametrize('message', [
    'MISCONF Redis is configured to save RDB snapshots, but it cannot persist on disk.',
    'Command # 1 (HSET k f v) of pipeline caused error: MISCONF cannot persist on disk',
    'Command # 2 (LPUSH q t) of pipeline caused error: NOREPLICAS Not enough good replicas',
    'BUSY Redis is busy running a script.'])
def test_refusals_count_as_an_unavailable_store(message):
    assert _is_refusal(redis.ResponseError(message))


def test_other_errors_are_not_refusals():
    assert not _is_refusal(redis.ResponseError('WRONGTYPE Operation against a key'))


def test_a_finish_that_redis_refuses_releases_nothing(own_redis):
    """Redis short of memory refuses the HSET of a finish but not the LREM, which frees
    memory: the finish is one transaction, so the ticket stays held, to be finished later."""
    url, _, _ = own_redis
    client = redis.Redis.from_url(url, decode_responses=True)
    store = Store(client, 'ns', ticket_ttl=60)
    store.push_ticket(WORKFLOW, TICKET, 'k', None)
    store.take_tickets([WORKFLOW], 'proc-a')
    client.config_set('maxmemory', '1')
    try:
        with pytest.raises(StoreUnavailable):
            store.finish_ticket(WORKFLOW, TICKET, 'proc-a', 'done')
        assert client.lrange('ns:workflow:bar:queue:processing:proc-a', 0, -1) == [TICKET]
    finally:
        client.config_set('maxmemory', '0')
    store.finish_ticket(WORKFLOW, TICKET, 'proc-a', 'done')
    assert client.hget(f'ns:workflow:bar:ticket:{TICKET}', 'status.current') == 'done'
    assert client.llen('ns:workflow:bar:queue:processing:proc-a') == 0



class _CountingPool:
    """redis-py's pool, counting the connections it lends and gets back."""

    def __init__(self, pool):
        self.pool, self.lent, self.returned = pool, 0, 0

    def get_connection(self):
        self.lent += 1
        return self.pool.get_connection()

    def release(self, connection):
        self.returned += 1
        self.pool.release(connection)


def test_batches_get_each_reply_in_order_an_error_in_its_place(redis_client, namespace):
    key = f'{namespace}:a'
    ok, error, value = _Connections(redis_client.connection_pool).round_trip(
        [('SET', key, '1'), ('LPUSH', key, 'x'), ('GET', key)])
    assert ok in (True, 'OK') and value == '1'
    assert isinstance(error, redis.ResponseError) and 'WRONGTYPE' in str(error)


def test_batches_keep_their_connections_up_to_a_few(redis_client, namespace):
    pool = _CountingPool(redis_client.connection_pool)
    connections = _Connections(pool)
    for _ in range(3):
        connections.round_trip([('GET', f'{namespace}:a')])
    assert (pool.lent, pool.returned) == (1, 0)
    # Many at once borrow more from the pool, and give back all but KEPT of them. (On
    # fakeredis nothing waits, so they never overlap.)
    gevent.joinall([gevent.spawn(connections.round_trip, [('GET', f'{namespace}:a')])
                    for _ in range(_Connections.KEPT + 3)], raise_error=True)
    assert pool.lent - pool.returned == min(pool.lent, _Connections.KEPT)


def test_a_batch_stopped_halfway_leaves_no_reply_behind(redis_client, namespace):
    pool = _CountingPool(redis_client.connection_pool)
    connections = _Connections(pool)
    waiting = gevent.spawn(connections.round_trip, [('BLPOP', f'{namespace}:q', 5)])
    gevent.sleep(0.1)
    waiting.kill()
    redis_client.lpush(f'{namespace}:q', 'late')  # a reply BLPOP would have read
    assert connections.round_trip([('LLEN', f'{namespace}:q')]) == [1]
    assert (pool.lent, pool.returned) == (2, 1)  # the first went back, to be looked at


def test_batches_go_on_at_once_after_a_redis_restart(own_redis):
    url, start, stop = own_redis
    connections = _Connections(redis.Redis.from_url(url, decode_responses=True).connection_pool)
    connections.round_trip([('SET', 'a', '1')])
    stop()
    start()
    assert connections.round_trip([('GET', 'a')]) == ['1']


def test_a_ticket_reads_alike_over_resp2():
    real_redis()  # without a Redis: skipped, or under CI failed
    client = redis.Redis.from_url(REDIS_URL, protocol=2, decode_responses=True)
    namespace = f'cameron-test-{uuid.uuid4().hex[:12]}'
    store = Store(client, namespace, ticket_ttl=60)
    try:
        store.push_ticket(WORKFLOW, TICKET, 'k', {'a': 1})
        store.record_step(WORKFLOW, TICKET, '1', 'done', name='start', attempts=1)
        record = store.read_ticket(WORKFLOW, TICKET)
        assert record['payload'] == {'key': 'k', 'data': {'a': 1}}
        assert record['steps'][0]['attempts'] == 1
        assert store.take_tickets([WORKFLOW], 'proc-a')[0][2]['payload']['key'] == 'k'
    finally:
        for key in client.scan_iter(f'{namespace}:*'):
            client.delete(key)
