"""Calls to step services: one pool of keep-alive connections per host, a bound on calls in
flight, a hard deadline per attempt, a cap on answer size, and retries with backoff.

It speaks urllib3 directly rather than through requests: bench/fan7.py measured requests'
per-call work (session merging, proxy lookups in the environment, hooks) as the largest
single cost of a step, and Cameron needs none of it."""
import dataclasses
import json
import logging
import math
import time

import gevent
import gevent.lock
import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError, ProtocolError
from urllib3.exceptions import TimeoutError as UrllibTimeout

from . import protocol

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
        # One keep-alive pool per step host (100 hosts kept), each as large as the calls
        # allowed in flight; redirects and urllib3's own retries are off: Cameron decides.
        self._http = urllib3.PoolManager(num_pools=100, maxsize=max_in_flight, block=False,
                                         retries=False)

    def close(self):
        self._http.clear()

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
            # urllib3's timeouts bound each socket operation; gevent.Timeout bounds the
            # whole call, so an answer trickled byte by byte cannot hold a greenlet.
            deadline = gevent.Timeout(timeout)
            deadline.start()
            response = None
            try:
                response = self._http.request(
                    'POST', url, body=payload, headers=headers, preload_content=False,
                    redirect=False, timeout=urllib3.Timeout(connect=timeout, read=timeout))
                return self._read(response), \
                    protocol.parse_retry_after(response.headers.get('Retry-After'))
            except gevent.Timeout as e:
                if e is not deadline:
                    raise
                return _failed('timeout', f'no answer within {timeout:.3g}s'), None
            except NewConnectionError as e:  # before TimeoutError, which it subclasses
                return _failed('connection', f'cannot connect: {_reason(e)}'), None
            except UrllibTimeout as e:
                return _failed('timeout', f'no answer within {timeout:.3g}s ({type(e).__name__})'), None
            except (HTTPError, ProtocolError, OSError) as e:
                return _failed('connection', f'{type(e).__name__}: {_reason(e)}'), None
            finally:
                deadline.close()
                if response is not None:
                    response.release_conn()

    def _read(self, response):
        status = response.status
        declared = response.headers.get('Content-Length', '')
        if declared.isdigit() and int(declared) > self.max_response_bytes:
            response.close()  # the rest is not wanted: this connection cannot be reused
            return _too_large(status, self.max_response_bytes)
        body = response.read(self.max_response_bytes + 1)
        if len(body) > self.max_response_bytes:
            response.close()
            return _too_large(status, self.max_response_bytes)
        if not 200 <= status < 300:
            return StepResult(status, body, protocol.step_error(
                'http_status', f'the step answered HTTP {status}', status, body))
        return StepResult(status, body)


def _failed(kind, message):
    return StepResult(error=protocol.step_error(kind, message))


def _too_large(status, limit):
    return StepResult(status, b'', protocol.step_error(
        'limit', f'the answer is larger than {limit} bytes', status))


def _reason(error):
    # urllib3's messages repeat the pool and the URL; the innermost reason is what an
    # operator needs ("Connection refused").
    reason = error
    while reason.__context__ is not None and reason.__context__ is not reason:
        reason = reason.__context__
    return str(reason) or type(reason).__name__
