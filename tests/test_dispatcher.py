"""Taking tickets: bounded concurrency, tickets from other processes, and stopping."""
import gevent
import pytest
import requests

from cameron.store import Store

from .conftest import Reply, wait_until


def slow_start(step_service, delay=0.3):
    step_service.routes.update({f'/start/k{i}': Reply(body={}, delay=delay) for i in range(8)})
    return {'w': {'start_point_url': step_service.url('/start/{key}'), 'retries': 0}}


def wait_for_all(cameron, tickets, timeout=10):
    for ticket in tickets:
        record = requests.get(f'{cameron.base}/api/workflow/w/ticket/{ticket}?wait={timeout}',
                              timeout=timeout + 5).json()
        assert record['status']['current'] == 'done', record


def test_at_most_max_running_tickets_run_and_the_rest_wait_in_redis(make_cameron, step_service,
                                                                     redis_client, namespace):
    cameron = make_cameron(slow_start(step_service), max_running_tickets=2)
    tickets = [cameron.start('w', key=f'k{i}').json()['ticket'] for i in range(6)]
    gevent.sleep(0.1)
    assert len(cameron.dispatcher.tickets) == 2
    assert redis_client.llen(f'{namespace}:workflow:w:queue:incoming') == 4
    wait_for_all(cameron, tickets)
    assert step_service.most_at_once() == 2 and len(step_service.received) == 6


def test_at_most_max_outgoing_requests_are_in_flight(make_cameron, step_service):
    step_service.routes['/start/k1'] = {'next': [
        {'name': f'c{i}', 'url': step_service.url(f'/c{i}')} for i in range(6)]}
    step_service.routes.update({f'/c{i}': Reply(body={}, delay=0.2) for i in range(6)})
    cameron = make_cameron({'w': {'start_point_url': step_service.url('/start/{key}')}},
                           max_outgoing_requests=3)
    assert cameron.run('w')['status']['current'] == 'done'
    assert step_service.most_at_once() == 3 and len(step_service.received) == 7


def test_a_ticket_queued_by_another_process_is_taken_within_poll_interval(
        make_cameron, step_service, redis_client, namespace):
    cameron = make_cameron(slow_start(step_service, delay=0), poll_interval=0.2)
    gevent.sleep(0.3)  # the dispatcher is asleep on an empty queue
    # Another process queues a ticket: this one gets no in-process notice.
    Store(redis_client, namespace, ticket_ttl=60).push_ticket(
        'w', 'aa' * 16, 'k1', None)
    with gevent.Timeout(2):
        wait_for_all(cameron, ['aa' * 16], timeout=2)


def test_stop_lets_running_tickets_finish(make_cameron, step_service, redis_client, namespace):
    cameron = make_cameron(slow_start(step_service, delay=0.5))
    ticket = cameron.start('w', key='k1').json()['ticket']
    gevent.sleep(0.1)
    assert cameron.dispatcher.stop(timeout=5) is True
    key = f'{namespace}:workflow:w:ticket:{ticket}'
    assert redis_client.hget(key, 'status.current') == 'done'


def test_a_ticket_stopped_at_the_drain_timeout_goes_back_to_its_queue(
        make_cameron, step_service, redis_client, namespace):
    cameron = make_cameron(slow_start(step_service, delay=3))
    ticket = cameron.start('w', key='k1').json()['ticket']
    gevent.sleep(0.1)
    assert cameron.dispatcher.stop(timeout=0.2) is False
    processing = f'{namespace}:workflow:w:queue:processing:{cameron.parts.process}'
    assert redis_client.lrange(processing, 0, -1) == [ticket]  # still held, not lost
    assert redis_client.hget(f'{namespace}:workflow:w:ticket:{ticket}', 'status.current') \
        == 'running'
    cameron.parts.liveness.stop()
    assert redis_client.lrange(processing, 0, -1) == []
    assert redis_client.lrange(f'{namespace}:workflow:w:queue:incoming', 0, -1) == [ticket]
    assert redis_client.hgetall(f'{namespace}:processes') == {}


@pytest.mark.parametrize('redis_client', ['real'], indirect=True)
def test_an_idle_dispatcher_does_not_spin(make_cameron, step_service, redis_client, namespace):
    """Redis's MONITOR shows every command: count the looks at this test's own queue."""
    looks = []

    def watch():
        with redis_client.monitor() as monitor:
            for command in monitor.listen():
                if 'LMOVE' in command['command'].upper() and namespace in command['command']:
                    looks.append(command)

    watcher = gevent.spawn(watch)
    gevent.sleep(0.2)
    make_cameron(slow_start(step_service), poll_interval=0.25)
    gevent.sleep(1.0)
    watcher.kill()
    assert 2 <= len(looks) <= 8, len(looks)


def test_a_queued_ticket_without_a_record_is_dropped(make_cameron, step_service, redis_client,
                                                    namespace):
    cameron = make_cameron(slow_start(step_service, delay=0))
    redis_client.lpush(f'{namespace}:workflow:w:queue:incoming', 'cd' * 16)
    cameron.dispatcher.notify()
    gevent.sleep(0.3)
    assert redis_client.keys(f'{namespace}:workflow:w:*') == []  # no stub, nothing held
    assert step_service.received == []


