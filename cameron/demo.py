"""An example step service, served under /demo/ when the config says demo: true, so that the
demo workflow in conf/workflows.yaml runs right after start-up. It shows each part of the
step protocol: a parallel fan-out, a sequential chain, a nested step, relative next URLs and
data passed from step to step.

    start ──┬─ profile
            ├─ orders ── (in order) ─┬─ invoice ── receipt
            └─ notify                └─ ship
"""
import random

import bottle
import gevent

_NEXT = {
    'start': ([('profile', 'profile/{key}'), ('orders', 'orders/{key}'),
               ('notify', 'notify/{key}')], 'yes'),
    'orders': ([('invoice', 'invoice/{key}'), ('ship', 'ship/{key}')], 'no'),
    'invoice': ([('receipt', 'receipt/{key}')], 'yes'),
}
STEPS = ('start', 'profile', 'orders', 'notify', 'invoice', 'ship', 'receipt')


def make_app():
    app = bottle.Bottle()

    @app.post('/<step>/<key>')
    def step(step, key):
        if step not in STEPS:
            raise bottle.HTTPError(404, 'no such demo step')
        request = bottle.request.json or {}
        gevent.sleep(random.uniform(0.01, 0.05))  # pretend to do some work
        next_steps, parallel = _NEXT.get(step, ([], 'yes'))
        received = request.get('data') or {}
        return {'name': step,
                # What this step was handed shows the pipeline: its parent's data.
                'data': {'step': step, 'key': key, 'requestor': request.get('requestor'),
                         'handed': received.get('step')},
                # Relative URLs resolve against this step's own URL, .../demo/{step}/{key}.
                'next': [{'name': name, 'url': f'../{url}'} for name, url in next_steps],
                'parallel': parallel}

    return app
