"""The step calls' HTTP/1.1 client against a scripted server on 127.0.0.1: each way an
answer can be framed, connection reuse, and every malformed answer."""
import subprocess
import time

import gevent
import gevent.server
import gevent.ssl
import pytest

from cameron.httpclient import BadResponse, HTTPClient, TooLarge

LIMIT = 1000


class ScriptedServer:
    """Answers each request with the next of `replies` (bytes, sent as they are), reading
    requests framed by Content-Length. A reply of None closes the connection unanswered;
    `close_after` closes it after that many answers on it, once it has sent `farewell`."""

    def __init__(self, replies, close_after=None, tls=None, farewell=b'', trickle=None):
        self.replies = list(replies)
        self.trickle = trickle  # send answers this many bytes at a time
        self.close_after = close_after
        self.farewell = farewell
        self.requests = []  # (connection number, request head, body)
        self.connections = 0
        tls_args = {'ssl_context': tls} if tls else {}
        self._server = gevent.server.StreamServer(('127.0.0.1', 0), self._handle, **tls_args)
        self._server.start()
        self.port = self._server.server_port

    def stop(self):
        self._server.stop(timeout=1)

    def _handle(self, sock, _):
        self.connections += 1
        number, answered, buffer = self.connections, 0, b''
        while self.replies and (self.close_after is None or answered < self.close_after):
            while b'\r\n\r\n' not in buffer:
                data = sock.recv(65536)
                if not data:
                    return
                buffer += data
            head, buffer = buffer.split(b'\r\n\r\n', 1)
            length = int(_header(head, b'content-length') or 0)
            while len(buffer) < length:
                buffer += sock.recv(65536)
            self.requests.append((number, head, buffer[:length]))
            buffer = buffer[length:]
            reply = self.replies.pop(0)
            if reply is None:
                break
            for i in range(0, len(reply), self.trickle or len(reply) or 1):
                sock.sendall(reply[i:i + (self.trickle or len(reply))])
                if self.trickle:
                    gevent.sleep(0.001)  # a turn of the event loop, so that each is read apart
            answered += 1
        if self.farewell and answered == self.close_after:
            gevent.sleep(0.01)  # on a connection the client keeps as idle by now
            sock.sendall(self.farewell)
        sock.close()


def _header(head, name):
    for line in head.split(b'\r\n')[1:]:
        key, _, value = line.partition(b':')
        if key.strip().lower() == name:
            return value.strip()
    return None


def ok(body=b'{}', extra=b''):
    return b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s' % (len(body), extra, body)


@pytest.fixture
def scripted():
    servers = []

    def start(replies, **kwargs):
        server = ScriptedServer(replies, **kwargs)
        servers.append(server)
        return server
    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def client():
    http = HTTPClient(user_agent='cameron-test')
    yield http
    http.close()


def post(client, server, path='/step', body=b'{"a": 1}', scheme='http'):
    return client.request('POST', f'{scheme}://127.0.0.1:{server.port}{path}', body,
                          {'X-Test': 'yes'}, LIMIT)


def test_a_content_length_answer_and_the_connection_is_reused(scripted, client):
    server = scripted([ok(b'{"n": 1}', b'Retry-After: 3\r\n'), ok(b'{"n": 2}')])
    first = post(client, server)
    second = post(client, server)
    assert (first.status, first.body, first.headers['retry-after']) == (200, b'{"n": 1}', '3')
    assert second.body == b'{"n": 2}'
    assert [number for number, _, _ in server.requests] == [1, 1]


def test_no_delayed_ack_stall_with_a_server_that_writes_headers_and_body_apart(step_service,
                                                                             client):
    """gevent.pywsgi, as many step services, sends its headers and its body in two writes,
    the second held back by Nagle's algorithm until the first is acknowledged: a client
    that delays its ACKs waits 40 ms on every call. Twenty calls take well under that."""
    step_service.routes['/s'] = {'ok': True}
    began = time.monotonic()
    for _ in range(20):
        assert client.request('POST', step_service.url('/s'), b'{}', {}, LIMIT).status == 200
    assert time.monotonic() - began < 0.4  # 20 x 40 ms = 0.8 s with delayed ACKs


def test_the_request_carries_the_body_headers_and_an_encoded_target(scripted, client):
    server = scripted([ok()])
    post(client, server, path='/a b/ü?x=1 2')
    _, head, body = server.requests[0]
    request_line, *lines = head.split(b'\r\n')
    assert request_line == b'POST /a%20b/%C3%BC?x=1%202 HTTP/1.1'
    assert f'host: 127.0.0.1:{server.port}'.encode() in [line.lower() for line in lines]
    assert b'X-Test: yes' in lines and b'User-Agent: cameron-test' in lines
    assert body == b'{"a": 1}'


def test_credentials_in_the_url_are_sent_as_basic_auth_not_in_the_host(scripted, client):
    server = scripted([ok()])
    client.request('POST', f'http://us%40er:p%3Ass@127.0.0.1:{server.port}/x', b'{}', {}, LIMIT)
    _, head, _ = server.requests[0]
    assert b'Authorization: Basic dXNAZXI6cDpzcw==' in head.split(b'\r\n')  # us@er:p:ss
    assert f'Host: 127.0.0.1:{server.port}'.encode() in head.split(b'\r\n')


