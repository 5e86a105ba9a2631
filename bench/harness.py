"""What every bench script needs: free ports, a Redis, a step server, Cameron as a real
process, /proc readings, and a load driver. Everything runs on 127.0.0.1 and is stopped by
PID when the script ends."""
from gevent import monkey

monkey.patch_all()

import atexit  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import gevent.pool  # noqa: E402
import redis  # noqa: E402
import yaml  # noqa: E402
from cameron.httpclient import HTTPClient  # noqa: E402

from workload import FAN7, STEPS_PER_TICKET  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
WORK = pathlib.Path(tempfile.mkdtemp(prefix='cameron-bench-'))
CLOCK_TICKS = os.sysconf('SC_CLK_TCK')
_started = []


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


_helper_prefix = []  # what a helper's command is started under: see run_helpers_in_batch


def spawn(command, name, helper=False, **kwargs):
    """A process whose output goes to WORK/name.log, stopped (by PID) at exit. A helper
    (Redis, a step server, a load driver) is started as run_helpers_in_batch() says."""
    log = open(WORK / f'{name}.log', 'w')
    if helper:
        command = [*_helper_prefix, *command]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **kwargs)
    process.part = name.split('-')[0]  # what it is: redis, nginx, wrk, cameron0...
    _started.append(process)
    return process


def run_helpers_in_batch():
    """Start the helpers from now on under SCHED_BATCH (chrt --batch 0). Where they share
    every core with the Cameron processes, the kernel otherwise runs a helper ahead of a
    running Cameron process each time a request wakes it: one wake-up per request, and a
    Cameron process interrupted for each. Under SCHED_BATCH a helper waits its turn and
    then takes what came meanwhile, more as it would on a machine of its own."""
    if shutil.which('chrt') is None:
        raise SystemExit('chrt (util-linux) is needed to run the helpers in batch')
    _helper_prefix[:] = ['chrt', '--batch', '0']


def cpu_of_parts():
    """{part: CPU seconds used so far} of the processes this script started and that still
    run, each with its children (nginx's worker)."""
    parts = {}
    for process in _started:
        if process.poll() is None:
            pids = [process.pid, *_children(process.pid)]
            parts[process.part] = parts.get(process.part, 0) + sum(map(cpu_seconds, pids))
    return parts


def _children(pid):
    try:
        return [int(child) for child in
                pathlib.Path(f'/proc/{pid}/task/{pid}/children').read_text().split()]
    except OSError:  # gone, or a kernel without the file
        return []


@atexit.register
def _stop_all():
    for process in reversed(_started):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    shutil.rmtree(WORK, ignore_errors=True)


def wait_for_port(port, process, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f'{process.part} exited: see {WORK}')
        try:
            socket.create_connection(('127.0.0.1', port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f'nothing listens on {port} after {timeout}s')


def start_redis():
    if shutil.which('redis-server') is None:
        raise SystemExit('redis-server is needed (apt-get install redis-server)')
    port = free_port()
    process = spawn(['redis-server', '--port', str(port), '--bind', '127.0.0.1', '--save', '',
                     '--appendonly', 'no'], f'redis-{port}', helper=True)
    wait_for_port(port, process)
    return f'redis://127.0.0.1:{port}/0'




def start_fast_steps():
    """nginx answering each fan7 step from memory (a step server that is not the
    bottleneck), or, without nginx, a gevent one. Returns (base URL, kind)."""
    port = free_port()
    nginx = shutil.which('nginx') or ('/usr/sbin/nginx' if os.path.exists('/usr/sbin/nginx') else None)
    if nginx is None:
        return start_slow_steps(delay=0), 'gevent (nginx not installed)'
    locations = '\n'.join(
        f"    location /{name}/ {{ return 200 '{json.dumps(answer)}'; }}"
        for name, answer in FAN7.items())
    conf = WORK / 'nginx.conf'
    conf.write_text(f'''
worker_processes 1;
daemon off;
pid {WORK}/nginx.pid;
error_log {WORK}/nginx-error.log;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  default_type application/json;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_body_buffer_size 16k;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
{locations}
  }}
}}
''')
    process = spawn([nginx, '-p', str(WORK), '-c', str(conf)], 'nginx', helper=True)
    wait_for_port(port, process)
    return f'http://127.0.0.1:{port}', 'nginx'


def start_slow_steps(delay):
    """A gevent step server answering each fan7 step after `delay` seconds."""
    port = free_port()
    process = spawn([sys.executable, str(ROOT / 'bench' / 'slow_steps.py'), str(port), str(delay)],
                    'slow-steps', helper=True)
    wait_for_port(port, process)
    return f'http://127.0.0.1:{port}'


def write_catalogue(step_base, name='fan7'):
    path = WORK / f'workflows-{name}.yaml'
    path.write_text(yaml.safe_dump({'workflows': {name: {
        'start_point_url': f'{step_base}/start/{{key}}', 'retries': 0, 'step_timeout': 60}}}))
    return path


def start_cameron(redis_url, catalogue, *flags, name='cameron'):
    """bin/cameron-server as a user runs it. Returns (process, base URL)."""
    port = free_port()
    command = [sys.executable, str(ROOT / 'bin' / 'cameron-server'), '--redis', redis_url,
               '--port', str(port), '--workflows', str(catalogue), '--no-demo',
               '--log-level', 'warning', *flags]
    process = spawn(command, f'{name}-{port}', cwd=ROOT)
    wait_for_port(port, process)
    return process, f'http://127.0.0.1:{port}'


def cpu_seconds(pid):
    """User + system CPU time the process has used, from /proc."""
    fields = pathlib.Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def peak_rss_kib(pid):
    for line in pathlib.Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmHWM:'):
            return int(line.split()[1])
    return 0


def rss_kib(pid):
    for line in pathlib.Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1])
    return 0


