"""Start API throughput: sustained POST /api/workflow/{name}/start requests per second of
one Cameron process (API only, --no-dispatch, on a real Redis), against a bare
gevent.pywsgi server measured the same way in the same run; prints both and their ratio,
and the ratio of a bottle route that only parses the body (what bottle costs, on pywsgi's
own request handler).
The three are measured in turn, --rounds times, each time with fresh processes, and the
median of each round's ratio is reported: the machine's speed drifts between runs.
Usage: python bench/start_api.py [--seconds 10] [--connections 50] [--rounds 3]"""
import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time

import gevent.pool
import redis

import harness

POST_BODY = json.dumps({'key': '42', 'data': {'order': 42, 'lines': [1, 2, 3]}})


def load(url, seconds, connections):
    """Requests per second that `connections` clients get from url: wrk if installed,
    else a gevent driver (which costs more CPU itself, on the same machine)."""
    if shutil.which('wrk'):
        script = harness.WORK / 'post.lua'
        script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(POST_BODY)}\n'
                          'wrk.headers["Content-Type"] = "application/json"\n')
        out = subprocess.run(['wrk', '-t1', f'-c{connections}', f'-d{seconds}s', '-s',
                              str(script), url], capture_output=True, text=True).stdout
        if 'Requests/sec' not in out:
            raise SystemExit(f'wrk did not run: {out}')
        errors = re.search(r'Non-2xx or 3xx responses: (\d+)', out)
        return float(re.search(r'Requests/sec:\s+([\d.]+)', out).group(1)), \
            int(errors.group(1)) if errors else 0, 'wrk'
    done, errors = [0], [0]
    stop = time.monotonic() + seconds

    def client():
        while time.monotonic() < stop:
            try:
                status, _, _ = harness.call('POST', url, POST_BODY.encode(), timeout=30)
            except Exception:  # counted, as a failed start
                status = None
            done[0] += 1
            errors[0] += status != 201

    began = time.monotonic()
    gevent.pool.Pool(connections).map(lambda _: client(), range(connections))
    return done[0] / (time.monotonic() - began), errors[0], 'gevent driver'


def hello(seconds, connections, *flags):
    """(req/s, driver) of bench/hello.py started with flags."""
    port = harness.free_port()
    server = harness.spawn([sys.executable, str(harness.ROOT / 'bench' / 'hello.py'), str(port),
                            *flags], f'hello{"".join(flags)}')
    harness.wait_for_port(port, server)
    rate, _, driver = load(f'http://127.0.0.1:{port}/api/workflow/bench/start', seconds,
                           connections)
    server.terminate()
    server.wait()
    return rate, driver


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--seconds', type=int, default=10)
    parser.add_argument('--connections', type=int, default=50)
    parser.add_argument('--rounds', type=int, default=3)
    args = parser.parse_args()
    redis_url = harness.start_redis()
    catalogue = harness.write_catalogue('http://127.0.0.1:9', 'bench')
    rounds = [measure(redis_url, catalogue, args.seconds, args.connections)
              for _ in range(args.rounds)]
    figures = {name: round(statistics.median(r[name] for r in rounds), 3) for name in
               ('starts_per_s', 'hello_per_s', 'ratio', 'bottle_per_s', 'bottle_ratio')}
    figures.update(errors=sum(r['errors'] for r in rounds), driver=rounds[0]['driver'],
                   connections=args.connections, seconds=args.seconds, rounds=rounds)
    spread = ', '.join(f"{r['ratio']:.2f}" for r in rounds)
    harness.report('start_api', figures,
                   f"ratio {figures['ratio']:.2f} of a bare gevent.pywsgi server (goal >= 0.6; "
                   f"each round: {spread}; a bottle route alone {figures['bottle_ratio']:.2f}); "
                   f"{figures['starts_per_s']:.0f} starts/s, {figures['hello_per_s']:.0f} req/s "
                   f"of the bare server (medians of {args.rounds} rounds), {figures['errors']} "
                   f"errors, load by {figures['driver']}")
    return 1 if figures['errors'] else 0


def measure(redis_url, catalogue, seconds, connections):
    """One round: the bare server, the bottle route, then Cameron, each under the same load,
    on a Redis emptied of the last round's tickets."""
    redis.Redis.from_url(redis_url).flushdb()  # the bench's own Redis
    baseline, driver = hello(seconds, connections)
    framework, _ = hello(seconds, connections, '--bottle')
    cameron, base = harness.start_cameron(redis_url, catalogue, '--no-dispatch')
    starts, errors, _ = load(f'{base}/api/workflow/bench/start', seconds, connections)
    cameron.terminate()
    cameron.wait()
    return {'starts_per_s': round(starts, 1), 'hello_per_s': round(baseline, 1),
            'ratio': round(starts / baseline, 3), 'bottle_per_s': round(framework, 1),
            'bottle_ratio': round(framework / baseline, 3), 'errors': errors, 'driver': driver}


if __name__ == '__main__':
    raise SystemExit(main())
