"""Faults with real processes and a real Redis: kill -9 mid-run, a restart, two processes
sharing the work, Redis stopped and started again, and SIGTERM. Each checks that every
ticket ends with the right record and that the step services saw each step recorded done
exactly once."""
import socket
import time

import pytest
import requests

from .conftest import REDIS_URL, Reply, wait_until

# Real Redis only: these are about processes and sockets.
pytestmark = pytest.mark.parametrize('redis_client', ['real'], indirect=True)

SLOW = 0.4  # seconds each step of the fan-out below takes


def fan_out(step_service, delay=SLOW):
    """start -> a, b in parallel; b -> c. Four steps a ticket, each taking `delay`."""
    nexts = {'start': ['a', 'b'], 'b': ['c']}

    def answer(request):
        step = request.path.split('/')[1]
        return Reply(delay=delay, body={'name': step, 'data': step, 'next': [
            {'name': n, 'url': f'../{n}/{{key}}'} for n in nexts.get(step, [])]})

    step_service.default = answer
    return {'w': {'start_point_url': step_service.url('/start/{key}'), 'retries': 0}}


def flags(namespace, *more, redis_url=REDIS_URL):
    return ['--redis', redis_url, '--namespace', namespace, '--log-level', 'info', *more]


def done_steps(redis_client, namespace, ticket):
    fields = redis_client.hgetall(f'{namespace}:workflow:w:ticket:{ticket}')
    return {f.split('.')[1] for f, v in fields.items()
            if f.startswith('step.') and f.endswith('.status.current') and v == 'done'}


def assert_all_done_once(server, tickets, step_service, done_before=None):
    """Every ticket done with its four steps once; each step done before a fault was not
    called again."""
    for ticket in tickets:
        record = server.record('w', ticket, wait=20)
        assert record['status']['current'] == 'done', record
        assert [(s['id'], s['status']['current']) for s in record['steps']] == \
            [('1', 'done'), ('1-1', 'done'), ('1-2', 'done'), ('1-2-1', 'done')]
    calls = step_service.calls()
    for ticket in tickets:
        for step in ('1', '1-1', '1-2', '1-2-1'):
            assert calls[ticket, step] >= 1
        for step in (done_before or {}).get(ticket, ()):
            assert calls[ticket, step] == 1, (ticket, step)


def kill_mid_run(server, count, redis_client, namespace):
    """Start tickets, kill -9 the server once every start step is done, and return the
    tickets with the steps each had recorded done by then."""
    tickets = [server.start('w', f'k{i}') for i in range(count)]
    wait_until(lambda: all(done_steps(redis_client, namespace, t) for t in tickets), 5,
               'every start step to be done')
    server.kill()
    done_before = {t: done_steps(redis_client, namespace, t) for t in tickets}
    assert any(len(steps) < 4 for steps in done_before.values())  # killed mid-run
    return tickets, done_before


def test_kill_9_mid_run_then_another_process_resumes_everything(
        servers, step_service, redis_client, namespace):
    catalogue = fan_out(step_service)
    first = servers(catalogue, *flags(namespace, '--heartbeat-ttl', '1'))
    tickets, done_before = kill_mid_run(first, 20, redis_client, namespace)
    second = servers(catalogue, *flags(namespace, '--heartbeat-ttl', '1'))
    assert_all_done_once(second, tickets, step_service, done_before)
    assert f'tickets of process {first_id(first)}, which stopped beating' in second.log.read_text()


def first_id(server):
    return f'{socket.gethostname()}:{server.port}'


def test_a_restart_on_the_same_port_resumes_at_once(servers, step_service, redis_client,
                                                    namespace):
    catalogue = fan_out(step_service)
    first = servers(catalogue, *flags(namespace, '--heartbeat-ttl', '60'))
    tickets, done_before = kill_mid_run(first, 5, redis_client, namespace)
    started = time.monotonic()
    again = servers(catalogue, *flags(namespace, '--heartbeat-ttl', '60'), port=first.port)
    assert_all_done_once(again, tickets, step_service, done_before)
    assert time.monotonic() - started < 10  # far less than the 60 s heartbeat TTL
    assert 'an earlier run of this process' in again.log.read_text()