# The load driver shares the machine with what it measures, so it uses the leanest client
# at hand: Cameron's own (with requests the driver took six times the CPU per step).
_http = HTTPClient(user_agent='cameron-bench')


def call(method, url, body=b'', timeout=60):
    """One request on a kept connection: (HTTP status, headers, body). A TimeoutError past
    `timeout` seconds, counted with the other failures."""
    headers = {'Content-Type': 'application/json'} if body else {}
    with gevent.Timeout(timeout, TimeoutError):
        response = _http.request(method, url, body, headers, max_body=1 << 24)
    return response.status, response.headers, response.body


def run_tickets(bases, workflow, count, concurrency, wait=60):
    """Start `count` tickets (round robin over the servers at `bases`), each followed by a
    ?wait= read, at most `concurrency` at once. Returns (latencies, errors, wall seconds)."""
    latencies, errors = [], []
    pool = gevent.pool.Pool(concurrency)
    began = time.monotonic()
    pool.map(lambda i: _run_ticket(bases[i % len(bases)], workflow, f'k{i}', wait, latencies,
                                   errors), range(count))
    _tell(errors)
    return latencies, errors, time.monotonic() - began


def _run_ticket(base, workflow, key, wait, latencies, errors):
    """Start a ticket and wait for its end; its latency or its failure goes in the lists."""
    started = time.monotonic()
    try:
        _, headers, _ = call('POST', f'{base}/api/workflow/{workflow}/start',
                             json.dumps({'key': key}).encode(), timeout=30)
        _, _, body = call('GET', f'{base}{headers["location"]}?wait={wait}', timeout=wait + 30)
        record = json.loads(body)
    except Exception as e:  # a bench reports failures; it does not stop at the first
        errors.append(repr(e))
        return
    if record.get('status', {}).get('current') != 'done' \
            or len(record['steps']) != STEPS_PER_TICKET:
        errors.append(record)
        return
    latencies.append(time.monotonic() - started)


def _tell(errors):
    if errors:
        print(f'{len(errors)} failed tickets; the first: {str(errors[0])[:500]}', file=sys.stderr)


def drive(bases, workflow, seconds, concurrency, driver=None):
    """Keep `concurrency` clients, shared among the servers at `bases`, starting tickets and
    waiting for each, for `seconds`. The driver is wrk (the default where installed), at a
    small part of the CPU a Python client takes, which would share the machine with what it
    measures; or 'python'. Returns a greenlet whose value is the count of failed tickets."""
    if (driver or default_driver()) == 'python':
        return gevent.spawn(_drive_in_python, bases, workflow, seconds, concurrency)
    script = ROOT / 'bench' / 'fan7.lua'
    start = f'/api/workflow/{workflow}/start'
    drivers = []
    for i, base in enumerate(bases):
        command = ['wrk', '-t1', f'-c{max(1, concurrency // len(bases))}',
                   f'-d{math.ceil(seconds)}s', '--timeout', '90s', '-s', str(script), base,
                   '--', start, str(STEPS_PER_TICKET)]
        drivers.append((spawn(command, f'wrk-{i}', helper=True), WORK / f'wrk-{i}.log'))
    return gevent.spawn(_failed_in_wrk, drivers)


def default_driver():
    return 'wrk' if shutil.which('wrk') else 'python'


def _failed_in_wrk(drivers):
    """The failed tickets and socket errors that the wrk processes report, once all ended."""
    failed = 0
    for process, log in drivers:
        process.wait()
        output = log.read_text()
        counts = re.search(r'tickets done (\d+) failed (\d+)', output)
        if process.returncode or counts is None:
            raise SystemExit(f'wrk failed: {output}')
        socket_errors = re.search(r'Socket errors: (.*)', output)
        failed += int(counts.group(2)) + sum(
            int(n) for n in re.findall(r'\d+', socket_errors.group(1) if socket_errors else ''))
    return failed


def _drive_in_python(bases, workflow, seconds, concurrency):
    """Each client starts a ticket and waits for it, again and again, until the time is up."""
    deadline = time.monotonic() + seconds
    errors = []

    def client(c):
        for i in itertools.count():
            if time.monotonic() >= deadline:
                return
            _run_ticket(bases[c % len(bases)], workflow, f'c{c}-{i}', 60, [], errors)

    gevent.pool.Pool(concurrency).map(client, range(concurrency))
    _tell(errors)
    return len(errors)


def tickets_ended(redis_url):
    """How many tickets have ended so far on the Redis at redis_url, in every process: each
    ending is one PUBLISH on the namespace's endings channel, and nothing else publishes."""
    stats = redis.Redis.from_url(redis_url).info('commandstats')
    return stats.get('cmdstat_publish', {}).get('calls', 0)


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] if ordered else None


def cpu_reference():
    """Seconds of CPU a fixed pure-Python loop takes now, the best of three: on a shared or
    virtual machine the CPU's speed drifts (by 2x, seen on the machine of the README's
    figures), and figures taken at different times compare only beside this one."""
    best = None
    for _ in range(3):
        began = time.process_time()
        total = 0
        for i in range(1_000_000):
            total += i * i
        spent = time.process_time() - began
        best = spent if best is None else min(best, spent)
    return round(best, 3)


def report(name, figures, summary):
    """One JSON line for machines, then a line for people."""
    reference = cpu_reference()
    print(json.dumps({'bench': name, **figures, 'cpu_reference_s': reference}), flush=True)
    print(f'{name}: {summary} [CPU reference loop {reference} s]', flush=True)
