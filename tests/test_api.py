"""The HTTP API over real HTTP: status codes, JSON errors, and nothing written on bad input."""
import json
import logging
import socket

import bottle
import pytest
import redis
import requests
from redis.backoff import NoBackoff
from redis.retry import Retry

from cameron.catalogue import parse_catalogue
from cameron.config import Config
from cameron.server import assemble

from .conftest import Cameron, Reply, free_port, garbage_left_by, keys_of

STEP = {'name': 'start', 'data': {'ok': True}}


@pytest.fixture
def cameron(make_cameron, step_service):
    step_service.routes['/start/k1'] = STEP
    return make_cameron({'bar': {'start_point_url': step_service.url('/start/{key}')}},
                        max_request_bytes=2048)


def post(cameron, path, body, **kwargs):
    data = body if isinstance(body, (bytes, str)) or hasattr(body, '__next__') else json.dumps(body)
    return requests.post(cameron.base + path, data=data, timeout=5, **kwargs)


def assert_json_error(response, status):
    assert response.status_code == status, response.text
    assert response.headers['Content-Type'].startswith('application/json')
    assert isinstance(response.json()['error'], str) and response.json()['error']


def test_start_answers_201_with_the_location_of_the_ticket(cameron, redis_client, namespace):
    response = post(cameron, '/api/workflow/bar/start', {'key': 'k1', 'data': {'x': 1}})
    assert response.status_code == 201
    body = response.json()
    ticket = body['ticket']
    assert len(ticket) == 32 and int(ticket, 16) >= 0
    location = f'/api/workflow/bar/ticket/{ticket}'
    assert response.headers['Location'] == location
    assert body == {'workflow': 'bar', 'ticket': ticket, 'status': 'enqueued', 'location': location}
    fields = redis_client.hgetall(f'{namespace}:workflow:bar:ticket:{ticket}')
    assert fields['payload.key'] == 'k1' and json.loads(fields['payload.data']) == {'x': 1}


def test_start_ignores_the_content_type(cameron):
    # curl -d sends application/x-www-form-urlencoded; the body is still JSON.
    response = post(cameron, '/api/workflow/bar/start', '{"key": "k1"}',
                    headers={'Content-Type': 'application/x-www-form-urlencoded'})
    assert response.status_code == 201


def test_a_number_key_is_taken_as_its_decimal_string(cameron):
    response = post(cameron, '/api/workflow/bar/start', {'key': 42})
    ticket = response.json()['ticket']
    record = requests.get(f'{cameron.base}/api/workflow/bar/ticket/{ticket}', timeout=5).json()
    assert record['payload'] == {'key': '42', 'data': None}


@pytest.mark.parametrize('body', [
    b'not json', b'', b'[1, 2]', b'"key"', {'data': 1}, {'key': None}, {'key': True},
    {'key': {'a': 1}}, {'key': ['a']}, {'key': ''}, {'key': 'x' * 1025}])
def test_bad_start_body_is_400_and_writes_nothing(cameron, redis_client, namespace, body):
    assert_json_error(post(cameron, '/api/workflow/bar/start', body), 400)
    assert keys_of(redis_client, namespace) == []


def test_key_of_1024_characters_is_accepted(cameron):
    assert post(cameron, '/api/workflow/bar/start', {'key': 'x' * 1024}).status_code == 201


def test_body_over_the_limit_is_413_and_writes_nothing(cameron, redis_client, namespace):
    response = post(cameron, '/api/workflow/bar/start', {'key': 'k', 'data': 'x' * 3000})
    assert_json_error(response, 413)
    assert keys_of(redis_client, namespace) == []


def test_chunked_body_over_the_limit_is_413(cameron, redis_client, namespace):
    chunks = (b'{"key": "k", "data": "' + b'x' * 1000 for _ in range(3))  # no Content-Length
    assert_json_error(post(cameron, '/api/workflow/bar/start', chunks), 413)
    assert keys_of(redis_client, namespace) == []


def test_unknown_workflow_is_404_and_writes_nothing(cameron, redis_client, namespace):
    assert_json_error(post(cameron, '/api/workflow/nope/start', {'key': 'k'}), 404)
    assert keys_of(redis_client, namespace) == []


