"""Tickets end to end: Cameron over real HTTP, step services on 127.0.0.1, records read back
through the API and straight from Redis."""
import json

import gevent
import pytest

from .conftest import Reply, free_port, garbage_left_by


def steps_by_id(record):
    return {s['id']: s for s in record['steps']}


def answer(name, *next_steps, parallel='yes', data=None):
    return {'name': name, 'data': data,
            'next': [{'name': n, 'url': u} for n, u in next_steps], 'parallel': parallel}


@pytest.fixture
def svc(step_service):
    return step_service


def workflow(svc, **options):
    return {'start_point_url': svc.url('/start/{key}'), 'retries': 0, **options}


# -- The shape of a run -------------------------------------------------------------------

def test_parallel_next_steps_run_at_the_same_time(make_cameron, svc):
    svc.routes['/start/k1'] = answer('start', *[(n, svc.url(f'/{n}')) for n in 'abc'])
    for n in 'abc':
        svc.routes[f'/{n}'] = Reply(body={'name': n}, delay=0.3)
    record = make_cameron({'w': workflow(svc)}).run('w')
    assert record['status']['current'] == 'done'
    children = [r for r in svc.received if r.path != '/start/k1']
    assert max(r.started for r in children) < min(r.finished for r in children)
    assert [(s['id'], s['name'], s['parent'], s['requestor']) for s in record['steps']] == [
        ('1', 'start', None, None), ('1-1', 'a', '1', 'start'), ('1-2', 'b', '1', 'start'),
        ('1-3', 'c', '1', 'start')]


def test_sequential_next_steps_wait_for_each_siblings_whole_subtree(make_cameron, svc):
    svc.routes['/start/k1'] = answer('start', ('a', svc.url('/a')), ('b', svc.url('/b')),
                                     parallel='no')
    svc.routes['/a'] = Reply(body=answer('a', ('a1', svc.url('/a1')), ('a2', svc.url('/a2'))),
                             delay=0.1)
    svc.routes['/a1'] = Reply(body={}, delay=0.2)
    svc.routes['/a2'] = Reply(body={}, delay=0.1)
    svc.routes['/b'] = {}
    record = make_cameron({'w': workflow(svc)}).run('w')
    assert record['status']['current'] == 'done'
    log = {r.path: r for r in svc.received}
    assert svc.paths()[:2] == ['/start/k1', '/a'] and svc.paths()[-1] == '/b'
    assert log['/b'].started >= max(log['/a1'].finished, log['/a2'].finished)
    assert list(steps_by_id(record)) == ['1', '1-1', '1-1-1', '1-1-2', '1-2']
    assert steps_by_id(record)['1']['parallel'] is False


def test_nested_steps_get_index_path_ids_listed_in_numeric_order(make_cameron, svc):
    svc.routes['/start/k1'] = answer('start', *[(f's{i}', svc.url(f'/s{i}')) for i in range(1, 11)])
    for i in range(1, 11):
        svc.routes[f'/s{i}'] = answer(f's{i}')
    svc.routes['/s2'] = answer('s2', ('deep', svc.url('/deep')))
    svc.routes['/deep'] = {}
    record = make_cameron({'w': workflow(svc)}).run('w')
    ids = [s['id'] for s in record['steps']]
    assert ids == ['1', '1-1', '1-2', '1-2-1'] + [f'1-{i}' for i in range(3, 11)]
    assert steps_by_id(record)['1-2-1']['parent'] == '1-2'
    assert steps_by_id(record)['1-2-1']['requestor'] == 's2'


def test_data_flows_from_each_step_to_the_steps_it_names(make_cameron, svc):
    svc.routes['/start/k1'] = answer('start', ('a', svc.url('/a')), data={'from': 'start'})
    svc.routes['/a'] = answer('a', ('b', svc.url('/b')), data=['from a'])
    svc.routes['/b'] = {'name': 'b-answer'}
    cameron = make_cameron({'w': workflow(svc)})
    record = cameron.run('w', data={'payload': 1})
    ticket = record['ticket']
    sent = {r.path: r for r in svc.received}
    assert sent['/start/k1'].body == {'key': 'k1', 'data': {'payload': 1}, 'ticket': ticket,
                                      'workflow': 'w', 'step': '1', 'requestor': None}
    assert sent['/a'].body == {'key': 'k1', 'data': {'from': 'start'}, 'ticket': ticket,
                               'workflow': 'w', 'step': '1-1', 'requestor': 'start'}
    assert sent['/b'].body['data'] == ['from a'] and sent['/b'].body['requestor'] == 'a'
    headers = sent['/a'].headers
    assert (headers['X-Cameron-Ticket'], headers['X-Cameron-Step'], headers['X-Cameron-Attempt'],
            headers['Idempotency-Key']) == (ticket, '1-1', '1', f'{ticket}:1-1')
    assert steps_by_id(record)['1-1-1']['answer_name'] == 'b-answer'
    assert steps_by_id(record)['1-1-1']['data'] is None


