"""The step protocol, as pure functions: what Cameron sends a step service, how it reads
the answer, the URL rules and step ids. No I/O here, so every rule is unit-testable."""
import dataclasses
import functools
import json
import math
import random
import re
from urllib.parse import SplitResult, quote, urljoin, urlsplit

from .errors import InvalidAnswer

ERROR_BODY_BYTES = 1024  # how much of a failed answer's body a step record keeps
# A path from the root with nothing in it for urljoin to resolve or drop: no empty, "." or
# ".." segment, no parameters, query or fragment, no character urlsplit would strip.
_PLAIN_PATH = re.compile(r"(?:/(?!\.\.?(?:/|$))[A-Za-z0-9\-._~!$&'()*+,=:@%]+)+/?")


@dataclasses.dataclass
class NextStep:
    name: str
    url: str  # already expanded: {key} replaced, resolved, checked


@dataclasses.dataclass
class Answer:
    """A step service's valid answer."""
    name: str = None
    data: object = None
    next: tuple = ()
    parallel: bool = True


def loads(body):
    """JSON as Cameron takes it in: ValueError for what is not JSON, and also for NaN and
    infinite numbers (they could not be written out as JSON again) and for nesting deeper
    than the parser can follow."""
    try:
        if isinstance(body, (bytes, bytearray)):  # UTF-8, -16 or -32, as json.loads reads it
            body = body.decode(json.detect_encoding(body), 'surrogatepass')
        return _DECODER.decode(body)
    except RecursionError:
        raise ValueError('nested too deeply') from None


def _refuse_constant(name):
    raise ValueError(f'{name} is not a JSON number')


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f'{text} is too large a number')
    return value


# Made once: json.loads with hooks builds a decoder per call, half the cost of a small one.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def is_text(value):
    """True for a string that can be written out as UTF-8 (JSON admits lone surrogates)."""
    try:
        value.encode('utf-8')
    except UnicodeEncodeError:
        return False
    return True


def step_error(kind, message, http_status=None, body=b''):
    """The error object a failed step records (SPEC §4.5)."""
    return {'type': kind, 'message': message, 'http_status': http_status,
            'body': body[:ERROR_BODY_BYTES].decode('utf-8', 'replace')}


def step_request(key, data, ticket, workflow, step_id, requestor):
    return {'key': key, 'data': data, 'ticket': ticket, 'workflow': workflow,
            'step': step_id, 'requestor': requestor}


def step_headers(ticket, step_id, attempt):
    return {'Content-Type': 'application/json', 'X-Cameron-Ticket': ticket,
            'X-Cameron-Step': step_id, 'X-Cameron-Attempt': str(attempt),
            'Idempotency-Key': f'{ticket}:{step_id}'}


def expand_url(template, key, base=None, allowed_hosts=None):
    """template with {key} replaced by the URL-encoded key, resolved against base when
    relative; InvalidAnswer unless it is http(s) and, if a list is given, on allowed_hosts."""
    try:
        url = template.replace('{key}', _quoted(key)) if '{key}' in template else template
        if base:
            url = _resolve(base, url)
        parts = urlsplit(url)
        host = _host(parts.netloc)
        valid = parts.scheme in ('http', 'https') and host and is_text(url)
    except ValueError:  # urlsplit's word for a malformed host ("[oops") or port
        valid = False
    if not valid:
        raise InvalidAnswer(f'{template!r} is not an http or https URL')
    if allowed_hosts is not None and host not in allowed_hosts:
        raise InvalidAnswer(f'{host!r} is not on allowed_hosts')
    return url


# Worked out once per key and per host: every step of a ticket has the same key, and most
# of a workflow's steps the same few hosts.
@functools.lru_cache(maxsize=4096)
def _quoted(key):
    return quote(key, safe='')


@functools.lru_cache(maxsize=1024)
def _host(netloc):
    """The host name in a URL's netloc; a ValueError if its port is not a port number."""
    parts = SplitResult('', netloc, '', '', '')
    parts.port  # noqa: B018 (a ValueError if it is not a port number)
    return parts.hostname


def _resolve(base, url):
    """urljoin(base, url). A plain path from the root, what most answers name, is put after
    base's origin here, as urljoin would put it, at a fifth of urljoin's cost."""
    if _PLAIN_PATH.fullmatch(url):
        parts = urlsplit(base)
        return f'{parts.scheme}://{parts.netloc}{url}'
    return urljoin(base, url)


def parse_answer(body, step_url, key, allowed_hosts=None):
    """The Answer in a 2xx body; InvalidAnswer says what is wrong with it."""
    if not body.strip():
        return Answer()
    try:
        answer = loads(body)
    except ValueError as e:
        raise InvalidAnswer(f'the answer is not JSON: {e}') from None
    if not isinstance(answer, dict):
        raise InvalidAnswer('the answer is not a JSON object')
    name = answer.get('name')
    if name is not None and not (isinstance(name, str) and is_text(name)):
        raise InvalidAnswer('"name" is not a string')
    next_steps = answer.get('next')
    if next_steps is None and isinstance(answer.get('next_activities'), dict):
        next_steps = answer['next_activities'].get('definitions')  # the original's later form
    return Answer(name=name, data=answer.get('data'),
                  next=_parse_next(next_steps, step_url, key, allowed_hosts),
                  parallel=_parse_parallel(answer.get('parallel', True)))


def _parse_next(next_steps, step_url, key, allowed_hosts):
    if next_steps is None:
        return ()
    if not isinstance(next_steps, list):
        raise InvalidAnswer('"next" is not a list')
    parsed = []
    for i, entry in enumerate(next_steps, 1):
        if not (isinstance(entry, dict) and isinstance(entry.get('name'), str)
                and is_text(entry['name']) and isinstance(entry.get('url'), str)):
            raise InvalidAnswer(f'next step {i} is not an object with a string name and url')
        try:
            url = expand_url(entry['url'], key, step_url, allowed_hosts)
        except InvalidAnswer as e:
            raise InvalidAnswer(f'next step {i} ({entry["name"]}): {e}') from None
        parsed.append(NextStep(entry['name'], url))
    return tuple(parsed)


def _parse_parallel(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ('yes', 'no'):
        return value.lower() == 'yes'
    raise InvalidAnswer('"parallel" is not "yes", "no" or a boolean')


def is_retryable(http_status):
    return http_status == 429 or http_status >= 500


def retry_delay(attempt, backoff, retry_after=None, rng=random.random):
    """Seconds to wait before attempt + 1: exponential, with "equal jitter" (half fixed,
    half random, so that retries spread out but never come at once), or the step
    service's own Retry-After when it gave one."""
    if retry_after is not None:
        return retry_after
    return backoff * (2 ** (attempt - 1)) * (0.5 + rng() / 2)


def parse_retry_after(value):
    """Seconds from a Retry-After header given as seconds; None for anything else."""
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return None


def child_step_id(parent_id, index):
    """Ids are 1-based index paths: the second next step of step 1 is 1-2."""
    return f'{parent_id}-{index}'