def test_ticket_record_after_wait_is_finished(cameron):
    record = cameron.run('bar')
    assert record['status']['current'] == 'done'
    assert [s['name'] for s in record['steps']] == ['start']
    assert record['steps'][0]['data'] == {'ok': True}


@pytest.mark.parametrize('path', [
    '/api/workflow/bar/ticket/0123456789abcdef0123456789abcdef',  # well formed, unknown
    '/api/workflow/bar/ticket/not-a-ticket',
    '/api/workflow/nope/ticket/0123456789abcdef0123456789abcdef'])
def test_unknown_ticket_is_404(cameron, path):
    assert_json_error(requests.get(cameron.base + path, timeout=5), 404)


def test_ticket_of_another_workflow_is_404(make_cameron, step_service):
    step_service.routes['/start/k1'] = STEP
    url = step_service.url('/start/{key}')
    cameron = make_cameron({'bar': {'start_point_url': url}, 'zar': {'start_point_url': url}})
    ticket = cameron.start('bar').json()['ticket']
    response = requests.get(f'{cameron.base}/api/workflow/zar/ticket/{ticket}', timeout=5)
    assert_json_error(response, 404)


@pytest.mark.parametrize('wait', ['0', '-1', '61', 'soon', 'nan'])
def test_bad_wait_is_400(cameron, wait):
    ticket = cameron.start('bar').json()['ticket']
    response = requests.get(f'{cameron.base}/api/workflow/bar/ticket/{ticket}?wait={wait}',
                            timeout=5)
    assert_json_error(response, 400)


def test_wait_gives_up_after_n_seconds_with_the_ticket_as_it_is(cameron, step_service):
    step_service.routes['/start/slow'] = Reply(body={}, delay=1.5)
    ticket = cameron.start('bar', key='slow').json()['ticket']
    response = requests.get(f'{cameron.base}/api/workflow/bar/ticket/{ticket}?wait=0.5',
                            timeout=5)
    assert response.status_code == 200
    assert response.json()['status']['current'] == 'running'


def test_workflows_lists_the_catalogue_with_queue_lengths(cameron, step_service):
    cameron.dispatcher.stop(timeout=1)  # nothing takes tickets now: they stay queued
    cameron.start('bar')
    cameron.start('bar')
    response = requests.get(f'{cameron.base}/api/workflows', timeout=5)
    assert response.json() == {'workflows': [
        {'name': 'bar', 'start_point_url': step_service.url('/start/{key}'), 'queued': 2}]}


def test_health_is_ok_with_redis(cameron):
    response = requests.get(f'{cameron.base}/api/health', timeout=5)
    assert (response.status_code, response.json()) == (200, {'status': 'ok', 'redis': 'ok'})


@pytest.mark.parametrize('method, path', [
    ('GET', '/nothing/here'), ('GET', '/api/workflow/bar/start'),
    ('DELETE', '/api/workflows')])
def test_unknown_routes_and_methods_answer_json(cameron, method, path):
    response = requests.request(method, cameron.base + path, timeout=5)
    assert_json_error(response, 405 if path != '/nothing/here' else 404)


@pytest.fixture
def cameron_without_redis(step_service):
    """A Cameron whose Redis is a closed port: every store call fails to connect."""
    client = redis.Redis(port=free_port(), decode_responses=True, retry=Retry(NoBackoff(), 0))
    catalogue = parse_catalogue(
        f'workflows: {{bar: {{start_point_url: "{step_service.url("/s")}"}}}}', 'test',
        {'step_timeout': 1, 'retries': 0, 'max_steps': 10})
    cameron = Cameron(assemble(Config(), catalogue, client), client, 'cameron', heartbeat=False)
    yield cameron
    cameron.stop()


@pytest.mark.parametrize('method, path', [
    ('POST', '/api/workflow/bar/start'), ('GET', '/api/workflows'),
    ('GET', '/api/workflow/bar/ticket/0123456789abcdef0123456789abcdef')])
def test_redis_gone_is_503_json(cameron_without_redis, method, path):
    response = requests.request(method, cameron_without_redis.base + path,
                                json={'key': 'k'}, timeout=5)
    assert_json_error(response, 503)
    assert 'Traceback' not in response.text


