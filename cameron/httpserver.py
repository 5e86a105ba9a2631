"""The API's HTTP server: gevent.pywsgi, on a listener tuned for small requests, with a
request handler that does less per request than pywsgi's own."""
import email.parser
import http.client
import re
import socket

from gevent.pywsgi import OldMessage, WSGIHandler, WSGIServer

# The limits http.client, and so pywsgi, puts on a request's header lines.
MAX_LINE = 65536
MAX_HEADERS = 100
# A header line the email parser reads as plain `name: value`: a name of visible ASCII
# without ':', and a value with no CR in it (which that parser takes for a line break).
_PLAIN_HEADER = re.compile(r'([!-9;-~]+):[ \t]*([^\r\n]*)\r?\n')


def listen(host, port):
    """The API's listening socket. TCP_NODELAY, which accepted sockets inherit: pywsgi
    writes a response's headers and body apart, and Nagle's algorithm would hold the body
    until the client's delayed ACK, 40 ms later, on every keep-alive request."""
    listener = socket.create_server((host, port), backlog=2048)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return listener


def make_server(listener, app, error_log):
    return WSGIServer(listener, app, handler_class=Handler, error_log=error_log)


class Handler(WSGIHandler):
    def log_request(self):
        """No access log: pywsgi formats each line even when it has nowhere to write it,
        and Cameron logs what it does with each ticket itself."""

    def MessageClass(self, rfile, *_):
        return read_headers(rfile)


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
            raise http.client.HTTPException(f'got more than {MAX_HEADERS} headers')
        if line in (b'\r\n', b'\n', b''):
            break
    headers = OldMessage()
    for line in lines[:-1]:
        plain = _PLAIN_HEADER.fullmatch(line)
        if plain is None:
            return email.parser.Parser(_class=OldMessage).parsestr(''.join(lines))
        headers.set_raw(*plain.groups())
    return headers
