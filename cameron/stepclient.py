"""Calls to step services: a pool of keep-alive connections per host, a bound on calls in
flight, a hard deadline per attempt, a cap on answer size, and retries with backoff.

It uses geventhttpclient, whose parser is written in C: bench/fan7.py measured a POST at
about 160 µs of CPU with it against 650 µs with urllib3 and more with requests, and the HTTP
client was the largest single cost of a step."""
import dataclasses
import json
import logging
import math
import time

import gevent
import gevent.lock
from geventhttpclient import HTTPClient, URL
from geventhttpclient.response import HTTPParseError

from . import __version__, protocol

log = logging.getLogger(__name__)
MAX_HOSTS = 100  # step hosts whose connections are kept; past that the oldest are closed
SOCKET_TIMEOUT = 600  # per socket operation; the real bound is each attempt's deadline


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
        self.max_in_flight = max_in_flight
        self._slots = gevent.lock.BoundedSemaphore(max_in_flight)
        self._hosts = {}  # (scheme, host, port) -> HTTPClient, oldest first

    def close(self):
        for client in self._hosts.values():
            client.close()
        self._hosts.clear()

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
            deadline.start()
            location = URL(url)
            client = self._client(location)
            response = None
            try:
                response = client.post(location.request_uri, body=payload, headers=headers)
                return self._read(response), protocol.parse_retry_after(response.get('retry-after'))
            except gevent.Timeout as e:
                if e is not deadline:
                    raise
                if response is None:
                    # Cut off while sending, the client may not have given its socket back:
                    # start this host afresh rather than leak a place in its pool.
                    self._forget(location, client)
                return _failed('timeout', f'no answer within {timeout:.3g}s'), None
            except (OSError, HTTPParseError) as e:
                return _failed('connection', f'{type(e).__name__}: {_reason(e)}'), None
            finally:
                deadline.close()
                if response is not None:
                    response.release()  # back to the pool, or closed if not read to the end

    def _client(self, location):
        key = (location.scheme, location.host, location.port)
        client = self._hosts.get(key)
        if client is None:
            if len(self._hosts) >= MAX_HOSTS:
                self._hosts.pop(next(iter(self._hosts))).close()
            client = self._hosts[key] = HTTPClient.from_url(
                location, concurrency=self.max_in_flight, connection_timeout=SOCKET_TIMEOUT,
                network_timeout=SOCKET_TIMEOUT, headers={'User-Agent': f'cameron/{__version__}'})
        return client

    def _forget(self, location, client):
        if self._hosts.get((location.scheme, location.host, location.port)) is client:
            del self._hosts[location.scheme, location.host, location.port]
        client.close()

    def _read(self, response):
        status = response.status_code
        length = response.content_length
        if length is not None and length > self.max_response_bytes:
            return _too_large(status, self.max_response_bytes)
        body = response.read(self.max_response_bytes + 1)
        if len(body) > self.max_response_bytes:
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
    # The innermost reason is what an operator needs ("Connection refused").
    reason = error
    while reason.__context__ is not None and reason.__context__ is not reason:
        reason = reason.__context__
    return str(reason) or type(reason).__name__
