"""Wiring: settings, logging, the Redis client, the dispatcher and the HTTP server, and a
clean stop on SIGTERM or SIGINT."""
import dataclasses
import gc
import logging
import os
import resource
import signal
import socket
import sys
import uuid

import gevent
import gevent.event
from gevent import monkey

from . import __version__, demo
from .api import make_app
from .catalogue import load_catalogue
from .config import load_config
from .dispatcher import Dispatcher
from .endings import Endings
from .errors import ConfigError, CatalogueError, StoreUnavailable
from .httpserver import listen, make_server
from .recovery import Liveness
from .stepclient import StepClient
from .store import Store, connect
from .worker import Worker

log = logging.getLogger('cameron')


def main(argv=None, environ=None):
    """Run the server until SIGTERM or SIGINT; returns the exit code."""
    if not monkey.is_module_patched('socket'):
        print('cameron-server: gevent.monkey.patch_all() must run before anything else '
              '(bin/cameron-server does it)', file=sys.stderr)
        return 1
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    try:
        config = load_config(argv, environ)
        catalogue = load_catalogue(config.workflows, {
            'step_timeout': config.step_timeout, 'retries': config.retries,
            'max_steps': config.max_steps})
        _setup_logging(config.log_level)
        if config.redis_url is None:
            log.warning('NO REDIS CONFIGURED: using the embedded in-process store. Every '
                        'ticket is lost when this process exits. Set --redis or '
                        'CAMERON_REDIS_URL.')
        client = connect(config.redis_url, config.redis_connections)
    except (ConfigError, CatalogueError, StoreUnavailable) as e:
        print(f'cameron-server: {e}', file=sys.stderr)
        return 1
    return serve(config, catalogue, client)


@dataclasses.dataclass
class Parts:
    """A Cameron assembled but not yet started: the WSGI app and what runs behind it."""
    app: object
    dispatcher: Dispatcher
    liveness: Liveness
    endings: Endings
    steps: StepClient
    process: str


def assemble(config, catalogue, client, process=None):
    process = process or f'{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}'
    store = Store(client, config.namespace, config.ticket_ttl)
    steps = StepClient(config.max_outgoing_requests, config.max_response_bytes,
                       config.retry_backoff)
    worker = Worker(store, steps, process, config.max_fanout)
    endings = Endings(store)
    dispatcher = Dispatcher(store, worker, catalogue, process, config.max_running_tickets,
                            config.poll_interval, endings)
    liveness = Liveness(store, process, catalogue, config.heartbeat_ttl, dispatcher)
    app = make_app(config, catalogue, store, dispatcher, endings)
    if config.demo:
        app.mount('/demo/', demo.make_app())
    return Parts(app, dispatcher, liveness, endings, steps, process)


def raise_open_file_limit(wanted):
    """Every step call in flight and every client holds a file descriptor: lift the soft
    limit to the hard one, and say so, and say when even that is short of `wanted`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.info('open-file limit raised from %d to %d', soft, hard)
    if hard < wanted:
        log.warning('open-file limit %d is below the %d that max_outgoing_requests, '
                    'redis_connections and max_connections may need', hard, wanted)


def serve(config, catalogue, client):
    # Listen first: the port is part of the default process id, and holding it proves that
    # no live process has that id, so what an earlier one left can be taken back at once.
    try:
        listener = listen(config.host, config.port)
    except OSError as e:
        log.error('cannot listen on %s:%s: %s', config.host, config.port, e.strerror)
        return 1
    port = listener.getsockname()[1]
    raise_open_file_limit(config.max_outgoing_requests + config.redis_connections
                          + config.max_connections + 64)
    parts = assemble(config, catalogue, client, config.process_id or f'{socket.gethostname()}:{port}')
    server = make_server(listener, parts.app, logging.getLogger('cameron.http'),
                         config.max_connections)
    stop = gevent.event.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop.set)
    _tune_garbage_collector()  # before the first ticket: what that makes is short-lived
    if config.dispatch:
        try:
            parts.liveness.start()
        except StoreUnavailable as e:
            log.error('cannot start: %s', e)
            return 1
        parts.dispatcher.start()
    parts.endings.start()
    server.start()
    log.info('cameron %s listening on http://%s:%d (process %s, namespace %s, %d workflows)',
             __version__, config.host, port, parts.process, config.namespace, len(catalogue))
    stop.wait()
    log.info('stopping: no new connections; running tickets get %ss to finish',
             config.drain_timeout)
    server.close()  # requests in flight, a ?wait on a draining ticket among them, go on
    if config.dispatch:
        parts.dispatcher.stop(config.drain_timeout)
        try:
            parts.liveness.stop()
        except StoreUnavailable as e:
            log.warning('could not leave the process registry: %s', e)
    server.stop(timeout=1)
    parts.endings.stop()
    parts.steps.close()
    log.info('stopped')
    return 0


def _tune_garbage_collector():
    """A young-generation scan comes once the containers allocated outnumber those freed by
    the first threshold. Running tickets allocate and free about as many, so in a steady
    state the scans come from drift (a free never takes the count below zero) and from
    garbage cycles, and each one walks the young objects of the tickets in flight: the more
    in flight, the more CPU per step. Cameron's request and step paths leave no cycles
    (tests count them), and at 100,000 the scans come 20 to 40 times less often: they took
    4% of the CPU under bench/fan7.py with 500 tickets in flight, 9% with 2,000 and 11%
    under bench/inflight.py, and now a sixth of that or less. The price: a cycle made
    elsewhere (bottle's 404 for a path no route takes leaves a few dozen objects) waits
    longer, with what it holds. What start-up made lives as long as the process and is
    left out of the scans."""
    gc.collect()  # what start-up left for the collector is not kept for ever
    gc.freeze()
    gc.set_threshold(100_000, 10, 10)


def _setup_logging(level):
    logging.basicConfig(stream=sys.stderr, level=level.upper(),
                        format='%(asctime)s %(levelname)s %(name)s: %(message)s')
