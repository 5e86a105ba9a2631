"""A gevent step server for the fan7 workflow whose every step takes a given time.
Usage: slow_steps.py PORT DELAY_SECONDS"""
from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

from workload import FAN7  # noqa: E402

ANSWERS = {name: json.dumps(answer).encode() for name, answer in FAN7.items()}


def app(environ, start_response):
    environ['wsgi.input'].read()
    gevent.sleep(DELAY)
    body = ANSWERS.get(environ['PATH_INFO'].split('/')[1])
    if body is None:
        start_response('404 Not Found', [('Content-Length', '0')])
        return [b'']
    start_response('200 OK', [('Content-Type', 'application/json'),
                              ('Content-Length', str(len(body)))])
    return [body]


if __name__ == '__main__':
    DELAY = float(sys.argv[2])
    WSGIServer(('127.0.0.1', int(sys.argv[1])), app, log=None, backlog=4096).serve_forever()
