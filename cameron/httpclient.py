"""A small HTTP/1.1 client for step calls: send a request, read the answer, and keep the
connection open for the next call to the same origin.

Cameron's own, because a step call is the engine's commonest operation and this one does
no more than it needs: a POST to nginx on loopback costs about 150 µs of CPU with it, against
240-300 µs with geventhttpclient and more with urllib3 or requests. It reads answers framed by Content-Length,
chunked, or the end of the connection (RFC 9112 §6.3), skips 1xx answers, and reads no
more than a given number of body bytes. Deadlines are the caller's (gevent.Timeout): a
connection that an exception leaves mid-call is closed, never reused.
"""
import collections
import dataclasses
import socket
import ssl
from urllib.parse import quote, urlsplit

MAX_HEAD_BYTES = 65536  # status line and headers of one answer
MAX_ORIGINS = 100  # origins whose idle connections are kept; past that the oldest go
_READ_SIZE = 65536
_NO_BODY_STATUSES = (204, 304)
_PRINTABLE_ASCII = ''.join(map(chr, range(0x21, 0x7f)))  # what may stand in a request target


class BadResponse(ValueError):
    """The peer's answer is not HTTP/1.x as RFC 9112 frames it."""


class TooLarge(Exception):
    """The answer's body is larger than the limit; `status` is its HTTP status."""

    def __init__(self, status):
        super().__init__(status)
        self.status = status


@dataclasses.dataclass
class Response:
    status: int
    headers: dict  # lower-case name -> value; a repeated header's values joined by ", "
    body: bytes


class HTTPClient:
    def __init__(self, user_agent):
        self._user_agent = user_agent
        self._idle = collections.OrderedDict()  # (scheme, host, port) -> [connection]
        self._tls = None  # an ssl.SSLContext, made at the first https call

    def close(self):
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    def request(self, method, url, body, headers, max_body):
        """Send body (bytes) to url with headers (a dict); the Response. Raises OSError for
        a connection that fails, BadResponse, or TooLarge past max_body bytes of body."""
        parts = urlsplit(url)
        origin = (parts.scheme, parts.hostname, parts.port or _default_port(parts.scheme))
        target = quote((parts.path or '/') + (f'?{parts.query}' if parts.query else ''),
                       safe=_PRINTABLE_ASCII)  # spaces, controls and non-ASCII as %XX
        host = parts.netloc.rpartition('@')[2]
        request = _request_bytes(method, target, host, self._user_agent, headers, body)
        connection = self._reused(origin)
        if connection is not None:
            try:
                return self._exchange(origin, connection, request, max_body)
            except _Stale:
                pass  # closed by the server while idle: the request never reached it
        return self._exchange(origin, self._connect(origin), request, max_body)

    def _exchange(self, origin, connection, request, max_body):
        try:
            connection.sendall(request)
            response, keep = connection.read_response(max_body)
        except BaseException:
            connection.close()
            raise
        if keep:
            self._keep(origin, connection)
        else:
            connection.close()
        return response

    def _reused(self, origin):
        connections = self._idle.get(origin)
        return connections.pop() if connections else None

    def _keep(self, origin, connection):
        connections = self._idle.get(origin)
        if connections is None:
            if len(self._idle) >= MAX_ORIGINS:
                for old in self._idle.popitem(last=False)[1]:
                    old.close()
            connections = self._idle[origin] = []
        connections.append(connection)

    def _connect(self, origin):
        scheme, host, port = origin
        sock = socket.create_connection((host, port))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == 'https':
                if self._tls is None:
                    self._tls = ssl.create_default_context()
                sock = self._tls.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        return _Connection(sock)


class _Stale(Exception):
    """A reused connection gave no answer at all: the server had closed it while idle."""


