"""The HTTP API (SPEC §2): JSON in, JSON out, and every error a JSON object."""
import functools
import hmac
import json
import logging
import re
import time
import uuid

import bottle
import gevent

from .errors import StoreUnavailable
from .protocol import is_text, loads
from .store import FINISHED

log = logging.getLogger(__name__)
MAX_KEY_LENGTH = 1024
MAX_WAIT = 60.0
MAX_IDEMPOTENCY_KEY_LENGTH = 255
HEALTH_TIMEOUT = 2.0  # seconds Redis has to answer a health check
_TICKET_PATTERN = re.compile(r'[0-9a-f]{32}')
_LOOK_EVERY, _LOOK_EVERY_UNTOLD = 10.0, 0.5  # seconds between looks at a waited-for ticket


def make_app(config, catalogue, store, dispatcher, endings):
    app = bottle.Bottle()
    app.install(_json_errors)
    if config.api_tokens:
        app.install(_bearer_token_required(config.api_tokens))
    app.default_error_handler = _render_error

    def workflow_or_404(name):
        if name not in catalogue:
            raise bottle.HTTPError(404, f'unknown workflow {name!r}')
        return catalogue[name]

    @app.post('/api/workflow/<name>/start')
    def start(name):
        workflow_or_404(name)
        key, data = _read_start_request(config.max_request_bytes, config.body_timeout)
        new = uuid.uuid4().hex
        ticket = store.push_ticket(name, new, key, data, _idempotency_key())
        location = f'/api/workflow/{name}/ticket/{ticket}'
        bottle.response.set_header('Location', location)
        if ticket == new:
            dispatcher.notify()
            log.info('ticket %s/%s: enqueued, key %r', name, ticket, key)
            bottle.response.status = 201
        else:
            log.info('ticket %s/%s: started before with this Idempotency-Key', name, ticket)
        return {'workflow': name, 'ticket': ticket, 'status': 'enqueued', 'location': location}

    @app.get('/api/workflow/<name>/ticket/<ticket>')
    def read_ticket(name, ticket):
        workflow_or_404(name)
        wait = _wait_seconds(bottle.request.query.get('wait'))
        if not _TICKET_PATTERN.fullmatch(ticket):
            raise bottle.HTTPError(404, f'unknown ticket {ticket!r}')
        record = _wait_until_finished(store, endings, name, ticket, wait) if wait else None
        record = record or store.read_ticket(name, ticket)
        if record is None:
            raise bottle.HTTPError(404, f'unknown ticket {ticket!r} of workflow {name!r}')
        return record

    @app.get('/api/workflows')
    def workflows():
        queued = store.queue_lengths(list(catalogue))
        return {'workflows': [{'name': w.name, 'start_point_url': w.start_point_url,
                               'queued': queued[w.name]} for w in catalogue.values()]}

    @app.get('/api/health')
    def health():
        try:
            with gevent.Timeout(HEALTH_TIMEOUT, StoreUnavailable('no answer in time')):
                store.ping()  # a Redis that hangs is as unhealthy as one that is gone
        except StoreUnavailable:
            bottle.response.status = 503
            return {'status': 'unavailable', 'redis': 'unreachable'}
        return {'status': 'ok', 'redis': 'ok'}

    return app


def _wait_until_finished(store, endings, workflow, ticket, seconds):
    """Wait until the ticket has finished or `seconds` have passed; the end of the ticket,
    here or in another process, wakes the wait. Its status is looked at now and then too,
    often while the news of endings does not arrive (Redis lost), else seldom, in case that
    news was lost. Returns the record if it was read on the way, else None."""
    deadline = time.monotonic() + seconds
    with endings.watching(ticket) as ended:
        status = store.ticket_status(workflow, ticket)
        while status not in (*FINISHED, None):
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            look_every = _LOOK_EVERY if endings.listening else _LOOK_EVERY_UNTOLD
            if not ended.wait(min(look_every, left)):
                status = store.ticket_status(workflow, ticket)
                continue
            ended.clear()
            record = store.read_ticket(workflow, ticket)
            if record is None or record['status'].get('current') in FINISHED:
                return record
            status = record['status'].get('current')  # stopped without finishing
    return None