def test_a_chunked_answer_with_extensions_and_trailers(scripted, client):
    chunked = (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n'
               b'4;ext=1\r\n{"a"\r\n5\r\n: 1}\n\r\n0\r\nX-Trailer: t\r\n\r\n')
    server = scripted([chunked, ok()])
    assert post(client, server).body == b'{"a": 1}\n'
    post(client, server)
    assert [number for number, _, _ in server.requests] == [1, 1]


def test_an_answer_framed_by_the_end_of_the_connection(scripted, client):
    server = scripted([b'HTTP/1.0 200 OK\r\n\r\n{"old": true}', ok()], close_after=1)
    assert post(client, server).body == b'{"old": true}'
    post(client, server)
    assert [number for number, _, _ in server.requests] == [1, 2]


def test_interim_answers_are_skipped(scripted, client):
    server = scripted([b'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n'
                       + ok(b'{"x": 1}')])
    assert post(client, server).body == b'{"x": 1}'


def test_no_body_for_204(scripted, client):
    server = scripted([b'HTTP/1.1 204 No Content\r\n\r\n', ok()])
    assert (post(client, server).status, post(client, server).status) == (204, 200)
    assert [number for number, _, _ in server.requests] == [1, 1]


def test_connection_close_is_honoured(scripted, client):
    server = scripted([ok(extra=b'Connection: close\r\n'), ok()], close_after=1)
    post(client, server)
    assert post(client, server).status == 200
    assert [number for number, _, _ in server.requests] == [1, 2]


def test_a_kept_connection_closed_by_the_server_while_idle_is_replaced(scripted, client):
    server = scripted([ok(b'{"n": 1}'), ok(b'{"n": 2}')], close_after=1)
    post(client, server)
    gevent.sleep(0.05)  # the server has closed the connection Cameron keeps
    assert post(client, server).body == b'{"n": 2}'
    assert [number for number, _, _ in server.requests] == [1, 2]  # sent once, not twice


def test_a_new_connection_closed_without_an_answer_is_an_error(scripted, client):
    server = scripted([None])
    with pytest.raises(BadResponse, match='without an answer'):
        post(client, server)
    assert len(server.requests) == 1


@pytest.mark.parametrize('reply', [
    b'HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n',  # not even read
    b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n' + b'x' * 1000 + b'\r\n1\r\nx\r\n0\r\n\r\n',
    b'HTTP/1.0 200 OK\r\n\r\n' + b'x' * 1001,
])
def test_a_body_over_the_limit_is_too_large(scripted, client, reply):
    server = scripted([reply, ok()], close_after=1)
    with pytest.raises(TooLarge) as raised:
        post(client, server)
    assert raised.value.status == 200
    assert post(client, server).status == 200  # on a new connection
    assert [number for number, _, _ in server.requests] == [1, 2]


def test_a_body_at_the_limit_is_whole(scripted, client):
    server = scripted([ok(b'x' * LIMIT)])
    assert len(post(client, server).body) == LIMIT


