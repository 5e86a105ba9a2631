"""The API's HTTP server: gevent.pywsgi, on a listener tuned for small requests, with a
request handler that does less per request than pywsgi's own."""
import email.parser
import json
import logging
import re
import socket
import time

import gevent.pool
from gevent.pywsgi import OldMessage, WSGIHandler, WSGIServer, _InvalidClientInput

log = logging.getLogger(__name__)

# Seconds a kept-alive connection may wait for its next request (nginx's default): with at
# most max_connections served, idle clients must not hold the places for ever.
IDLE_TIMEOUT = 75.0
# The limits http.client, and so pywsgi, puts on a request's header lines.
MAX_LINE = 65536
MAX_HEADERS = 100
# A header line the email parser reads as plain `name: value`: a name of visible ASCII
# without ':', and a value with no CR in it (which that parser takes for a line break).
# The spaces before the value are stripped apart: matched here, a long run of them would
# be tried in every split between the two groups, in time quadratic in the line's length.
_PLAIN_HEADER = re.compile(r'([!-9;-~]+):([^\r\n]*)\r?\n')


def listen(host, port):
    """The API's listening socket. TCP_NODELAY, which accepted sockets inherit: pywsgi
    writes a response's headers and body apart, and Nagle's algorithm would hold the body
    until the client's delayed ACK, 40 ms later, on every keep-alive request."""
    listener = socket.create_server((host, port), backlog=2048)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return listener


def make_server(listener, app, error_log, max_connections, idle_timeout=IDLE_TIMEOUT):
    """The server of app on listener, serving at most max_connections connections at once:
    with that many open, it accepts no more until one closes, and the rest wait in the
    listen backlog. error_log is where pywsgi writes what the app writes to wsgi.errors."""
    return Server(listener, app, handler_class=Handler, error_log=error_log,
                  spawn=gevent.pool.Pool(max_connections), idle_timeout=idle_timeout)


class Server(WSGIServer):
    """pywsgi's server, which also closes a connection that has waited idle_timeout seconds
    for its next request, or for the rest of its request line and headers, looking for them
    a few times in each idle_timeout. A sweep rather than a socket timeout, which costs a
    timer at every wait of every read (in one alternating comparison, a sixth of the start
    API's throughput)."""

    def __init__(self, *args, idle_timeout, **kwargs):
        super().__init__(*args, **kwargs)
        self.idle_timeout = idle_timeout
        self.waiting = {}  # handler -> since when it waits for a request's line and headers
        self._sweeper = None

    def start(self):
        super().start()
        self._sweeper = gevent.spawn(self._sweep)

    def stop(self, timeout=None):
        if self._sweeper is not None:
            self._sweeper.kill()
        super().stop(timeout)

    def _sweep(self):
        while True:
            gevent.sleep(self.idle_timeout / 4)
            too_long = time.monotonic() - self.idle_timeout
            for handler, since in list(self.waiting.items()):
                if since < too_long and handler.socket is not None:
                    try:
                        handler.socket.shutdown(socket.SHUT_RDWR)  # its read ends; it closes
                    except OSError:  # closed by the client meanwhile
                        pass


def _error_answer(status, message):
    """A whole HTTP answer with the API's JSON error body, which closes the connection."""
    body = json.dumps({'error': message}).encode()
    return (f'HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: application/json\r\n'
            f'Content-Length: {len(body)}\r\n\r\n').encode() + body


# In place of pywsgi's own empty answers to a request it cannot read, by status.
_UNREADABLE = {
    '400': _error_answer('400 Bad Request', 'the request line or its headers are malformed'),
    '414': _error_answer('414 URI Too Long', 'the request line is too long'),
}


class Handler(WSGIHandler):
    def read_requestline(self):
        # Waiting for a request: swept if its line and headers take too long to come.
        self.server.waiting[self] = time.monotonic()
        return super().read_requestline()

    def read_request(self, raw_requestline):
        try:
            return super().read_request(raw_requestline)
        finally:
            self.server.waiting.pop(self, None)  # its head is in: the app's time is its own

    def _handle_client_error(self, error):
        """A connection shut (by the sweep) or reset while its head was read ends quietly:
        there is no one to answer. A malformed request is answered and logged."""
        if isinstance(error, OSError) and not isinstance(error, _InvalidClientInput):
            return None
        return super()._handle_client_error(error)

    def handle_one_request(self):
        """What pywsgi answers to a request it cannot read (and logs), but as JSON, as
        every other answer of the API is."""
        try:
            result = super().handle_one_request()
        finally:
            self.server.waiting.pop(self, None)  # no request, or a request line too long
        if isinstance(result, tuple):
            status, answer = result
            if status == '414':  # the one refusal pywsgi does not log
                self.log_error('(from %s) the request line is too long', self.client_address)
            return status, _UNREADABLE.get(status, answer)
        return result

    def log_error(self, message, *args):
        """pywsgi's note of a request it could not read: the client's error, logged as the
        API logs its other 4xx answers, not as an ERROR beside the socket's repr."""
        log.info(message, *args)

    def log_request(self):
        """No access log: pywsgi formats each line even when it has nowhere to write it,
        and Cameron logs what it does with each ticket itself."""

    def MessageClass(self, rfile, *_):
        headers = read_headers(rfile)
        _refuse_double_framing(headers)
        return headers


def _refuse_double_framing(headers):
    """A ValueError (a 400) for a body framed more than one way: two Content-Lengths, two
    Transfer-Encodings, both, or a coding other than chunked. pywsgi would pick one way,
    and a proxy in front of it may pick another and read a second request into the body
    (request smuggling). No client of the API has a reason to send such a request."""
    lengths = headers.get_all('Content-Length', [])
    codings = headers.get_all('Transfer-Encoding', [])
    if len(lengths) + len(codings) > 1:
        raise ValueError('the body is framed more than one way (Content-Length, '
                         'Transfer-Encoding)')
    if codings and codings[0].strip().lower() != 'chunked':
        raise ValueError(f'Transfer-Encoding {codings[0]!r} is not supported, only chunked')


def read_headers(rfile):
    """A request's headers, as pywsgi's own reading gives them (through http.client and
    the email parser), at a tenth of its CPU: plain `name: value` lines, which is what
    clients send, are taken apart here; anything else goes to the email parser."""
    lines = []
    while True:
        line = rfile.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            headers = OldMessage()
            headers.status = 'Line too long'  # what pywsgi answers 400 to
            return headers
        lines.append(line.decode('iso-8859-1'))
        if len(lines) > MAX_HEADERS:
            raise ValueError(f'more than {MAX_HEADERS - 1} headers')  # a 400, logged
        if line in (b'\r\n', b'\n', b''):
            break
    headers = OldMessage()
    for line in lines[:-1]:
        plain = _PLAIN_HEADER.fullmatch(line)
        if plain is None:
            return email.parser.Parser(_class=OldMessage).parsestr(''.join(lines))
        name, value = plain.groups()
        headers.set_raw(name, value.lstrip(' \t'))
    return headers