class _Connection:
    def __init__(self, sock):
        self._sock = sock
        self._buffer = b''  # bytes read and not yet parsed
        self.used = False  # an answer was read from it before

    def close(self):
        self._sock.close()

    def sendall(self, data):
        try:
            self._sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:
            if self.used:
                raise _Stale() from e
            raise

    def read_response(self, max_body):
        """(Response, whether the connection can carry another request)."""
        if self.used:
            self._await_answer()
        version, status, headers = self._read_head()
        while 100 <= status < 200:  # 100 Continue, 103 Early Hints: the answer follows
            if status == 101:
                raise BadResponse('101 Switching Protocols, which was not asked for')
            version, status, headers = self._read_head()
        self.used = True
        keep = version == 'HTTP/1.1' and 'close' not in headers.get('connection', '').lower()
        if status in _NO_BODY_STATUSES:
            body = b''
        elif 'chunked' in headers.get('transfer-encoding', '').lower():
            body = self._read_chunked(status, max_body)
        elif 'content-length' in headers:
            body = self._read_exactly(_content_length(headers['content-length']), status, max_body)
        else:
            body, keep = self._read_to_end(status, max_body), False
        if self._buffer:
            keep = False  # bytes the server sent past its answer: no telling what they are
        return Response(status, headers, body), keep

    def _await_answer(self):
        """On a reused connection, the first bytes of the answer, or _Stale if the server
        had closed the connection while it was idle."""
        try:
            if self._fill():
                return
        except ConnectionResetError:
            pass
        raise _Stale()

    def _fill(self):
        data = self._sock.recv(_READ_SIZE)
        if data:
            self._buffer += data
        return bool(data)

    def _read_head(self):
        while True:
            end = self._buffer.find(b'\r\n\r\n')
            if end >= 0:
                break
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise BadResponse(f'no end of the headers in {MAX_HEAD_BYTES} bytes')
            if not self._fill():
                raise BadResponse('the connection closed before a whole answer'
                                  if self._buffer else 'the connection closed without an answer')
        head, self._buffer = self._buffer[:end].decode('latin-1'), self._buffer[end + 4:]
        status_line, *lines = head.split('\r\n')
        version, _, rest = status_line.partition(' ')
        code = rest[:3]
        if version not in ('HTTP/1.1', 'HTTP/1.0') or not (code.isdigit() and len(code) == 3) \
                or rest[3:4] not in ('', ' '):
            raise BadResponse(f'not an HTTP/1.x status line: {status_line[:100]!r}')
        return version, int(code), _parse_headers(lines)

    def _read_exactly(self, length, status, max_body):
        if length > max_body:
            raise TooLarge(status)
        while len(self._buffer) < length:
            if not self._fill():
                raise BadResponse('the connection closed before the whole body')
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return body

    def _read_to_end(self, status, max_body):
        while self._fill():
            if len(self._buffer) > max_body:
                raise TooLarge(status)
        body, self._buffer = self._buffer, b''
        if len(body) > max_body:
            raise TooLarge(status)
        return body

    def _read_chunked(self, status, max_body):
        body = []
        size = 0
        while True:
            line = self._read_line()
            try:
                length = int(line.partition(b';')[0].strip(), 16)
            except ValueError:
                raise BadResponse(f'a bad chunk size line: {line[:40]!r}') from None
            if length < 0:
                raise BadResponse(f'a bad chunk size line: {line[:40]!r}')
            if length == 0:
                break
            size += length
            if size > max_body:
                raise TooLarge(status)
            body.append(self._read_exactly(length, status, max_body))
            if self._read_line():
                raise BadResponse('a chunk longer than its size')
        while self._read_line():
            pass  # trailer fields: not used
        return b''.join(body)

    def _read_line(self):
        while True:
            end = self._buffer.find(b'\r\n')
            if end >= 0:
                line, self._buffer = self._buffer[:end], self._buffer[end + 2:]
                return line
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise BadResponse(f'a line longer than {MAX_HEAD_BYTES} bytes')
            if not self._fill():
                raise BadResponse('the connection closed inside a chunked body')


def _request_bytes(method, target, host, user_agent, headers, body):
    lines = ''.join(f'{name}: {value}\r\n' for name, value in headers.items())
    return (f'{method} {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {user_agent}\r\n{lines}'
            f'Content-Length: {len(body)}\r\n\r\n').encode() + body


def _parse_headers(lines):
    headers = {}
    for line in lines:
        name, colon, value = line.partition(':')
        if not colon or not name or name != name.strip():
            raise BadResponse(f'not a header line: {line[:100]!r}')
        name, value = name.lower(), value.strip()
        headers[name] = f'{headers[name]}, {value}' if name in headers else value
    return headers


def _content_length(value):
    if not value.isdigit():  # a repeated Content-Length ("5, 5") too: RFC 9112 §6.3
        raise BadResponse(f'a bad Content-Length: {value[:40]!r}')
    return int(value)


def _default_port(scheme):
    return 443 if scheme == 'https' else 80