def test_key_is_url_encoded_in_urls_and_relative_urls_resolve(make_cameron, svc):
    key = 'a/b c?d'
    # The step service sees the decoded path.
    svc.routes['/start/a/b c?d'] = answer('start', ('rel', '../next/{key}'),
                                          ('abs', '/top/{key}'))
    svc.routes['/next/a/b c?d'] = svc.routes['/top/a/b c?d'] = {}
    record = make_cameron({'w': workflow(svc)}).run('w', key=key)
    steps = steps_by_id(record)
    assert steps['1']['url'] == svc.url('/start/a%2Fb%20c%3Fd')
    assert steps['1-1']['url'] == svc.url('/next/a%2Fb%20c%3Fd')
    assert steps['1-2']['url'] == svc.url('/top/a%2Fb%20c%3Fd')
    assert record['status']['current'] == 'done'
    assert {r.body['key'] for r in svc.received} == {key}


def test_empty_and_204_answers_end_the_branch(make_cameron, svc):
    svc.routes['/start/k1'] = answer('start', ('a', svc.url('/a')), ('b', svc.url('/b')))
    svc.routes['/a'] = Reply(204)
    svc.routes['/b'] = Reply(200, b'')
    record = make_cameron({'w': workflow(svc)}).run('w')
    assert record['status']['current'] == 'done'
    assert [(s['http_status'], s['next'], s['data']) for s in record['steps'][1:]] == \
        [(204, [], None), (200, [], None)]


def test_next_activities_form_is_followed(make_cameron, svc):
    svc.routes['/start/k1'] = {'name': 'start', 'next_activities': {
        'definitions': [{'name': 'a', 'url': svc.url('/a')}]}}
    svc.routes['/a'] = {}
    record = make_cameron({'w': workflow(svc)}).run('w')
    assert [s['name'] for s in record['steps']] == ['start', 'a']


def test_the_ticket_hash_holds_every_field(make_cameron, svc):
    svc.routes['/start/k1'] = answer('start', ('a', svc.url('/a')), data={'d': 1})
    svc.routes['/a'] = {}
    cameron = make_cameron({'w': workflow(svc)})
    record = cameron.run('w')
    fields = cameron.ticket_hash('w', record['ticket'])
    assert fields['status.current'] == 'done'
    assert {f'status.{s}.time' for s in ('enqueued', 'dispatched', 'running', 'done')} <= set(fields)
    assert fields['step.1.name'] == 'start' and fields['step.1-1.name'] == 'a'
    assert fields['step.1-1.parent'] == '1' and fields['step.1-1.requestor'] == 'start'
    assert json.loads(fields['step.1.data']) == {'d': 1}
    assert json.loads(fields['step.1.next']) == [{'name': 'a', 'url': svc.url('/a')}]
    assert (fields['step.1.parallel'], fields['step.1.attempts'], fields['step.1.http_status']) \
        == ('true', '1', '200')
    assert float(fields['step.1.duration_ms']) > 0
    assert {'step.1-1.status.running.time', 'step.1-1.status.done.time'} <= set(fields)
    assert 'step.1.error' not in fields


# -- Failures ----------------------------------------------------------------------------