def test_two_processes_share_the_work_and_run_each_ticket_once(
        servers, step_service, redis_client, namespace):
    catalogue = fan_out(step_service, delay=0.01)
    one = servers(catalogue, *flags(namespace))
    two = servers(catalogue, *flags(namespace))
    tickets = [(one, two)[i % 2].start('w', f'k{i}') for i in range(200)]
    assert_all_done_once(one, tickets, step_service)
    assert set(step_service.calls().values()) == {1}
    assert len(step_service.received) == 800
    for server in (one, two):
        assert 'dispatched' in server.log.read_text()


def test_redis_stopped_and_started_mid_run_loses_nothing(servers, step_service, own_redis,
                                                         redis_client, namespace):
    url, start_redis, stop_redis = own_redis
    server = servers(fan_out(step_service), *flags(namespace, redis_url=url))
    tickets = [server.start('w', f'k{i}') for i in range(10)]
    time.sleep(SLOW / 2)
    stop_redis()
    health = requests.get(f'{server.base}/api/health', timeout=5)
    assert health.status_code == 503
    refused = requests.post(f'{server.base}/api/workflow/w/start', json={'key': 'x'}, timeout=5)
    assert refused.status_code == 503 and 'error' in refused.json()
    time.sleep(3 * SLOW)  # steps answer meanwhile; their records wait for Redis
    start_redis()
    assert_all_done_once(server, tickets, step_service)
    assert set(step_service.calls().values()) == {1}  # no step was called twice
    assert server.process.poll() is None
    assert requests.get(f'{server.base}/api/health', timeout=5).status_code == 200


def test_sigterm_lets_running_tickets_finish(servers, step_service, redis_client, namespace):
    server = servers(fan_out(step_service), *flags(namespace))
    tickets = [server.start('w', f'k{i}') for i in range(3)]
    time.sleep(SLOW / 2)
    assert server.terminate() == 0
    for ticket in tickets:
        assert done_steps(redis_client, namespace, ticket) == {'1', '1-1', '1-2', '1-2-1'}


def test_sigterm_past_the_drain_timeout_exits_and_the_next_start_resumes(
        servers, step_service, redis_client, namespace):
    catalogue = fan_out(step_service, delay=1.5)
    server = servers(catalogue, *flags(namespace, '--drain-timeout', '0.5'))
    tickets = [server.start('w', f'k{i}') for i in range(3)]
    time.sleep(0.3)
    started = time.monotonic()
    assert server.terminate() == 0
    assert time.monotonic() - started < 5
    assert all(len(done_steps(redis_client, namespace, t)) < 4 for t in tickets)
    again = servers(catalogue, *flags(namespace, '--drain-timeout', '0.5'), port=server.port)
    assert_all_done_once(again, tickets, step_service)


def test_redis_out_for_longer_than_the_lease_stops_then_resumes_everything(
        servers, step_service, own_redis, redis_client, namespace):
    """Redis away for longer than 0.8 x heartbeat_ttl: the process cannot know whether a
    peer will take its tickets, so it stops them; when Redis is back they are resumed."""
    url, start_redis, stop_redis = own_redis
    server = servers(fan_out(step_service, delay=1.0), *flags(namespace, '--heartbeat-ttl', '1',
                                                                redis_url=url))
    tickets = [server.start('w', f'k{i}') for i in range(5)]
    time.sleep(0.5)
    stop_redis()
    time.sleep(2.5)
    start_redis()
    for ticket in tickets:
        record = server.record('w', ticket, wait=30)
        assert record['status']['current'] == 'done', record
        assert [s['status']['current'] for s in record['steps']] == ['done'] * 4
    assert 'its tickets stop until it does' in server.log.read_text()


def test_a_redis_that_refuses_writes_is_a_503_and_then_nothing_is_lost(
        servers, step_service, own_redis, redis_client, namespace):
    import redis
    url, _, _ = own_redis
    admin = redis.Redis.from_url(url)
    server = servers(fan_out(step_service, delay=0.5), *flags(namespace, redis_url=url))
    tickets = [server.start('w', f'k{i}') for i in range(3)]
    admin.config_set('maxmemory', '1')  # every write now answers OOM
    try:
        refused = requests.post(f'{server.base}/api/workflow/w/start', json={'key': 'x'}, timeout=5)
        assert refused.status_code == 503 and 'error' in refused.json()
        time.sleep(1.5)  # steps answer meanwhile; their records wait for Redis
    finally:
        admin.config_set('maxmemory', '0')
    assert_all_done_once(server, tickets, step_service)
    assert 'Traceback' not in server.log.read_text()