def _read_start_request(limit, timeout):
    """(key, data) from the request body; HTTPError 400, 408 or 413 says what is wrong."""
    request = _read_json_body(limit, timeout)
    if not isinstance(request, dict):
        raise bottle.HTTPError(400, 'the body is not a JSON object')
    key = request.get('key')
    if isinstance(key, int) and not isinstance(key, bool):
        key = str(key)
    elif isinstance(key, float) and key.is_integer():
        key = str(int(key))  # 1e3 is the key "1000", as a client would mean it
    elif isinstance(key, float):
        key = repr(key)
    if not isinstance(key, str) or not is_text(key):
        raise bottle.HTTPError(400, '"key" is required: a string or a number')
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise bottle.HTTPError(400, f'"key" must have 1 to {MAX_KEY_LENGTH} characters')
    return key, request.get('data')


def _read_json_body(limit, timeout):
    if (bottle.request.content_length or 0) > limit:
        raise bottle.HTTPError(413, f'the body is larger than {limit} bytes')
    try:
        # A client that sends less than it announced must not hold this greenlet for ever.
        with gevent.Timeout(timeout):
            body = bottle.request.environ['wsgi.input'].read(limit + 1)
    except gevent.Timeout:
        raise bottle.HTTPError(408, f'the body did not arrive within {timeout:g}s') from None
    except (OSError, ValueError):  # e.g. a malformed chunked body
        raise bottle.HTTPError(400, 'the body could not be read') from None
    if len(body) > limit:
        raise bottle.HTTPError(413, f'the body is larger than {limit} bytes')
    try:
        return loads(body)
    except ValueError as e:
        raise bottle.HTTPError(400, f'the body is not JSON: {e}') from None


def _idempotency_key():
    key = _header('Idempotency-Key')
    if key is not None and not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        raise bottle.HTTPError(
            400, f'Idempotency-Key must have 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters')
    return key


def _header(name, default=None):
    """A request header, read as bottle.request.get_header reads it (as UTF-8), but without
    the view of the headers that it keeps in the environ, which the view refers to: a
    reference cycle with each request, which only the garbage collector frees."""
    try:
        return bottle.WSGIHeaderDict(bottle.request.environ).get(name, default)
    except UnicodeDecodeError:
        raise bottle.HTTPError(400, f'the {name} header is not UTF-8') from None


def _wait_seconds(value):
    if value is None:
        return 0.0
    try:
        wait = float(value)
    except ValueError:
        wait = -1.0
    if not 0 < wait <= MAX_WAIT:
        raise bottle.HTTPError(400, f'"wait" must be a number of seconds above 0, at most {MAX_WAIT:g}')
    return wait


def _json_errors(callback):
    """Route plugin: Redis gone is a 503; anything unexpected a 500 without detail. Every
    answer goes back to bottle as a value: bottle's JSON plugin keeps one raised through it
    in a local of a frame that the answer's traceback holds, a reference cycle with each
    error answer, which only the garbage collector frees."""
    @functools.wraps(callback)
    def wrapper(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except bottle.HTTPResponse as e:
            answer = e
        except StoreUnavailable:
            answer = bottle.HTTPError(503, 'the store is unavailable, try again shortly')
        except Exception:
            log.exception('%s %s: unexpected error', bottle.request.method, bottle.request.path)
            answer = bottle.HTTPError(500, 'internal error')
        # Its traceback, and that of what it was raised from, hold this frame (through
        # their frames' callers), which holds it.
        answer.__traceback__ = answer.__context__ = answer.__cause__ = None
        return answer
    return wrapper


def _bearer_token_required(tokens):
    """Route plugin: every route but health needs Authorization: Bearer <one of tokens>."""
    expected = [token.encode() for token in tokens]

    def plugin(callback):
        @functools.wraps(callback)
        def wrapper(*args, **kwargs):
            if bottle.request.path != '/api/health':
                scheme, _, given = _header('Authorization', '').partition(' ')
                # compare_digest with every token: the time taken tells nothing of them.
                matches = [hmac.compare_digest(given.strip().encode(), t) for t in expected]
                if scheme.lower() != 'bearer' or not any(matches):
                    raise bottle.HTTPError(401, 'this needs an Authorization: Bearer <token> '
                                                'header with a valid token',
                                           **{'WWW-Authenticate': 'Bearer'})
            return callback(*args, **kwargs)
        return wrapper
    return plugin


def _render_error(error):
    """Every error answer, bottle's own 404 and 405 included, as {"error": message}."""
    request = bottle.request
    message = error.body if isinstance(error.body, str) and error.body else error.status_line
    if error.status_code < 500:
        log.info('%s %s: %d %s', request.method, request.path, error.status_code, message)
    else:
        log.warning('%s %s: %d %s', request.method, request.path, error.status_code, message)
    bottle.response.content_type = 'application/json'
    return json.dumps({'error': message})