def test_a_ticket_put_back_and_taken_again_here_runs_once(make_cameron, step_service,
                                                         redis_client, namespace):
    cameron = make_cameron(slow_start(step_service, delay=0.5))
    ticket = cameron.start('w', key='k1').json()['ticket']
    gevent.sleep(0.1)
    # A peer took this process for dead and put the ticket back; this process takes it again.
    process = cameron.parts.process
    redis_client.lmove(f'{namespace}:workflow:w:queue:processing:{process}',
                       f'{namespace}:workflow:w:queue:incoming', 'LEFT', 'RIGHT')
    cameron.dispatcher.run_once()
    cameron.dispatcher.reconcile()
    wait_for_all(cameron, [ticket])
    assert len(step_service.received) == 1
    assert redis_client.llen(f'{namespace}:workflow:w:queue:processing:{process}') == 0


def test_a_running_ticket_no_longer_held_is_stopped_at_the_second_look(
        make_cameron, step_service, redis_client, namespace):
    """Without a lapse of the heartbeat, one look that finds a running ticket not held may
    have come just after its end was written: the ticket stops only if the next look finds
    it so too."""
    cameron = make_cameron(slow_start(step_service, delay=2))
    ticket = cameron.start('w', key='k1').json()['ticket']
    gevent.sleep(0.2)
    process = cameron.parts.process
    redis_client.lrem(f'{namespace}:workflow:w:queue:processing:{process}', 1, ticket)
    cameron.dispatcher.reconcile()
    gevent.sleep(0.1)
    assert len(cameron.dispatcher.tickets) == 1
    cameron.dispatcher.reconcile()
    gevent.sleep(0.1)
    assert len(cameron.dispatcher.tickets) == 0


def test_a_held_ticket_that_runs_nowhere_is_put_back_at_the_second_look(
        make_cameron, step_service, redis_client, namespace):
    """As after a take or a finish that Redis cut short: the ticket sits in this process's
    processing list, but no greenlet runs it."""
    cameron = make_cameron(slow_start(step_service, delay=0))
    process = cameron.parts.process
    ticket = 'ef' * 16
    redis_client.hset(f'{namespace}:workflow:w:ticket:{ticket}', mapping={
        'payload.key': 'k1', 'payload.data': 'null', 'status.current': 'dispatched',
        'status.enqueued.time': '2026-11-27T00:00:00.000Z'})
    redis_client.lpush(f'{namespace}:workflow:w:queue:processing:{process}', ticket)
    cameron.dispatcher.reconcile()
    gevent.sleep(0.2)
    assert step_service.received == []  # one look is not enough: it may be just taken
    cameron.dispatcher.reconcile()
    wait_for_all(cameron, [ticket])
    assert len(step_service.received) == 1
    assert redis_client.llen(f'{namespace}:workflow:w:queue:processing:{process}') == 0


def test_a_stopped_ticket_stops_every_branch_it_runs(make_cameron, step_service, redis_client,
                                                     namespace):
    # The first branch of a parallel step runs in the ticket's own greenlet, the others in
    # greenlets of their own, and a chain goes on in a loop: none may go on once stopped.
    step_service.routes['/start/k1'] = {'next': [
        {'name': f'c{i}', 'url': step_service.url(f'/c{i}')} for i in range(3)]}
    step_service.routes.update({f'/c{i}': Reply(body={'next': [
        {'name': 'after', 'url': step_service.url('/after')}]}, delay=0.4) for i in range(3)})
    step_service.routes['/after'] = {}
    cameron = make_cameron({'w': {'start_point_url': step_service.url('/start/{key}')}})
    ticket = cameron.start('w', key='k1').json()['ticket']
    wait_until(lambda: len(step_service.received) == 4, 2, 'the three branches called')
    cameron.dispatcher.suspend()
    gevent.sleep(0.8)
    assert sorted(step_service.paths()) == ['/c0', '/c1', '/c2', '/start/k1']
    fields = cameron.ticket_hash('w', ticket)
    assert [fields[f'step.1-{i}.status.current'] for i in (1, 2, 3)] == ['running'] * 3


def test_a_suspended_dispatcher_stops_its_tickets_and_takes_none(
        make_cameron, step_service, redis_client, namespace):
    cameron = make_cameron(slow_start(step_service, delay=0.5))
    first = cameron.start('w', key='k1').json()['ticket']
    gevent.sleep(0.1)
    cameron.dispatcher.suspend()
    second = cameron.start('w', key='k2').json()['ticket']
    gevent.sleep(0.8)
    assert len(cameron.dispatcher.tickets) == 0 and len(step_service.received) == 1
    assert redis_client.llen(f'{namespace}:workflow:w:queue:incoming') == 1
    cameron.dispatcher.resume()
    wait_for_all(cameron, [second])
    key = f'{namespace}:workflow:w:ticket:{first}'
    assert redis_client.hget(key, 'status.current') == 'running'  # held, for recovery