@pytest.mark.parametrize('reply, message', [
    (b'SSH-2.0-OpenSSH\r\n\r\n', 'not an HTTP/1.x status line'),
    (b'HTTP/2 200\r\n\r\n', 'not an HTTP/1.x status line'),
    (b'HTTP/1.1 2000 OK\r\n\r\n', 'not an HTTP/1.x status line'),
    (b'HTTP/1.1 200 OK\r\nno colon here\r\n\r\n', 'not a header line'),
    (b'HTTP/1.1 200 OK\r\n folded: x\r\n\r\n', 'not a header line'),
    (b'HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n', 'bad Content-Length'),
    (b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n', 'bad Content-Length'),
    (b'HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort', 'before the whole body'),
    (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n', 'bad chunk size'),
    (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n', 'longer than its size'),
    (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab', 'closed inside a chunk'),
    (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nabcde\r\n0\r\n\r\n', 'bad chunk size'),
    (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nabcde\r\n0\r\n\r\n', 'bad chunk size'),
    (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nabcde\r\n0\r\n\r\n', 'bad chunk size'),
    (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0_5\r\nabcde\r\n0\r\n\r\n', 'bad chunk size'),
    ('HTTP/1.1 200 OK\r\nContent-Length: ²\r\n\r\n'.encode('latin-1'), 'bad Content-Length'),
    (b'HTTP/1.1 200 OK\r\nContent-Length: ' + b'9' * 5000 + b'\r\n\r\n', 'bad Content-Length'),
    ('HTTP/1.1 2²0 OK\r\n\r\n'.encode('latin-1'), 'not an HTTP/1.x status line'),
    (b'HTTP/1.1 101 Switching Protocols\r\n\r\n', 'Switching Protocols'),
    (b'HTTP/1.1 200 OK\r\nX: ' + b'x' * 70000, 'no end of the headers'),
    (b'HTTP/1.1 200 OK\r\n', 'closed before a whole answer'),
    (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;' + b'x' * 5000 + b'\r\n',
     'chunk size line longer than allowed'),
    (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n' + b'X-Trailer: t\r\n' * 10000
     + b'\r\n', 'trailer fields longer than allowed'),
])
def test_malformed_answers(scripted, client, reply, message):
    server = scripted([reply], close_after=1)
    with pytest.raises(BadResponse, match=message):
        post(client, server)


def test_transfer_encoding_other_than_chunked_last_is_read_to_the_end(scripted, client):
    server = scripted([b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n3\r\nabc', ok()],
                      close_after=1)
    assert post(client, server).body == b'3\r\nabc'
    post(client, server)
    assert [number for number, _, _ in server.requests] == [1, 2]


def test_transfer_encoding_wins_over_content_length_and_retires_the_connection(scripted, client):
    server = scripted([b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked'
                       b'\r\n\r\n2\r\n{}\r\n0\r\n\r\n', ok()])
    assert post(client, server).body == b'{}'
    post(client, server)
    assert [number for number, _, _ in server.requests] == [1, 2]


def test_many_small_chunks(scripted, client):
    body = b'x' * LIMIT
    chunked = b''.join(b'1\r\n%s\r\n' % bytes([byte]) for byte in body)
    server = scripted([b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n' + chunked
                       + b'0\r\n\r\n'])
    assert post(client, server).body == body


def test_a_head_that_trickles_in_is_read(scripted, client):
    server = scripted([ok(b'{"slow": 1}', b'X-Long: ' + b'y' * 200 + b'\r\n')], trickle=1)
    assert post(client, server).body == b'{"slow": 1}'


def test_something_sent_on_an_idle_connection_is_not_taken_for_the_answer(scripted, client):
    """A server may answer 408 on a connection left idle, and close it."""
    server = scripted([ok(b'{"n": 1}'), ok(b'{"n": 2}')], close_after=1, farewell=(
        b'HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n'))
    post(client, server)
    gevent.sleep(0.05)
    assert post(client, server).body == b'{"n": 2}'
    assert [number for number, _, _ in server.requests] == [1, 2]


def test_a_request_the_server_drops_is_not_sent_again(scripted, client):
    server = scripted([ok(), None])
    post(client, server)
    with pytest.raises(BadResponse, match='without an answer'):
        post(client, server)
    assert [number for number, _, _ in server.requests] == [1, 1]


def test_a_get_has_no_content_length(scripted, client):
    server = scripted([ok()])
    client.request('GET', f'http://127.0.0.1:{server.port}/x', b'', {}, LIMIT)
    _, head, _ = server.requests[0]
    assert head.startswith(b'GET /x HTTP/1.1') and b'content-length' not in head.lower()


@pytest.mark.parametrize('url', ['http://127.0.0.1:99999/', 'http://[::1/'])
def test_a_url_it_cannot_call_is_a_value_error(client, url):
    with pytest.raises(ValueError):
        client.request('POST', url, b'{}', {}, LIMIT)


def test_bytes_past_the_answer_retire_the_connection(scripted, client):
    server = scripted([ok() + b'HTTP/1.1 200 OK\r\n', ok()])
    post(client, server)
    post(client, server)
    assert [number for number, _, _ in server.requests] == [1, 2]


def test_a_connection_left_by_a_timeout_is_not_reused(scripted, client):
    server = scripted([b'HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab', ok()])
    with pytest.raises(gevent.Timeout):
        with gevent.Timeout(0.2):
            post(client, server)
    assert post(client, server).status == 200
    assert [number for number, _, _ in server.requests] == [1, 2]


def test_a_refused_connection_is_an_os_error(client):
    server = ScriptedServer([])
    server.stop()
    with pytest.raises(OSError):
        post(client, server)


def certificate(directory, *extra):
    """A self-signed certificate for 127.0.0.1: (its file, a server TLS context)."""
    key, cert = directory / 'key.pem', directory / 'cert.pem'
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1',
                    '-subj', '/CN=127.0.0.1', *extra, '-keyout', str(key), '-out', str(cert)],
                   check=True, capture_output=True)
    tls = gevent.ssl.SSLContext(gevent.ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    return cert, tls


def test_https_with_a_trusted_certificate(scripted, client, tmp_path, monkeypatch):
    cert, tls = certificate(tmp_path, '-addext', 'subjectAltName=IP:127.0.0.1')
    monkeypatch.setenv('SSL_CERT_FILE', str(cert))  # what the default context trusts
    server = scripted([ok(b'{"tls": 1}'), ok()], tls=tls)
    assert post(client, server, scheme='https').body == b'{"tls": 1}'
    post(client, server, scheme='https')
    assert [number for number, _, _ in server.requests] == [1, 1]


def test_https_with_an_untrusted_certificate_is_refused(scripted, client, tmp_path):
    _, tls = certificate(tmp_path)
    server = scripted([ok()], tls=tls)
    with pytest.raises(gevent.ssl.SSLError):
        post(client, server, scheme='https')
