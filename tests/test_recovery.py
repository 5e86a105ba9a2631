"""Nothing lost: heartbeats, the recovery of a dead process's tickets, resuming a ticket
from its record, and fencing a process that was taken for dead. In-process and quick; the
same with real processes and kill -9 is in test_faults.py."""
import gevent
import pytest
import redis
import yaml

from cameron.catalogue import parse_catalogue
from cameron.config import Config
from cameron.dispatcher import Dispatcher
from cameron.endings import Endings
from cameron.recovery import Liveness
from cameron.server import assemble
from cameron.store import Store

from .conftest import Cameron, Reply


@pytest.fixture
def store(redis_client, namespace):
    return Store(redis_client, namespace, ticket_ttl=3600)


def processing(redis_client, namespace, workflow, process):
    return redis_client.lrange(f'{namespace}:workflow:{workflow}:queue:processing:{process}', 0, -1)


def incoming(redis_client, namespace, workflow):
    return redis_client.lrange(f'{namespace}:workflow:{workflow}:queue:incoming', 0, -1)


def take_as(store, process, workflow, tickets):
    """Queue tickets and have `process` take them, as a process that then dies would."""
    for ticket in tickets:
        store.push_ticket(workflow, ticket, 'k1', None)
    store.beat(process, [workflow], ttl=60)
    assert [(w, t) for w, t, _ in store.take_tickets([workflow] * len(tickets), process)] == \
        [(workflow, t) for t in tickets]


def idle_dispatcher(store, process):
    """A dispatcher of workflow w that is never started: it runs nothing."""
    return Dispatcher(store, worker=None, catalogue={'w': None}, process=process,
                      max_running_tickets=10, poll_interval=1, endings=Endings(store))


def watcher(store, clock):
    """A Liveness for process 'alive', registered but not beating on its own."""
    store.beat('alive', ['w'], ttl=60)
    return Liveness(store, 'alive', ['w'], heartbeat_ttl=2, clock=clock,
                    dispatcher=idle_dispatcher(store, 'alive'))


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


# -- The store's part ----------------------------------------------------------------------

def test_beat_registers_the_process_and_says_whether_the_heartbeat_had_lapsed(
        store, redis_client, namespace):
    assert store.beat('p1', ['b', 'a'], ttl=60) is False  # the first beat
    assert store.beat('p1', ['b', 'a'], ttl=60) is True
    assert 0 < redis_client.pttl(f'{namespace}:process:p1:heartbeat') <= 60_000
    assert redis_client.hgetall(f'{namespace}:processes') == {'p1': '["a", "b"]'}
    redis_client.delete(f'{namespace}:process:p1:heartbeat')
    assert store.processes() == {'p1': (['a', 'b'], False)}
    assert store.beat('p1', ['a', 'b'], ttl=60) is False


def test_requeue_puts_tickets_back_to_be_taken_oldest_first(store, redis_client, namespace):
    take_as(store, 'dead', 'w', ['t1', 't2', 't3'])
    store.push_ticket('w', 't4', 'k', None)  # queued after, still waiting
    assert store.requeue_tickets('dead', ['w', 'other']) == [('w', 't3'), ('w', 't2'), ('w', 't1')]
    assert processing(redis_client, namespace, 'w', 'dead') == []
    taken = store.take_tickets(['w'] * 4, 'alive')
    assert [(w, t) for w, t, _ in taken] == [('w', t) for t in ('t1', 't2', 't3', 't4')]


def test_forget_process_removes_it_from_the_registry(store, redis_client, namespace):
    store.beat('p1', ['w'], ttl=60)
    store.forget_process('p1')
    assert store.processes() == {}
    assert redis_client.exists(f'{namespace}:process:p1:heartbeat') == 0


# -- Liveness ------------------------------------------------------------------------------

def test_a_dead_peer_is_recovered_at_the_second_look_half_a_ttl_later(
        store, redis_client, namespace):
    take_as(store, 'dead', 'w', ['t1', 't2'])
    redis_client.delete(f'{namespace}:process:dead:heartbeat')  # as if its TTL ran out
    clock = Clock()
    liveness = watcher(store, clock)
    liveness.run_once()
    assert processing(redis_client, namespace, 'w', 'dead') == ['t2', 't1']  # only suspected
    clock.now += 0.9
    liveness.run_once()
    assert processing(redis_client, namespace, 'w', 'dead') == ['t2', 't1']
    clock.now += 0.1
    liveness.run_once()
    assert processing(redis_client, namespace, 'w', 'dead') == []
    assert incoming(redis_client, namespace, 'w') == ['t2', 't1']
    assert list(store.processes()) == ['alive']


def test_a_peer_that_beats_again_is_no_longer_suspected(store, redis_client, namespace):
    take_as(store, 'slow', 'w', ['t1'])
    redis_client.delete(f'{namespace}:process:slow:heartbeat')
    clock = Clock()
    liveness = watcher(store, clock)
    liveness.run_once()
    store.beat('slow', ['w'], ttl=60)  # e.g. back after a Redis outage
    clock.now += 5
    liveness.run_once()
    redis_client.delete(f'{namespace}:process:slow:heartbeat')
    liveness.run_once()  # gone again: a new suspicion, not yet a recovery
    assert processing(redis_client, namespace, 'w', 'slow') == ['t1']


