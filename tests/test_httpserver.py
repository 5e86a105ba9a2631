"""The API's request handler: headers read as pywsgi reads them, its limits kept."""
import contextlib
import http.client
import io
import json
import logging
import random
import socket
import time

import gevent
import pytest
from gevent.pywsgi import headers_factory

from cameron.httpserver import MAX_HEADERS, MAX_LINE, listen, make_server, read_headers

from .conftest import keys_of


def _read(read, block):
    try:
        headers = read(io.BytesIO(block))
    except (http.client.HTTPException, ValueError):  # each a 400 from pywsgi
        return 'refused'
    return headers.status, headers.items(), list(headers.headers), headers.typeheader


def test_headers_come_out_as_pywsgi_reads_them():
    # Plain lines are taken apart without the email parser; every other kind of line must
    # still come out as pywsgi's own reading (http.client and the email parser) has it.
    names = ['Host', 'Content-Type', 'X_Y', 'a-b', 'Ü', 'Fr om', 'From ', '', 'Idempotency-Key']
    values = ['', ' ', 'v', ' v ', '\tv', 'a:b', 'a\rb', 'a\x0bb', 'a\x85b', 'a\x00', 'é', 'a b\t']
    endings = ['\r\n', '\n', '\r\n ', '\r\n\tfolded\r\n']
    rng = random.Random(11)
    for _ in range(3000):
        lines = []
        for _ in range(rng.randint(0, 4)):
            line = rng.choice(names) + rng.choice([':', ': ', ' :', '']) + rng.choice(values)
            lines.append(line + rng.choice(endings))
        block = ''.join(lines).encode('iso-8859-1') + rng.choice([b'\r\n', b'\n', b''])
        assert _read(read_headers, block) == _read(headers_factory, block), block


def test_a_header_line_over_the_limit_is_refused_as_pywsgi_does():
    block = b'X: ' + b'a' * MAX_LINE + b'\r\n\r\n'
    assert read_headers(io.BytesIO(block)).status == headers_factory(io.BytesIO(block)).status \
        == 'Line too long'


@pytest.mark.parametrize('count', [MAX_HEADERS - 1, MAX_HEADERS])
def test_as_many_headers_are_taken_as_pywsgi_takes(count):
    # http.client counts the blank line that ends the headers as one of them.
    block = b''.join(b'X-%d: v\r\n' % i for i in range(count)) + b'\r\n'
    assert _read(read_headers, block) == _read(headers_factory, block)
    assert (_read(read_headers, block) == 'refused') == (count == MAX_HEADERS)


def test_a_long_header_line_is_read_in_time_linear_in_its_length():
    # A pattern that let the value's leading spaces match two ways took seconds for a line
    # of spaces and a bare CR, and would hold the whole process (the bound is 100x slack).
    block = b'X:' + b' ' * (MAX_LINE - 10) + b'\r\r\n\r\n'
    began = time.process_time()
    assert _read(read_headers, block) == _read(headers_factory, block)
    assert time.process_time() - began < 1.0


@pytest.fixture
def cameron(make_cameron, step_service):
    return make_cameron({'bar': {'start_point_url': step_service.url('/start/{key}')}})


def raw_request(cameron, request):
    """The status line of Cameron's answer to `request`, sent as it is."""
    return raw_answer(cameron, request).split(b'\r\n', 1)[0]


def raw_answer(cameron, request):
    """Cameron's whole answer to `request`, sent as it is, on a connection it closes."""
    port = int(cameron.base.rsplit(':', 1)[1])
    with socket.create_connection(('127.0.0.1', port), timeout=5) as s:
        s.sendall(request)
        return s.makefile('rb').read()


@pytest.mark.parametrize('headers', [
    b'X: ' + b'a' * (MAX_LINE + 1) + b'\r\n',
    b''.join(b'X-%d: v\r\n' % i for i in range(MAX_HEADERS + 1)),
])
def test_the_api_answers_400_to_headers_over_the_limits(cameron, headers):
    request = b'GET /api/health HTTP/1.1\r\nHost: x\r\n' + headers + b'\r\n'
    assert raw_request(cameron, request).startswith(b'HTTP/1.1 400')


