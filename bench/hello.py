"""The baseline of bench/start_api.py: a bare gevent.pywsgi server that reads a POST body
and answers a small JSON object. Usage: hello.py PORT"""
from gevent import monkey

monkey.patch_all()

import socket  # noqa: E402
import sys  # noqa: E402

from gevent.pywsgi import WSGIServer  # noqa: E402

BODY = b'{"hello": "world"}'


def app(environ, start_response):
    environ['wsgi.input'].read()
    start_response('201 Created', [('Content-Type', 'application/json'),
                                   ('Content-Length', str(len(BODY)))])
    return [BODY]


if __name__ == '__main__':
    listener = socket.create_server(('127.0.0.1', int(sys.argv[1])), backlog=4096)
    # Tuned as Cameron's own listener is: pywsgi writes headers and body apart, and Nagle's
    # algorithm would hold the body for the client's delayed ACK.
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    WSGIServer(listener, app, log=None).serve_forever()
