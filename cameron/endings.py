"""Waiting for tickets to end, for GET ...?wait=N: an Event per waiting request, set when
the ticket ends in this process (the dispatcher says so) or in another one (every finish
is published on the namespace's endings channel, which each process listens to)."""
import contextlib
import logging

import gevent
import gevent.event

from .errors import StoreUnavailable

log = logging.getLogger(__name__)
MAX_BACKOFF = 5.0  # seconds between tries to listen to a Redis that does not answer


class Endings:
    def __init__(self, store):
        self.store = store
        self._watchers = {}  # ticket -> set of Events
        self._listener = None
        self._backoff = 0.0
        self.listening = False  # subscribed now: news of every ending arrives

    @contextlib.contextmanager
    def watching(self, ticket):
        """An Event set when the ticket ends, while the block runs."""
        event = gevent.event.Event()
        self._watchers.setdefault(ticket, set()).add(event)
        try:
            yield event
        finally:
            events = self._watchers[ticket]
            events.discard(event)
            if not events:
                del self._watchers[ticket]

    def tell(self, ticket):
        for event in self._watchers.get(ticket, ()):
            event.set()

    def start(self):
        self._listener = gevent.spawn(self._listen)

    def stop(self):
        if self._listener is not None:
            self._listener.kill()

    def _listen(self):
        self._backoff = 0.0
        while True:
            try:
                self.store.listen_endings(self._told, self._subscribed)
            except StoreUnavailable as e:
                self.listening = False
                # Waiters still look at their tickets' status now and then meanwhile.
                self._backoff = min(max(self._backoff * 2, 0.1), MAX_BACKOFF)
                log.warning('endings: %s; listening again in %.1fs', e, self._backoff)
                gevent.sleep(self._backoff)

    def _subscribed(self):
        self.listening = True
        self._backoff = 0.0

    def _told(self, ticket):
        if ticket in self._watchers:
            self.tell(ticket)