def test_start_takes_back_what_an_earlier_run_with_the_same_id_left(store, redis_client, namespace):
    take_as(store, 'host:8080', 'w', ['t1'])
    liveness = Liveness(store, 'host:8080', ['w'], heartbeat_ttl=60,
                        dispatcher=idle_dispatcher(store, 'host:8080'))
    liveness.start()
    liveness.stop()
    assert incoming(redis_client, namespace, 'w') == ['t1']
    assert store.processes() == {}


# -- Whole tickets -------------------------------------------------------------------------

def fan_out(step_service):
    step_service.routes['/start/k1'] = {'name': 'start', 'data': 'D', 'next': [
        {'name': 'a', 'url': step_service.url('/a')}, {'name': 'b', 'url': step_service.url('/b')}]}
    step_service.routes['/a'] = {'data': 'from a'}
    step_service.routes['/b'] = {'next': [{'name': 'c', 'url': step_service.url('/c')}]}
    step_service.routes['/c'] = {}
    return {'w': {'start_point_url': step_service.url('/start/{key}'), 'retries': 0}}


def test_a_resumed_ticket_calls_only_the_steps_not_recorded_done(
        make_cameron, step_service, store, redis_client, namespace):
    url = step_service.url
    take_as(store, 'dead', 'w', ['ab' * 16])
    ticket = 'ab' * 16
    # What the dead process had recorded: start and a done, b running, c never started.
    store.record_step('w', ticket, '1', 'done', name='start', url=url('/start/k1'), data='D',
                      next=[{'name': 'a', 'url': url('/a')}, {'name': 'b', 'url': url('/b')}],
                      parallel=True, attempts=1, http_status=200, duration_ms=1.0)
    store.record_step('w', ticket, '1-1', 'done', name='a', url=url('/a'), parent='1',
                      requestor='start', data='from a', next=[], parallel=True, attempts=1,
                      http_status=200, duration_ms=1.0)
    store.record_step('w', ticket, '1-2', 'running', name='b', url=url('/b'), parent='1',
                      requestor='start')
    redis_client.delete(f'{namespace}:process:dead:heartbeat')
    cameron = make_cameron(fan_out(step_service), heartbeat_ttl=0.3)
    with gevent.Timeout(5):
        while redis_client.hget(f'{namespace}:workflow:w:ticket:{ticket}', 'status.current') != 'done':
            gevent.sleep(0.05)
    assert step_service.paths() == ['/b', '/c']
    assert step_service.received[0].body['data'] == 'D'  # the pipeline, from the record
    assert step_service.received[0].headers['Idempotency-Key'] == f'{ticket}:1-2'
    record = cameron.run('w')  # a fresh ticket, never interrupted, for comparison
    resumed = store.read_ticket('w', ticket)
    assert [(s['id'], s['name'], s['status']['current']) for s in resumed['steps']] == \
        [(s['id'], s['name'], s['status']['current']) for s in record['steps']]


def test_a_process_taken_for_dead_stops_the_tickets_taken_back_from_it(
        make_cameron, step_service, redis_client, namespace):
    step_service.routes['/start/k1'] = Reply(body={}, delay=2)
    cameron = make_cameron({'w': {'start_point_url': step_service.url('/start/{key}')}})
    ticket = cameron.start('w').json()['ticket']
    gevent.sleep(0.2)
    assert len(cameron.dispatcher.tickets) == 1
    # A peer took this process for dead and moved its ticket back (where it is taken again).
    process = cameron.parts.process
    redis_client.delete(f'{namespace}:process:{process}:heartbeat')
    redis_client.lrem(f'{namespace}:workflow:w:queue:processing:{process}', 1, ticket)
    cameron.parts.liveness.run_once()
    gevent.sleep(0.1)
    assert len(cameron.dispatcher.tickets) == 0
    assert redis_client.hget(f'{namespace}:workflow:w:ticket:{ticket}', 'status.current') \
        == 'running'


def test_a_lapse_is_remembered_until_a_look_gets_through(own_redis, step_service):
    """The beat that finds the heartbeat lapsed is followed by a look at what this process
    holds that Redis refuses: the next look, after a beat that finds nothing wrong, still
    stops at once the ticket a peer took back."""
    url, _, _ = own_redis
    client = redis.Redis.from_url(url, decode_responses=True)
    step_service.routes['/start/k1'] = Reply(body={}, delay=3)
    config = Config(namespace='ns')
    catalogue = parse_catalogue(yaml.safe_dump({'workflows': {'w': {
        'start_point_url': step_service.url('/start/{key}')}}}), 'test', {
        'step_timeout': config.step_timeout, 'retries': 0, 'max_steps': config.max_steps})
    cameron = Cameron(assemble(config, catalogue, client), client, 'ns')
    try:
        ticket = cameron.start('w').json()['ticket']
        gevent.sleep(0.2)
        process = cameron.parts.process
        client.delete(f'ns:process:{process}:heartbeat')
        client.lrem(f'ns:workflow:w:queue:processing:{process}', 1, ticket)
        client.execute_command('ACL', 'SETUSER', 'default', '-lrange')  # no look gets through
        with pytest.raises(redis.ResponseError):
            cameron.parts.liveness.run_once()
        client.execute_command('ACL', 'SETUSER', 'default', '+lrange')
        assert len(cameron.dispatcher.tickets) == 1
        cameron.parts.liveness.run_once()
        gevent.sleep(0.1)
        assert len(cameron.dispatcher.tickets) == 0
    finally:
        cameron.stop()
