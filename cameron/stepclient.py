"""Calls to step services: keep-alive connections (httpclient), a bound on calls in flight,
a hard deadline per attempt, a cap on answer size, and retries with backoff."""
import dataclasses
import json
import logging
import math
import time

import gevent
import gevent.lock

from . import __version__, protocol
from .httpclient import HTTPClient, TooLarge

log = logging.getLogger(__name__)


@dataclasses.dataclass
class StepResult:
    """What calling a step came to: an HTTP status and body, or an error, or both."""
    http_status: int = None
    body: bytes = b''
    error: dict = None  # protocol.step_error; None when the call got a 2xx answer
    attempts: int = 1
    duration_ms: float = 0.0


class StepClient:
    def __init__(self, max_in_flight, max_response_bytes, retry_backoff, sleep=gevent.sleep):
        self.max_response_bytes = max_response_bytes
        self.retry_backoff = retry_backoff
        self._sleep = sleep
        self._slots = gevent.lock.BoundedSemaphore(max_in_flight)
        self._http = HTTPClient(user_agent=f'cameron/{__version__}')

    def close(self):
        self._http.close()

    def call(self, url, request, ticket, step_id, timeout, retries, budget=math.inf):
        """POST request (a dict) to url, retrying connection errors, timeouts, 5xx and 429.
        timeout bounds each attempt; budget, if given, all of them with the pauses between."""
        payload = json.dumps(request).encode()
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            headers = protocol.step_headers(ticket, step_id, attempt)
            left = budget - (time.monotonic() - started)
            result, retry_after = self._attempt(url, payload, headers, min(timeout, left))
            if not self._should_retry(result) or attempt > retries:
                break
            delay = min(protocol.retry_delay(attempt, self.retry_backoff, retry_after), timeout)
            if delay >= budget - (time.monotonic() - started):
                break
            log.info('ticket %s step %s: attempt %d failed (%s), retrying in %.2fs',
                     ticket, step_id, attempt, result.error['message'], delay)
            self._sleep(delay)
        result.attempts = attempt
        result.duration_ms = round((time.monotonic() - started) * 1000, 3)
        return result

    @staticmethod
    def _should_retry(result):
        if result.error is None:
            return False
        if result.error['type'] == 'http_status':
            return protocol.is_retryable(result.http_status)
        return result.error['type'] in ('connection', 'timeout')

    def _attempt(self, url, payload, headers, timeout):
        """One POST. Returns (StepResult, Retry-After seconds or None)."""
        with self._slots:
            # The deadline bounds the whole call, so an answer trickled byte by byte cannot
            # hold a greenlet past the step timeout.
            deadline = gevent.Timeout(timeout)
            try:
                with deadline:
                    response = self._http.request('POST', url, payload, headers,
                                                  self.max_response_bytes)
            except gevent.Timeout as e:
                if e is not deadline:
                    raise
                # Its traceback holds this frame, which holds it: a cycle with every frame of
                # the call in it, left for the garbage collector.
                e.__traceback__ = None
                return _failed('timeout', f'no answer within {timeout:.3g}s'), None
            except TooLarge as e:
                return StepResult(e.status, b'', protocol.step_error(
                    'limit', f'the answer is larger than {self.max_response_bytes} bytes',
                    e.status)), None
            except (OSError, ValueError) as e:  # ValueError: a malformed answer or URL
                return _failed('connection', f'{type(e).__name__}: {_reason(e)}'), None
        if 200 <= response.status < 300:
            return StepResult(response.status, response.body), None
        return StepResult(response.status, response.body, protocol.step_error(
            'http_status', f'the step answered HTTP {response.status}', response.status,
            response.body)), protocol.parse_retry_after(response.headers.get('retry-after'))


def _failed(kind, message):
    return StepResult(error=protocol.step_error(kind, message))


def _reason(error):
    # The innermost reason is what an operator needs ("Connection refused").
    reason = error
    while reason.__context__ is not None and reason.__context__ is not reason:
        reason = reason.__context__
    return str(reason) or type(reason).__name__