def test_health_is_503_without_redis(cameron_without_redis):
    response = requests.get(f'{cameron_without_redis.base}/api/health', timeout=5)
    assert response.status_code == 503
    assert response.json()['redis'] == 'unreachable'


# -- Idempotent start ---------------------------------------------------------------------

def test_a_repeated_idempotency_key_returns_the_first_ticket(cameron, redis_client, namespace):
    headers = {'Idempotency-Key': 'order-77'}
    first = post(cameron, '/api/workflow/bar/start', {'key': 'k1'}, headers=headers)
    again = post(cameron, '/api/workflow/bar/start', {'key': 'other'}, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert again.headers['Location'] == first.headers['Location']
    tickets = [k for k in keys_of(redis_client, namespace) if ':ticket:' in k]
    assert len(tickets) == 1


def test_an_idempotency_key_is_per_workflow(make_cameron, step_service):
    url = step_service.url('/start/{key}')
    cameron = make_cameron({'bar': {'start_point_url': url}, 'zar': {'start_point_url': url}})
    headers = {'Idempotency-Key': 'same'}
    tickets = {cameron.start(w, headers=headers).json()['ticket'] for w in ('bar', 'zar')}
    assert len(tickets) == 2


def test_concurrent_starts_with_one_idempotency_key_make_one_ticket(cameron):
    import gevent
    starts = [gevent.spawn(post, cameron, '/api/workflow/bar/start', {'key': 'k1'},
                           headers={'Idempotency-Key': 'race'}) for _ in range(10)]
    gevent.joinall(starts)
    answers = [g.value for g in starts]
    assert sorted(a.status_code for a in answers) == [200] * 9 + [201]
    assert len({a.json()['ticket'] for a in answers}) == 1


def test_an_overlong_idempotency_key_is_400(cameron, redis_client, namespace):
    response = post(cameron, '/api/workflow/bar/start', {'key': 'k1'},
                    headers={'Idempotency-Key': 'x' * 256})
    assert_json_error(response, 400)
    assert keys_of(redis_client, namespace) == []


# -- API tokens ---------------------------------------------------------------------------

@pytest.fixture
def guarded(make_cameron, step_service):
    step_service.routes['/start/k1'] = STEP
    return make_cameron({'bar': {'start_point_url': step_service.url('/start/{key}')}},
                        api_tokens=('s3cret', 'other'))


@pytest.mark.parametrize('authorization', [None, 'Bearer wrong', 's3cret', 'Basic s3cret',
                                           'Bearer ', 'Bearer s3cret-and-more'])
def test_without_a_valid_token_the_api_answers_401(guarded, redis_client, namespace,
                                                   authorization):
    headers = {'Authorization': authorization} if authorization else {}
    for method, path in [('POST', '/api/workflow/bar/start'), ('GET', '/api/workflows'),
                         ('GET', '/api/workflow/bar/ticket/0123456789abcdef0123456789abcdef')]:
        response = requests.request(method, guarded.base + path, json={'key': 'k1'},
                                    headers=headers, timeout=5)
        assert_json_error(response, 401)
        assert response.headers['WWW-Authenticate'] == 'Bearer'
    assert keys_of(redis_client, namespace) == []


def test_with_a_valid_token_the_api_answers(guarded):
    for token in ('s3cret', 'other'):
        response = guarded.start('bar', headers={'Authorization': f'Bearer {token}'})
        assert response.status_code == 201


def test_starts_and_error_answers_leave_no_reference_cycle(make_cameron, step_service):
    """Each would leave the request's environ, body reader and answer for the garbage
    collector, which then walks every ticket in flight more often."""
    step_service.routes['/start/k1'] = STEP
    cameron = make_cameron({'bar': {'start_point_url': step_service.url('/start/{key}')}},
                           api_tokens=('s3cret',), body_timeout=0.2)

    def requests_of_each_kind():
        for i in range(3):
            good = {'Authorization': 'Bearer s3cret', 'Idempotency-Key': f'i{i}'}
            for path, body, headers, status in [
                    ('/api/workflow/bar/start', {'key': f'k{i}'}, good, 201),
                    ('/api/workflow/bar/start', {'key': f'k{i}'}, {}, 401),
                    ('/api/workflow/nope/start', {'key': 'k'}, good, 404),
                    ('/api/workflow/bar/start', {'key': ''}, good, 400),
                    ('/api/workflow/bar/start', b'{nope', good, 400),
                    ('/api/workflow/bar/start', {'key': 'k'},
                     {**good, 'Idempotency-Key': b'\xff'}, 400)]:
                response = post(cameron, path, body, headers=headers)
                assert response.status_code == status, response.text
            with socket.create_connection(('127.0.0.1', cameron.server.server_port)) as s:
                s.sendall(b'POST /api/workflow/bar/start HTTP/1.1\r\nHost: x\r\n'
                          b'Authorization: Bearer s3cret\r\nContent-Length: 100\r\n\r\n{')
                assert s.recv(4096).startswith(b'HTTP/1.1 408')

    garbage = garbage_left_by(requests_of_each_kind)
    assert not [o for o in garbage if isinstance(o, (bottle.HTTPResponse, bottle.WSGIHeaderDict))
                or isinstance(o, dict) and o.get('PATH_INFO', '').startswith('/api/')]


@pytest.mark.parametrize('header', ['Idempotency-Key', 'Authorization'])
def test_a_header_that_is_not_utf8_is_400(make_cameron, step_service, redis_client,
                                          namespace, caplog, header):
    cameron = make_cameron({'bar': {'start_point_url': step_service.url('/start/{key}')}},
                           api_tokens=('s3cret',))
    caplog.set_level(logging.INFO)
    headers = {'Authorization': 'Bearer s3cret', header: b'\xff\xfe'}
    response = post(cameron, '/api/workflow/bar/start', {'key': 'k1'}, headers=headers)
    assert_json_error(response, 400)
    assert header in response.json()['error']
    assert [r.levelname for r in caplog.records if 'not UTF-8' in r.getMessage()] == ['INFO']
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert keys_of(redis_client, namespace) == []


def test_health_needs_no_token(guarded):
    assert requests.get(f'{guarded.base}/api/health', timeout=5).status_code == 200


# -- Bodies that are JSON only in part ----------------------------------------------------

@pytest.mark.parametrize('body', [
    b'{"key": NaN}', b'{"key": 1e400}', b'{"key": "k", "data": [Infinity]}',
    b'{"key": "\\ud800"}', b'{"key": "k"} trailing', b'\xff\xfe'])
def test_bodies_json_cannot_carry_through_are_400(cameron, redis_client, namespace, body):
    assert_json_error(post(cameron, '/api/workflow/bar/start', body), 400)
    assert keys_of(redis_client, namespace) == []


def test_a_body_nested_too_deeply_is_400(make_cameron, step_service, redis_client, namespace):
    cameron = make_cameron({'bar': {'start_point_url': step_service.url('/s')}})
    body = b'{"key": "k", "data": ' + b'[' * 100_000 + b']' * 100_000 + b'}'
    assert_json_error(post(cameron, '/api/workflow/bar/start', body), 400)
    assert keys_of(redis_client, namespace) == []


@pytest.mark.parametrize('key, taken_as', [(1e3, '1000'), (-7, '-7'), (2.5, '2.5')])
def test_number_keys(cameron, key, taken_as):
    ticket = post(cameron, '/api/workflow/bar/start', {'key': key}).json()['ticket']
    record = requests.get(f'{cameron.base}/api/workflow/bar/ticket/{ticket}', timeout=5).json()
    assert record['payload']['key'] == taken_as


def test_a_body_slower_than_body_timeout_is_408(make_cameron, step_service, redis_client,
                                                namespace):
    cameron = make_cameron({'bar': {'start_point_url': step_service.url('/s')}},
                           body_timeout=0.3)
    with socket.create_connection(('127.0.0.1', cameron.server.server_port), timeout=5) as s:
        s.sendall(b'POST /api/workflow/bar/start HTTP/1.1\r\nHost: x\r\n'
                  b'Content-Length: 100\r\n\r\n{"key": ')
        answer = s.recv(4096).decode()
    assert answer.startswith('HTTP/1.1 408') and '"error"' in answer
    assert keys_of(redis_client, namespace) == []
