"""Shared fixtures: Redis (real and embedded), step services on 127.0.0.1, and Cameron
itself, assembled as the server assembles it and served over real HTTP."""
from gevent import monkey

monkey.patch_all()  # the test entry point patches first, as bin/cameron-server does

import collections  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import fakeredis  # noqa: E402
import gevent  # noqa: E402
import pytest  # noqa: E402
import redis  # noqa: E402
import requests  # noqa: E402
import yaml  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

from cameron.catalogue import parse_catalogue  # noqa: E402
from cameron.config import Config  # noqa: E402
from cameron.httpserver import listen, make_server  # noqa: E402
from cameron.server import assemble  # noqa: E402

# A database of its own, so the tests never touch data on database 0; and keys under a
# namespace of each test's own, deleted after it.
REDIS_URL = os.environ.get('CAMERON_TEST_REDIS_URL', 'redis://127.0.0.1:6379/9')
IN_CI = os.environ.get('CI', '').lower() == 'true'


def real_redis():
    """A client of the test Redis. Locally a missing Redis skips; under CI it fails."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True, socket_timeout=5)
    try:
        client.ping()
    except redis.ConnectionError as e:
        if IN_CI:
            pytest.fail(f'CI=true but no Redis answers at {REDIS_URL}: {e}')
        pytest.skip(f'no Redis at {REDIS_URL}')
    return client


@pytest.fixture(params=['real', 'fake'])
def redis_client(request):
    """Each test using it runs twice: on a real Redis and on fakeredis."""
    if request.param == 'real':
        client = real_redis()
    else:
        client = fakeredis.FakeRedis(decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def namespace(redis_client):
    ns = f'cameron-test-{uuid.uuid4().hex[:12]}'
    yield ns
    for key in redis_client.scan_iter(f'{ns}:*'):
        redis_client.delete(key)


def keys_of(client, ns):
    """The workflow keys (queues, tickets) under ns: what a start writes."""
    return sorted(client.scan_iter(f'{ns}:workflow:*'))


def free_port():
    """A port nothing listens on: bound, then closed."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Reply:
    """What a step service route answers; a plain dict is a 200 JSON answer."""
    status: int = 200
    body: object = b''  # bytes, or anything JSON
    headers: tuple = ()
    delay: float = 0.0  # seconds before answering
    trickle: float = 0.0  # seconds between single bytes of the body
    chunked: bool = False  # no Content-Length: the body in chunks of 1 KiB


@dataclasses.dataclass
class Received:
    path: str
    body: dict
    headers: dict
    started: float
    finished: float = None


class StepService:
    """A real HTTP step service on 127.0.0.1. Routes map a path to a Reply, a dict, or a
    function of the Received request returning either; received lists every request."""

    def __init__(self):
        self.routes = {}
        self.default = None  # a function of the Received request, for paths not in routes
        self.received = []
        self.server = WSGIServer(('127.0.0.1', 0), self._wsgi, log=None, error_log=None)
        self.server.start()
        self.base = f'http://127.0.0.1:{self.server.server_port}'

    def url(self, path):
        return self.base + path

    def paths(self):
        return [r.path for r in self.received]

    def calls(self):
        """How many times each (ticket, step id) was called."""
        return collections.Counter((r.headers.get('X-Cameron-Ticket'), r.headers.get('X-Cameron-Step'))
                                   for r in self.received)

    def most_at_once(self):
        """The most requests this service was answering at the same time."""
        events = sorted([(r.started, 1) for r in self.received]
                        + [(r.finished, -1) for r in self.received if r.finished])
        at_once = most = 0
        for _, change in events:
            at_once += change
            most = max(most, at_once)
        return most

    def _wsgi(self, environ, start_response):
        raw = environ['wsgi.input'].read()
        headers = {k[5:].replace('_', '-').title(): v for k, v in environ.items()
                   if k.startswith('HTTP_')}
        received = Received(environ['PATH_INFO'], json.loads(raw) if raw else None, headers,
                            time.monotonic())
        self.received.append(received)
        route = self.routes.get(received.path, self.default)
        reply = route(received) if callable(route) else route
        if reply is None:
            reply = Reply(404, b'no such route')
        elif isinstance(reply, dict):
            reply = Reply(body=reply)
        gevent.sleep(reply.delay)
        body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        length = [] if reply.chunked else [('Content-Length', str(len(body)))]
        start_response(f'{reply.status} X', [*length, *reply.headers])
        if reply.trickle:
            return self._trickle(body, reply.trickle, received)
        if reply.chunked:
            return [body[i:i + 1024] for i in range(0, len(body), 1024)]
        received.finished = time.monotonic()
        return [body]

    @staticmethod
    def _trickle(body, pause, received):
        for i in range(len(body)):
            gevent.sleep(pause)
            yield body[i:i + 1]


@pytest.fixture
def step_service():
    service = StepService()
    yield service
    service.server.stop(timeout=1)


ROOT = pathlib.Path(__file__).resolve().parent.parent
SERVER = [sys.executable, str(ROOT / 'bin' / 'cameron-server')]


