"""A small HTTP/1.1 client for step calls: send a request, read the answer, and keep the
connection open for the next call to the same origin.

Cameron's own, because a step call is the engine's commonest operation and this one does
no more than it needs: a POST to nginx on loopback costs about 150 µs of CPU with it, against
240-300 µs with geventhttpclient and more with urllib3 or requests. It sends POST and GET,
reads answers framed as RFC 9112 §6.3 says (chunked, Content-Length, or the end of the
connection), skips 1xx answers, and reads no more than a given number of body bytes.
Deadlines are the caller's (gevent.Timeout): a connection that an exception leaves mid-call
is closed, never reused, and nothing is ever sent twice.
"""
import base64
import collections
import dataclasses
import functools
import re
import socket
import ssl
from urllib.parse import SplitResult, quote, unquote, urlsplit

from . import idle

MAX_HEAD_BYTES = 65536  # status line and headers of one answer; trailer fields
MAX_CHUNK_LINE = 4096  # a chunk's size line, extensions included
MAX_ORIGINS = 100  # origins whose idle connections are kept; past that the least used go
_READ_SIZE = 65536
_NO_BODY_STATUSES = (204, 304)
_PRINTABLE_ASCII = ''.join(map(chr, range(0x21, 0x7f)))  # what may stand in a request target
_STATUS_LINE = re.compile(r'(HTTP/1\.[01]) ([0-9]{3})(?: .*)?')
_CONTENT_LENGTH = re.compile(r'[0-9]{1,18}')
_CHUNK_SIZE = re.compile(rb'([0-9A-Fa-f]{1,15})[ \t]*(?:;.*)?')  # extensions are ignored
_QUICKACK = getattr(socket, 'TCP_QUICKACK', None)  # Linux only


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
        a connection that fails, ValueError for a URL it cannot call and BadResponse (a
        ValueError) for a malformed answer, or TooLarge past max_body bytes of body."""
        parts = urlsplit(url)
        origin, host, credentials = _origin(parts.scheme, parts.netloc)
        if credentials:  # as requests does with user:password@ in a URL
            headers = {**headers, 'Authorization': credentials}
        target = (parts.path or '/') + (f'?{parts.query}' if parts.query else '')
        if not (target.isascii() and target.isprintable()) or ' ' in target:
            target = quote(target, safe=_PRINTABLE_ASCII)  # spaces, controls, non-ASCII as %XX
        request = _request_bytes(method, target, host, self._user_agent, headers, body)
        connection = self._idle_connection(origin) or self._connect(origin)
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

    def _idle_connection(self, origin):
        """A kept connection to origin on which nothing arrived while it was idle: not the
        server's close, nor anything else (a 408, say), which would pass for the answer."""
        connections = self._idle.get(origin)
        while connections:
            connection = connections.pop()
            if connection.quiet():
                return connection
            connection.close()
        return None

    def _keep(self, origin, connection):
        connections = self._idle.get(origin)
        if connections is None:
            if len(self._idle) >= MAX_ORIGINS:
                for old in self._idle.popitem(last=False)[1]:
                    old.close()
            connections = self._idle[origin] = []
        else:
            self._idle.move_to_end(origin)
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


