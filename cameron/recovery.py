"""Liveness: this process's heartbeat and lease, and the recovery of tickets whose process
died.

Every heartbeat_ttl / 3 seconds the process renews its heartbeat key, has the dispatcher
reconcile what runs here with what this process holds in Redis, and looks at the registry
of processes. A peer whose heartbeat is gone at two looks at least half a TTL apart is taken
for dead (one missed look may be a Redis outage that every process is just coming out of);
its processing lists are moved back to the incoming queues, where any process takes them
and resumes them. A death is so noticed within 2 x heartbeat_ttl.

The other side of that rule is the lease: a process whose heartbeat Redis has not renewed
for LEASE x heartbeat_ttl stops its tickets and takes no more until it has, so a peer can
never recover a ticket that is still running.
"""
import logging
import time

import gevent
import gevent.event

from .errors import StoreUnavailable

log = logging.getLogger(__name__)
LEASE = 0.8  # of heartbeat_ttl: before the heartbeat key can expire, and peers act on it


class Liveness:
    def __init__(self, store, process, workflows, heartbeat_ttl, dispatcher,
                 clock=time.monotonic):
        self.store = store
        self.process = process
        self.workflows = sorted(workflows)
        self.ttl = heartbeat_ttl
        self.dispatcher = dispatcher
        self._clock = clock
        self._suspects = {}  # process -> when its heartbeat was first seen gone
        self._lapse_unreconciled = False
        self._last_beat = clock()  # when the last beat that Redis confirmed was sent
        self._lease_lost = False
        self._stopped = gevent.event.Event()
        self._greenlets = []

    def start(self):
        """Put back what an earlier run with this process id left, beat, and keep beating.
        Call it before the dispatcher starts, so that nothing of ours is taken yet."""
        earlier, _ = self.store.processes().get(self.process, ([], False))
        self._beat()
        self._requeue(self.process, set(earlier) | set(self.workflows),
                      'an earlier run of this process')
        self._greenlets = [gevent.spawn(self._run), gevent.spawn(self._guard_lease)]

    def stop(self):
        """Stop beating, put back in the queues whatever this process still holds, for any
        process to resume, and leave the registry. Call it once the dispatcher has stopped.
        If Redis fails meanwhile, the registry keeps this process, and peers recover it."""
        self._stopped.set()
        gevent.joinall(self._greenlets, timeout=5)  # a hung Redis call must not hold the exit
        gevent.killall(self._greenlets)
        self._requeue(self.process, self.workflows, 'this process, stopping')
        self.store.forget_process(self.process)

    def run_once(self):
        if not self._beat():
            log.warning('process %s: heartbeat had lapsed', self.process)
            self._lapse_unreconciled = True  # until a reconcile gets through, after Redis errors
        self.dispatcher.reconcile(self._lapse_unreconciled)
        self._lapse_unreconciled = False
        now = self._clock()
        for process, (workflows, alive) in self.store.processes().items():
            if alive or process == self.process:
                self._suspects.pop(process, None)
            elif now - self._suspects.setdefault(process, now) >= self.ttl / 2:
                self._recover(process, workflows)

    def _beat(self):
        """Renew the heartbeat; False if it had lapsed (or this is the first)."""
        sent = self._clock()  # the key expires a TTL after Redis set it, so after this
        renewed = self.store.beat(self.process, self.workflows, self.ttl)
        self._last_beat = sent
        if self._lease_lost:
            # Nothing runs here since the lease was lost: what this process still holds
            # goes back to the queues, for whichever process to resume. The lease counts as
            # back only if this beat itself came in time.
            self._requeue(self.process, self.workflows, 'this process, back from a lapse')
            if self._clock() - sent <= LEASE * self.ttl:
                self._lease_lost = False
                self.dispatcher.resume()
        return renewed

    def _guard_lease(self):
        while not self._stopped.wait(self.ttl / 10):
            if not self._lease_lost and self._clock() - self._last_beat > LEASE * self.ttl:
                self._lease_lost = True
                log.warning('process %s: Redis has not confirmed this process alive for %.1fs;'
                            ' its tickets stop until it does', self.process,
                            self._clock() - self._last_beat)
                self.dispatcher.suspend()

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
            self.dispatcher.notify()

    def _run(self):
        while not self._stopped.wait(self.ttl / 3):
            try:
                self.run_once()
            except StoreUnavailable as e:
                log.warning('heartbeat: %s', e)
            except Exception:
                log.exception('heartbeat: unexpected error')