FAILURES = {
    # route reply, expected error type, expected http_status
    'status-500': (Reply(500, b'boom'), 'http_status', 500),
    'status-404': (Reply(404, b'missing'), 'http_status', 404),
    'not-json': (Reply(200, b'<html>hi</html>'), 'invalid_response', 200),
    'not-object': (Reply(200, b'[1, 2]'), 'invalid_response', 200),
    'next-not-list': ({'next': 'a'}, 'invalid_response', 200),
    'next-without-url': ({'next': [{'name': 'a'}]}, 'invalid_response', 200),
    'next-bad-scheme': ({'next': [{'name': 'a', 'url': 'ftp://127.0.0.1/a'}]}, 'invalid_response', 200),
    'next-other-host': ({'next': [{'name': 'a', 'url': 'http://example.com/a'}]},
                        'invalid_response', 200),
    'bad-parallel': ({'parallel': 'maybe'}, 'invalid_response', 200),
    'too-large': ({'data': 'x' * 5000}, 'limit', 200),
    'too-large-chunked': (Reply(body={'data': 'x' * 5000}, chunked=True), 'limit', 200),
    'too-deep': (Reply(body=b'[' * 100_000 + b']' * 100_000), 'invalid_response', 200),
    'nan': (Reply(body=b'{"data": NaN}'), 'invalid_response', 200),
    'lone-surrogate-name': (Reply(body=b'{"next": [{"name": "\\ud800", "url": "/a"}]}'),
                            'invalid_response', 200),
    'bad-host': ({'next': [{'name': 'a', 'url': 'http://[oops/'}]}, 'invalid_response', 200),
    'slow': (Reply(body={}, delay=3), 'timeout', None),
    'trickle': (Reply(body={'data': 'x' * 50}, trickle=0.05), 'timeout', None),
}


@pytest.mark.parametrize('case', FAILURES)
def test_a_failed_step_is_recorded_and_its_siblings_go_on(make_cameron, svc, case):
    """'The most, the better': one branch fails, the others finish, the ticket ends error."""
    reply, error_type, http_status = FAILURES[case]
    svc.routes['/start/k1'] = answer('start', ('bad', svc.url('/bad')), ('ok', svc.url('/ok')))
    svc.routes['/bad'] = reply
    svc.routes['/ok'] = Reply(body=answer('ok', ('ok2', svc.url('/ok2'))), delay=0.2)
    svc.routes['/ok2'] = {}
    cameron = make_cameron({'w': workflow(svc, step_timeout=0.5, allowed_hosts=['127.0.0.1'])},
                           max_response_bytes=4096 if 'large' in case else 1024 * 1024)
    record = cameron.run('w')
    steps = steps_by_id(record)
    assert record['status']['current'] == 'error'
    bad = steps['1-1']
    assert bad['status']['current'] == 'error' and 'error' in bad['status']
    assert bad['error']['type'] == error_type, bad['error']
    assert bad['error']['http_status'] == http_status and bad['error']['message']
    assert bad['next'] is None and bad['attempts'] == 1
    assert bad['duration_ms'] < 2000  # the trickle is cut at the step timeout
    assert [steps[i]['status']['current'] for i in ('1', '1-2', '1-2-1')] == ['done'] * 3
    assert set(steps) == {'1', '1-1', '1-2', '1-2-1'}


def test_a_step_timeout_leaves_no_reference_cycle(make_cameron, svc):
    svc.routes['/start/k1'] = Reply(body={}, delay=2)
    cameron = make_cameron({'w': workflow(svc, step_timeout=0.2)})
    records = []
    garbage = garbage_left_by(lambda: records.extend(cameron.run('w') for _ in range(3)))
    assert [steps_by_id(r)['1']['error']['type'] for r in records] == ['timeout'] * 3
    assert not [o for o in garbage if isinstance(o, gevent.Timeout)]


def test_refused_connection_is_a_connection_error(make_cameron, svc):
    svc.routes['/start/k1'] = answer('start', ('gone', f'http://127.0.0.1:{free_port()}/x'))
    record = make_cameron({'w': workflow(svc)}).run('w')
    error = steps_by_id(record)['1-1']['error']
    assert error['type'] == 'connection' and 'refused' in error['message'].lower()
    assert record['status']['current'] == 'error'


def test_error_body_keeps_the_first_kib(make_cameron, svc):
    svc.routes['/start/k1'] = Reply(503, b'e' * 3000)
    record = make_cameron({'w': workflow(svc)}).run('w')
    assert record['steps'][0]['error']['body'] == 'e' * 1024


def test_a_failing_start_step_ends_the_ticket_in_error(make_cameron, svc):
    record = make_cameron({'w': {'start_point_url': f'http://127.0.0.1:{free_port()}/{{key}}',
                                 'retries': 0}}).run('w')
    assert record['status']['current'] == 'error'
    assert [s['status']['current'] for s in record['steps']] == ['error']


# -- Retries -----------------------------------------------------------------------------

