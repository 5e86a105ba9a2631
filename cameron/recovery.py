"""Liveness: this process's heartbeat, and the recovery of tickets whose process died.

Every heartbeat_ttl / 3 seconds the process renews its heartbeat key and looks at the
registry of processes. A peer whose heartbeat is gone at two looks at least half a TTL
apart is taken for dead (one missed look may be a Redis outage that every process is just
coming out of); its processing lists are moved back to the incoming queues, where any
process takes them and resumes them. A death is so noticed within 2 x heartbeat_ttl.
"""
import logging
import time

import gevent
import gevent.event

from .errors import StoreUnavailable

log = logging.getLogger(__name__)


class Liveness:
    def __init__(self, store, process, workflows, heartbeat_ttl, on_requeued, on_presumed_dead,
                 clock=time.monotonic):
        self.store = store
        self.process = process
        self.workflows = sorted(workflows)
        self.ttl = heartbeat_ttl
        self._on_requeued = on_requeued  # called when tickets were put back in the queues
        self._on_presumed_dead = on_presumed_dead  # called when our own heartbeat had lapsed
        self._clock = clock
        self._suspects = {}  # process -> when its heartbeat was first seen gone
        self._stopped = gevent.event.Event()
        self._loop = None

    def start(self):
        """Put back what an earlier run with this process id left, beat, and keep beating.
        Call it before the dispatcher starts, so that nothing of ours is taken yet."""
        earlier, _ = self.store.processes().get(self.process, ([], False))
        self.store.beat(self.process, self.workflows, self.ttl)
        self._requeue(self.process, set(earlier) | set(self.workflows),
                      'an earlier run of this process')
        self._loop = gevent.spawn(self._run)

    def stop(self, clean):
        """Stop beating; with clean (nothing left running) leave the registry too."""
        self._stopped.set()
        if self._loop is not None:
            self._loop.join()
        if clean:
            self.store.forget_process(self.process)

    def run_once(self):
        if not self.store.beat(self.process, self.workflows, self.ttl):
            log.warning('process %s: heartbeat had lapsed; checking the tickets it runs',
                        self.process)
            self._on_presumed_dead()
        now = self._clock()
        for process, (workflows, alive) in self.store.processes().items():
            if alive or process == self.process:
                self._suspects.pop(process, None)
            elif now - self._suspects.setdefault(process, now) >= self.ttl / 2:
                self._recover(process, workflows)

    def _recover(self, process, workflows):
        # Its tickets go back to their queues even for workflows this process does not run:
        # a process that runs them will take them.
        self._requeue(process, workflows, f'process {process}, which stopped beating')
        self.store.forget_process(process)
        self._suspects.pop(process, None)

    def _requeue(self, process, workflows, whose):
        moved = self.store.requeue_tickets(process, sorted(workflows))
        if moved:
            log.warning('recovered %d tickets of %s: %s', len(moved), whose,
                        ' '.join(f'{w}/{t}' for w, t in moved))
            self._on_requeued()

    def _run(self):
        while not self._stopped.wait(self.ttl / 3):
            try:
                self.run_once()
            except StoreUnavailable as e:
                log.warning('heartbeat: %s', e)
            except Exception:
                log.exception('heartbeat: unexpected error')
