"""The baselines of bench/start_api.py: a bare gevent.pywsgi server that reads a POST body
and answers a small JSON object, or with --bottle the same through a bottle route that
parses the body as JSON (what the web framework alone costs). Usage: hello.py PORT [--bottle]"""
from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

import bottle  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

BODY = b'{"hello": "world"}'


def app(environ, start_response):
    environ['wsgi.input'].read()
    start_response('201 Created', [('Content-Type', 'application/json'),
                                   ('Content-Length', str(len(BODY)))])
    return [BODY]


framework = bottle.Bottle()


@framework.post('/api/workflow/<name>/start')
def start(name):
    request = json.loads(bottle.request.body.read())
    bottle.response.status = 201
    return {'workflow': name, 'key': request['key']}


if __name__ == '__main__':
    listener = socket.create_server(('127.0.0.1', int(sys.argv[1])), backlog=4096)
    # Tuned as Cameron's own listener is: pywsgi writes headers and body apart, and Nagle's
    # algorithm would hold the body for the client's delayed ACK.
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    WSGIServer(listener, framework if '--bottle' in sys.argv else app, log=None).serve_forever()