def flaky(*replies):
    """A route that answers each reply in turn, then the last one forever."""
    replies = list(replies)
    return lambda request: replies.pop(0) if len(replies) > 1 else replies[0]


@pytest.mark.parametrize('first', [Reply(500), Reply(503), Reply(429), Reply(body={}, delay=2)])
def test_retryable_failures_are_retried(make_cameron, svc, first):
    svc.routes['/start/k1'] = flaky(first, {'data': 'second time'})
    record = make_cameron({'w': workflow(svc, retries=2, step_timeout=0.5)}).run('w')
    step = record['steps'][0]
    assert (step['status']['current'], step['attempts'], step['data']) == ('done', 2, 'second time')
    assert [r.headers['X-Cameron-Attempt'] for r in svc.received] == ['1', '2']
    assert len({r.headers['Idempotency-Key'] for r in svc.received}) == 1


@pytest.mark.parametrize('reply', [Reply(404), Reply(400), Reply(200, b'nope')])
def test_client_errors_and_bad_answers_are_not_retried(make_cameron, svc, reply):
    svc.routes['/start/k1'] = reply
    record = make_cameron({'w': workflow(svc, retries=3)}).run('w')
    assert record['steps'][0]['attempts'] == 1 and len(svc.received) == 1


def test_retries_stop_after_the_configured_number(make_cameron, svc):
    svc.routes['/start/k1'] = Reply(500)
    record = make_cameron({'w': workflow(svc, retries=2)}).run('w')
    assert record['steps'][0]['attempts'] == 3 and len(svc.received) == 3
    assert record['steps'][0]['error']['type'] == 'http_status'


def test_retry_after_is_honoured(make_cameron, svc):
    svc.routes['/start/k1'] = flaky(Reply(503, headers=[('Retry-After', '0.4')]), {})
    make_cameron({'w': workflow(svc, retries=1)}).run('w')
    first, second = svc.received
    assert second.started - first.finished >= 0.4


# -- The loop guard ----------------------------------------------------------------------

def test_max_steps_cuts_the_next_steps_that_would_pass_it(make_cameron, svc):
    svc.routes['/start/k1'] = answer('start', ('a', svc.url('/a')))
    svc.routes['/a'] = answer('a', ('b', svc.url('/b')), ('c', svc.url('/c')))
    svc.routes['/b'] = svc.routes['/c'] = {}
    record = make_cameron({'w': workflow(svc, max_steps=3)}).run('w')
    steps = steps_by_id(record)
    assert set(steps) == {'1', '1-1'} and svc.paths() == ['/start/k1', '/a']
    assert steps['1-1']['status']['current'] == 'error'
    assert steps['1-1']['error']['type'] == 'limit'
    assert record['status']['current'] == 'error'


def test_max_steps_counts_steps_named_but_not_yet_started(make_cameron, svc):
    """start -> a, b at once; a -> x then y (x slow); b -> z. Six steps against five."""
    svc.routes['/start/k1'] = answer('start', ('a', svc.url('/a')), ('b', svc.url('/b')))
    svc.routes['/a'] = answer('a', ('x', svc.url('/x')), ('y', svc.url('/y')), parallel='no')
    svc.routes['/b'] = Reply(body=answer('b', ('z', svc.url('/z'))), delay=0.1)
    svc.routes['/x'] = Reply(body={}, delay=0.3)
    svc.routes['/y'] = svc.routes['/z'] = {}
    record = make_cameron({'w': workflow(svc, max_steps=5)}).run('w')
    assert len(svc.received) <= 5 and len(record['steps']) <= 5
    assert [s['id'] for s in record['steps'] if s['error']] == ['1-2']
    assert steps_by_id(record)['1-2']['error']['type'] == 'limit'
    assert record['status']['current'] == 'error'


def test_a_looping_workflow_stops_at_max_steps(make_cameron, svc):
    svc.routes['/start/k1'] = answer('start', ('again', svc.url('/start/k1')))
    record = make_cameron({'w': workflow(svc, max_steps=5)}).run('w')
    assert len(record['steps']) == 5 and len(svc.received) == 5
    assert record['steps'][-1]['error']['type'] == 'limit'
    assert record['status']['current'] == 'error'


