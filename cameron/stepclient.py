"""Calls to step services: one pooled requests.Session, a bound on calls in flight, a hard
deadline per attempt, a cap on answer size, and retries with backoff."""
import dataclasses
import json
import logging
import math
import time

import gevent
import gevent.lock
import requests
import requests.adapters

from . import protocol

log = logging.getLogger(__name__)
_CHUNK_BYTES = 64 * 1024


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
        self._session = requests.Session()
        # One keep-alive pool per step host, each as large as the calls allowed in flight.
        adapter = requests.adapters.HTTPAdapter(pool_connections=100, pool_maxsize=max_in_flight)
        self._session.mount('http://', adapter)
        self._session.mount('https://', adapter)

    def close(self):
        self._session.close()

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
            # requests' own timeout bounds each socket operation; gevent.Timeout bounds the
            # whole call, so an answer trickled byte by byte cannot hold a greenlet.
            deadline = gevent.Timeout(timeout)
            deadline.start()
            try:
                with self._session.post(url, data=payload, headers=headers, timeout=timeout,
                                        stream=True, allow_redirects=False) as response:
                    return self._read(response), \
                        protocol.parse_retry_after(response.headers.get('Retry-After'))
            except gevent.Timeout as e:
                if e is not deadline:
                    raise
                return _failed('timeout', f'no answer within {timeout:.3g}s'), None
            except requests.Timeout as e:
                return _failed('timeout', f'no answer within {timeout:.3g}s ({type(e).__name__})'), None
            except requests.RequestException as e:
                return _failed('connection', f'{type(e).__name__}: {_reason(e)}'), None
            finally:
                deadline.close()

    def _read(self, response):
        status = response.status_code
        declared = response.headers.get('Content-Length', '')
        if declared.isdigit() and int(declared) > self.max_response_bytes:
            return _too_large(status, self.max_response_bytes)
        chunks, size = [], 0
        for chunk in response.iter_content(_CHUNK_BYTES):
            size += len(chunk)
            if size > self.max_response_bytes:
                return _too_large(status, self.max_response_bytes)
            chunks.append(chunk)
        body = b''.join(chunks)
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
    # requests wraps urllib3's errors, whose text repeats the pool and URL; the innermost
    # reason is what an operator needs ("Connection refused").
    reason = error
    while reason.__context__ is not None and reason.__context__ is not reason:
        reason = reason.__context__
    return str(reason) or type(reason).__name__