@pytest.mark.parametrize('request_head, status', [
    (b'POST /api/workflow/bar/start HTTP/1.1\r\nContent-Length: ten\r\n', b'400'),
    (b'POST /api/workflow/bar/start HTTP/1.1\r\nContent-Length: -1\r\n', b'400'),
    (b'GET /api/health HTTP/1.1 extra\r\n', b'400'),
    (b'GET /api/health HTTP/7.1\r\n', b'400'),
    (b'GET /' + b'a' * 9000 + b' HTTP/1.1\r\n', b'414'),
    # A body framed two ways, which a proxy in front could read otherwise than pywsgi.
    (b'POST /api/workflow/bar/start HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 13\r\n',
     b'400'),
    (b'POST /api/workflow/bar/start HTTP/1.1\r\nContent-Length: 13\r\n'
     b'Transfer-Encoding: chunked\r\n', b'400'),
    (b'POST /api/workflow/bar/start HTTP/1.1\r\nTransfer-Encoding: gzip\r\n'
     b'Transfer-Encoding: chunked\r\n', b'400'),
    (b'POST /api/workflow/bar/start HTTP/1.1\r\nTransfer-Encoding: gzip\r\n', b'400'),
])
def test_a_request_the_server_cannot_read_gets_a_json_error(cameron, request_head, status,
                                                              redis_client, namespace, caplog):
    caplog.set_level(logging.INFO, 'cameron.httpserver')
    answer = raw_answer(cameron, request_head + b'Host: x\r\n\r\n{"key": "k1"}')
    head, _, body = answer.partition(b'\r\n\r\n')
    assert head.startswith(b'HTTP/1.1 ' + status)
    assert b'Content-Type: application/json' in head and b'Connection: close' in head
    assert json.loads(body)['error']
    assert not [k for k in keys_of(redis_client, namespace) if ':ticket:' in k]
    assert any(r.name == 'cameron.httpserver' for r in caplog.records)


def test_a_chunked_start_is_read(cameron):
    request = (b'POST /api/workflow/bar/start HTTP/1.1\r\nHost: x\r\nConnection: close\r\n'
               b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"key\r\n8\r\n": "k1"}\r\n0\r\n\r\n')
    assert raw_request(cameron, request).startswith(b'HTTP/1.1 201')


def test_a_folded_header_reaches_the_api(cameron):
    # Obsolete line folding is left to the email parser, as pywsgi does.
    body = b'{"key": "k1"}'
    request = (b'POST /api/workflow/bar/start HTTP/1.1\r\nHost: x\r\nConnection: close\r\n'
               b'Content-Length: %d\r\nIdempotency-Key: order\r\n 77\r\n\r\n%s'
               % (len(body), body))
    assert raw_request(cameron, request).startswith(b'HTTP/1.1 201')
    assert raw_request(cameron, request).startswith(b'HTTP/1.1 200')
    again = cameron.start('bar', headers={'Idempotency-Key': 'order\r\n 77'.replace('\r\n', '')})
    assert again.status_code == 201  # the folded key is not the unfolded one


def test_connections_past_max_connections_wait_until_one_closes(make_cameron, step_service):
    cameron = make_cameron({'bar': {'start_point_url': step_service.url('/start/{key}')}},
                           max_connections=2)
    port = int(cameron.base.rsplit(':', 1)[1])
    health = b'GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n'
    held = [socket.create_connection(('127.0.0.1', port), timeout=5) for _ in range(2)]
    for connection in held:  # served, and kept open
        connection.sendall(health)
        assert connection.recv(100).startswith(b'HTTP/1.1 200')
    waiting = socket.create_connection(('127.0.0.1', port), timeout=0.5)  # in the backlog
    waiting.sendall(health)
    with pytest.raises(socket.timeout):
        waiting.recv(100)
    held.pop().close()
    waiting.settimeout(5)
    assert waiting.recv(100).startswith(b'HTTP/1.1 200')
    for connection in [*held, waiting]:
        connection.close()


@contextlib.contextmanager
def serving(idle_timeout, app_delay=0.0):
    """A server of an app that answers "ok" after app_delay seconds, with idle_timeout."""
    def app(environ, start_response):
        gevent.sleep(app_delay)
        start_response('200 OK', [('Content-Length', '2')])
        return [b'ok']

    server = make_server(listen('127.0.0.1', 0), app, None, max_connections=10,
                         idle_timeout=idle_timeout)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_an_idle_connection_is_closed_after_the_idle_timeout():
    with serving(idle_timeout=0.3) as server, \
            socket.create_connection(('127.0.0.1', server.server_port), timeout=5) as s:
        s.sendall(b'GET / HTTP/1.1\r\nHost: x\r\n\r\n')
        assert s.recv(100).startswith(b'HTTP/1.1 200')
        s.sendall(b'GET / HTTP/1.1\r\nHost: x\r\n\r\n')  # kept alive: served again
        assert s.recv(100).startswith(b'HTTP/1.1 200')
        began = time.monotonic()
        assert s.recv(100) == b''  # closed by the server, once idle for 0.3 s
        assert 0.2 < time.monotonic() - began < 3


@pytest.mark.parametrize('head', [b'', b'GET / HT', b'GET / HTTP/1.1\r\nHost: x\r\n'])
def test_a_stalled_request_head_is_closed_quietly_after_the_idle_timeout(head, capfd):
    # The app takes longer than the idle timeout: an app's time is its own.
    with serving(idle_timeout=0.2, app_delay=0.6) as server:
        with socket.create_connection(('127.0.0.1', server.server_port), timeout=5) as s:
            s.sendall(b'GET / HTTP/1.1\r\nHost: x\r\n\r\n')
            assert s.recv(100).startswith(b'HTTP/1.1 200')  # a slow app is not swept
            s.sendall(head)
            assert s.recv(100) == b''  # closed, with no answer
        assert not server.waiting
    assert 'Traceback' not in capfd.readouterr().err