@pytest.mark.parametrize('parallel', ['yes', 'no'])
def test_a_chain_of_max_steps_steps_runs_to_the_limit(make_cameron, svc, parallel):
    """A step tree as deep as the default max_steps (1,000): no depth of recursion stops it
    before the limit does."""
    svc.routes['/start/k1'] = answer('start', ('again', svc.url('/start/k1')), parallel=parallel)
    record = make_cameron({'w': workflow(svc)}).run('w', wait=60)
    assert len(record['steps']) == 1000 and len(svc.received) == 1000
    assert record['steps'][-1]['error']['type'] == 'limit'
    assert record['status']['current'] == 'error'


# -- Limits --------------------------------------------------------------------------------

def test_more_next_steps_than_max_fanout_is_a_limit_error(make_cameron, svc):
    svc.routes['/start/k1'] = answer('start', *[(f's{i}', svc.url(f'/s{i}')) for i in range(3)])
    record = make_cameron({'w': workflow(svc)}, max_fanout=2).run('w')
    assert record['steps'][0]['error']['type'] == 'limit' and len(record['steps']) == 1
    assert svc.paths() == ['/start/k1']


def test_the_ticket_deadline_bounds_a_step_call(make_cameron, svc):
    svc.routes['/start/k1'] = Reply(body={}, delay=3)
    record = make_cameron({'w': workflow(svc, deadline=0.5)}).run('w')
    step = record['steps'][0]
    assert step['error']['type'] == 'timeout' and step['duration_ms'] < 1500


def test_no_step_is_called_after_the_ticket_deadline(make_cameron, svc):
    svc.routes['/start/k1'] = answer('start', ('slow', svc.url('/slow')),
                                     ('late', svc.url('/late')), parallel='no')
    svc.routes['/slow'] = Reply(body={}, delay=2)
    svc.routes['/late'] = {}
    record = make_cameron({'w': workflow(svc, deadline=0.5, step_timeout=5)}).run('w')
    steps = steps_by_id(record)
    assert steps['1']['status']['current'] == 'done'
    assert steps['1-1']['error']['type'] == 'timeout'  # cut at the deadline
    assert steps['1-2']['error']['type'] == 'timeout'
    assert 'deadline' in steps['1-2']['error']['message']
    assert svc.paths() == ['/start/k1', '/slow'] and record['status']['current'] == 'error'


def test_retries_stop_at_the_ticket_deadline(make_cameron, svc):
    svc.routes['/start/k1'] = Reply(500)
    record = make_cameron({'w': workflow(svc, retries=50, deadline=1.5)},
                          retry_backoff=0.1).run('w')
    assert 2 <= record['steps'][0]['attempts'] <= 8  # 0.1 + 0.2 + 0.4 + 0.8 s of pauses


def test_a_key_cannot_inject_headers_or_change_the_url(make_cameron, svc):
    key = 'x\r\nX-Injected: 1\r\n\r\n/../../admin?y=1#z'
    svc.default = lambda request: {}
    record = make_cameron({'w': workflow(svc)}).run('w', key=key)
    assert record['status']['current'] == 'done'
    (request,) = svc.received
    assert 'X-Injected' not in request.headers
    assert request.path == '/start/' + key  # the whole key, one path segment, decoded
    assert record['steps'][0]['url'].startswith(svc.url('/start/x%0D%0AX-Injected%3A%201'))
    assert request.body['key'] == key


def test_a_fault_in_one_branch_lets_the_others_run_to_their_end(make_cameron, svc, monkeypatch):
    # A fault of Cameron's own (here a store that fails to record one step) ends the ticket
    # in error; the branches beside it still run and record their end, whichever greenlet
    # the fault was in.
    svc.routes['/start/k1'] = answer('start', ('a', svc.url('/a')), ('b', svc.url('/b')))
    svc.routes['/a'] = {}
    svc.routes['/b'] = Reply(body={'name': 'b'}, delay=0.3)
    cameron = make_cameron({'w': workflow(svc)})
    store = cameron.dispatcher.worker.store._store  # the Store under its retries
    record_step = store.record_step

    def failing_record_step(workflow_name, ticket, step_id, state, **fields):
        if (step_id, state) == ('1-1', 'done'):
            raise RuntimeError('a fault')
        return record_step(workflow_name, ticket, step_id, state, **fields)

    monkeypatch.setattr(store, 'record_step', failing_record_step)
    record = cameron.run('w')
    assert record['status']['current'] == 'error'
    steps = steps_by_id(record)
    assert steps['1-2']['status']['current'] == 'done' and steps['1-2']['name'] == 'b'