class ServerProcess:
    """bin/cameron-server as a real process on a free port, stderr to a log file."""

    def __init__(self, tmp_path, catalogue, *args, port=None):
        self.port = port or free_port()
        self.base = f'http://127.0.0.1:{self.port}'
        name = f'server-{self.port}-{uuid.uuid4().hex[:4]}'
        workflows = tmp_path / f'{name}.yaml'
        workflows.write_text(catalogue if isinstance(catalogue, str)
                             else yaml.safe_dump({'workflows': catalogue}))
        self.log = tmp_path / f'{name}.log'
        with open(self.log, 'w') as log:
            self.process = subprocess.Popen(
                SERVER + ['--port', str(self.port), '--workflows', str(workflows), *args],
                stderr=log, cwd=ROOT)
        self._wait_until_up()

    def _wait_until_up(self):
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                requests.get(f'{self.base}/api/health', timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.05)
        raise AssertionError(f'the server did not start: {self.log.read_text()}')

    def start(self, workflow, key):
        started = requests.post(f'{self.base}/api/workflow/{workflow}/start',
                                data=json.dumps({'key': key}), timeout=5)
        assert started.status_code == 201, started.text
        return started.json()['ticket']

    def record(self, workflow, ticket, wait=15):
        return requests.get(f'{self.base}/api/workflow/{workflow}/ticket/{ticket}?wait={wait}',
                            timeout=wait + 5).json()

    def kill(self):
        self.process.kill()
        self.process.wait(timeout=10)

    def terminate(self, timeout=40):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


@pytest.fixture
def servers(tmp_path):
    """servers(catalogue, *flags, port=None) -> a running ServerProcess; all killed after."""
    started = []

    def start(catalogue, *args, port=None):
        started.append(ServerProcess(tmp_path, catalogue, *args, port=port))
        return started[-1]

    yield start
    for server in started:
        if server.process.poll() is None:
            server.kill()


def garbage_left_by(action):
    """The objects that action() left in reference cycles, which only the garbage collector
    would have freed: with thousands of tickets in flight, each of its scans walks them all."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        action()
        gevent.sleep(0.2)  # the server's greenlets finish with what they answered
        gc.collect()
        return list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f'timed out waiting for {what}'
        time.sleep(0.05)


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test's own, on a free port, writing every command to its
    append-only file, so it can be stopped and started again without losing anything."""
    if shutil.which('redis-server') is None:
        if IN_CI:
            pytest.fail('CI=true but redis-server is not installed')
        pytest.skip('redis-server is not installed')
    port = free_port()
    command = ['redis-server', '--port', str(port), '--bind', '127.0.0.1', '--save', '',
               '--appendonly', 'yes', '--appendfsync', 'always', '--dir', str(tmp_path)]
    processes = []

    def start():
        processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))
        wait_until(lambda: _answers(port), 10, 'redis-server to start')

    def stop():
        processes[-1].kill()
        processes[-1].wait(timeout=10)

    start()
    yield f'redis://127.0.0.1:{port}/0', start, stop
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def _answers(port):
    try:
        return redis.Redis(port=port, socket_timeout=1).ping()
    except redis.ConnectionError:
        return False


class Cameron:
    """Cameron assembled as bin/cameron-server assembles it, its API on a free port."""

    def __init__(self, parts, client, namespace, heartbeat=True,
                 max_connections=Config.max_connections):
        self.parts = parts
        self.heartbeat = heartbeat  # heartbeats and endings; off for a Redis that is not there
        self.dispatcher = parts.dispatcher
        self.redis = client
        self.ns = namespace
        self.server = make_server(listen('127.0.0.1', 0), parts.app,
                                  logging.getLogger('cameron.http'), max_connections)
        self.server.start()
        self.base = f'http://127.0.0.1:{self.server.server_port}'
        if heartbeat:
            parts.liveness.start()
            parts.endings.start()
        self.dispatcher.start()

    def start(self, workflow, key='k1', data=None, **kwargs):
        return requests.post(f'{self.base}/api/workflow/{workflow}/start',
                             json={'key': key, 'data': data}, timeout=5, **kwargs)

    def run(self, workflow, key='k1', data=None, wait=10):
        """Start a ticket and return its record once it has finished."""
        started = self.start(workflow, key, data)
        assert started.status_code == 201, started.text
        record = requests.get(f'{self.base}{started.headers["Location"]}?wait={wait}',
                              timeout=wait + 5).json()
        assert record['status']['current'] in ('done', 'error'), record
        return record

    def ticket_hash(self, workflow, ticket):
        return self.redis.hgetall(f'{self.ns}:workflow:{workflow}:ticket:{ticket}')

    def stop(self):
        self.server.stop(timeout=1)
        self.dispatcher.stop(timeout=5)
        if self.heartbeat:
            self.parts.liveness.stop()
            self.parts.endings.stop()
        self.parts.steps.close()


@pytest.fixture
def make_cameron(redis_client, namespace):
    """make_cameron({'name': {workflow options}}, **settings) -> a running Cameron."""
    started = []

    def make(workflows, **settings):
        config = Config(namespace=namespace, **{'retry_backoff': 0.01, **settings})
        defaults = {'step_timeout': config.step_timeout, 'retries': config.retries,
                    'max_steps': config.max_steps}
        catalogue = parse_catalogue(yaml.safe_dump({'workflows': workflows}), 'test', defaults)
        cameron = Cameron(assemble(config, catalogue, redis_client), redis_client, namespace,
                          max_connections=config.max_connections)
        started.append(cameron)
        return cameron

    yield make
    for cameron in started:
        cameron.stop()