class _Connection:
    def __init__(self, sock):
        self._sock = sock
        self._buffer = bytearray()  # bytes read; those before _start are parsed
        self._start = 0
        self._poller = idle.watch(sock)

    def close(self):
        self._sock.close()

    def sendall(self, data):
        # One send takes a request of a few hundred bytes whole; gevent's sendall would ask
        # the kernel for the socket's buffer size first, at every call.
        sent = self._sock.send(data)
        if sent < len(data):
            self._sock.sendall(memoryview(data)[sent:])

    def quiet(self):
        """True if nothing is there to read: the server has neither sent nor closed."""
        return idle.quiet(self._sock, self._poller)

    def read_response(self, max_body):
        """(Response, whether the connection can carry another request)."""
        version, status, headers = self._read_head(first=True)
        while 100 <= status < 200:  # 100 Continue, 103 Early Hints: the answer follows
            if status == 101:
                raise BadResponse('101 Switching Protocols, which was not asked for')
            version, status, headers = self._read_head()
        keep = version == 'HTTP/1.1' and 'close' not in headers.get('connection', '').lower()
        codings = headers.get('transfer-encoding')
        if status in _NO_BODY_STATUSES:
            body = b''
        elif codings is not None:
            if 'content-length' in headers:
                keep = False  # RFC 9112 §6.3: Transfer-Encoding wins, and the connection ends
            if codings.rpartition(',')[2].strip().lower() == 'chunked':
                body = self._read_chunked(status, max_body)
            else:
                body, keep = self._read_to_end(status, max_body), False
        elif 'content-length' in headers:
            length = _content_length(headers['content-length'])
            if length > max_body:
                raise TooLarge(status)
            body = self._read_exactly(length, 'the connection closed before the whole body')
        else:
            body, keep = self._read_to_end(status, max_body), False
        if self._start < len(self._buffer):
            keep = False  # bytes the server sent past its answer: no telling what they are
        return Response(status, headers, body), keep

    def _fill(self, quickack=True):
        """Read what the socket has; False at its end."""
        if quickack and _QUICKACK is not None:
            # Acknowledge at once what arrived: a server that writes its headers and its
            # body apart (gevent.pywsgi, wsgiref) holds the body, by Nagle's algorithm, until
            # the headers are acknowledged, which a delayed ACK puts off for 40 ms. Not
            # needed for an answer's first read, which most often holds all of it.
            self._sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        data = self._sock.recv(_READ_SIZE)
        if not data:
            return False
        if self._start:
            del self._buffer[:self._start]  # once per read, so parsing stays linear
            self._start = 0
        self._buffer += data
        return True

    def _take(self, length):
        data = bytes(self._buffer[self._start:self._start + length])
        self._start += length
        return data

    def _read_until(self, delimiter, limit, too_long, closed):
        """The bytes up to delimiter, which is passed over too. Each byte is searched once,
        however the bytes trickle in."""
        searched = 0  # bytes after _start in which the delimiter does not begin
        while True:
            end = self._buffer.find(delimiter, self._start + searched)
            if 0 <= end - self._start <= limit:
                data = self._take(end - self._start)
                self._start += len(delimiter)
                return data
            if len(self._buffer) - self._start > limit:
                raise BadResponse(too_long)
            searched = max(0, len(self._buffer) - self._start - len(delimiter) + 1)
            if not self._fill():
                raise BadResponse(closed)

    def _read_head(self, first=False):
        whole = self._start < len(self._buffer) or self._fill(quickack=not first)
        head = self._read_until(
            b'\r\n\r\n', MAX_HEAD_BYTES, f'no end of the headers in {MAX_HEAD_BYTES} bytes',
            'the connection closed before a whole answer' if whole
            else 'the connection closed without an answer').decode('latin-1')
        status_line, *lines = head.split('\r\n')
        match = _STATUS_LINE.fullmatch(status_line)
        if match is None:
            raise BadResponse(f'not an HTTP/1.x status line: {status_line[:100]!r}')
        return match[1], int(match[2]), _parse_headers(lines)

    def _read_exactly(self, length, closed):
        while len(self._buffer) - self._start < length:
            if not self._fill():
                raise BadResponse(closed)
        return self._take(length)

    def _read_to_end(self, status, max_body):
        while len(self._buffer) - self._start <= max_body:
            if not self._fill():
                return self._take(len(self._buffer) - self._start)
        raise TooLarge(status)

    def _read_chunked(self, status, max_body):
        body, size = [], 0
        while True:  # each chunk but the last holds a byte at least: the work is linear
            line = self._read_line(MAX_CHUNK_LINE, 'a chunk size line')
            match = _CHUNK_SIZE.fullmatch(line)
            if match is None:
                raise BadResponse(f'a bad chunk size line: {line[:40]!r}')
            length = int(match[1], 16)
            if length == 0:
                break
            size += length
            if size > max_body:
                raise TooLarge(status)
            body.append(self._read_exactly(length, 'the connection closed inside a chunk'))
            if self._read_line(2, 'a chunk'):
                raise BadResponse('a chunk longer than its size')
        trailers_left = MAX_HEAD_BYTES
        while line := self._read_line(trailers_left, 'the trailer fields'):  # not used
            trailers_left -= len(line) + 2
        return b''.join(body)

    def _read_line(self, limit, what):
        if limit < 0:
            raise BadResponse(f'{what} longer than allowed')
        return self._read_until(b'\r\n', limit, f'{what} longer than allowed',
                                'the connection closed inside a chunked body')


def _request_bytes(method, target, host, user_agent, headers, body):
    lines = ''.join(f'{name}: {value}\r\n' for name, value in headers.items())
    if body or method != 'GET':
        lines += f'Content-Length: {len(body)}\r\n'
    return (f'{method} {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {user_agent}\r\n'
            f'{lines}\r\n').encode() + body


@functools.lru_cache(maxsize=1024)
def _origin(scheme, netloc):
    """((scheme, host, port), the Host header, Basic credentials or None) of a URL's
    netloc, worked out once: a ValueError for a port that is not a number in range."""
    parts = SplitResult(scheme, netloc, '', '', '')
    port = parts.port
    if port is None:
        port = _default_port(scheme)
    credentials = None
    if parts.username or parts.password:
        pair = f'{unquote(parts.username)}:{unquote(parts.password or "")}'
        credentials = 'Basic ' + base64.b64encode(pair.encode()).decode()
    return (scheme, parts.hostname, port), netloc.rpartition('@')[2], credentials


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
    if not _CONTENT_LENGTH.fullmatch(value):  # a repeated one ("5, 5") too: RFC 9112 §6.3
        raise BadResponse(f'a bad Content-Length: {value[:40]!r}')
    return int(value)


def _default_port(scheme):
    return 443 if scheme == 'https' else 80
