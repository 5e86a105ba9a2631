"""Whether a kept connection can carry the next request: a look at its socket that must
not wait. With the real poll: gevent's goes round the event loop even with a zero timeout,
which cost more than the rest of a Redis round trip."""
import select
import ssl

from gevent import monkey

_poll = monkey.get_original('select', 'poll')


def watch(sock):
    """A poller for quiet(), made once per socket."""
    poller = _poll()
    poller.register(sock.fileno(), select.POLLIN)
    return poller


def quiet(sock, poller):
    """True if nothing waits to be read on sock: the peer has neither sent nor closed."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return False
    return not poller.poll(0)
