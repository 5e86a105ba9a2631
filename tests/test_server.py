"""bin/cameron-server as a user runs it: a real process, its flags, its start-up checks,
the demo workflow, and SIGTERM."""
import pathlib
import signal
import subprocess
import sys
import time
import uuid

import pytest
import requests

from cameron.config import FIELDS, flag_name

from .conftest import REDIS_URL, free_port, real_redis

ROOT = pathlib.Path(__file__).resolve().parent.parent
SERVER = [sys.executable, str(ROOT / 'bin' / 'cameron-server')]


def run(*args, timeout=20):
    return subprocess.run(SERVER + list(args), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


class Server:
    """A cameron-server process on a free port, serving the demo workflow."""

    def __init__(self, tmp_path, *args):
        self.port = free_port()
        self.base = f'http://127.0.0.1:{self.port}'
        catalogue = tmp_path / 'workflows.yaml'
        catalogue.write_text((ROOT / 'conf' / 'workflows.yaml').read_text()
                             .replace('127.0.0.1:8080', f'127.0.0.1:{self.port}'))
        self.log = tmp_path / 'server.log'
        with open(self.log, 'w') as log:
            self.process = subprocess.Popen(
                SERVER + ['--port', str(self.port), '--workflows', str(catalogue), *args],
                stderr=log, cwd=ROOT)
        self._wait_until_up()

    def _wait_until_up(self):
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                requests.get(f'{self.base}/api/health', timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.05)
        raise AssertionError(f'the server did not start: {self.log.read_text()}')

    def run_demo(self, key='42'):
        started = requests.post(f'{self.base}/api/workflow/demo/start',
                                data=f'{{"key": "{key}"}}', timeout=5)
        assert started.status_code == 201, started.text
        return requests.get(f'{self.base}{started.headers["Location"]}?wait=10', timeout=15).json()

    def terminate(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=40)


@pytest.fixture
def server(tmp_path):
    started = []

    def start(*args):
        started.append(Server(tmp_path, *args))
        return started[-1]

    yield start
    for process in started:
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait()


def test_help_lists_every_flag():
    result = run('--help')
    assert result.returncode == 0
    for name in FIELDS:
        assert flag_name(name) in result.stdout
    assert '--config' in result.stdout and '--redis' in result.stdout


def test_a_bad_catalogue_stops_start_up_naming_file_workflow_and_problem(tmp_path):
    catalogue = tmp_path / 'broken.yaml'
    catalogue.write_text('workflows:\n  bar:\n    start_point_url: ftp://foo.com/{key}\n')
    result = run('--workflows', str(catalogue), '--port', str(free_port()))
    assert result.returncode == 1
    assert f"{catalogue}: workflow 'bar': start_point_url must be an http or https URL" \
        in result.stderr
    assert 'Traceback' not in result.stderr


def test_a_bad_setting_stops_start_up_naming_its_source():
    result = run('--port', 'eighty')
    assert result.returncode == 1
    assert "--port: port must be a whole number, not 'eighty'" in result.stderr


def test_an_unreachable_redis_stops_start_up():
    result = run('--redis', f'redis://127.0.0.1:{free_port()}/0', '--port', str(free_port()))
    assert result.returncode == 1
    assert 'cannot reach Redis at' in result.stderr and 'Traceback' not in result.stderr


def test_the_server_refuses_to_run_unpatched():
    result = subprocess.run([sys.executable, '-c', 'import sys; from cameron.server import main;'
                             ' sys.exit(main([]))'], capture_output=True, text=True, timeout=20,
                            cwd=ROOT)
    assert result.returncode == 1 and 'patch_all' in result.stderr


def test_demo_on_the_embedded_store_then_sigterm(server):
    process = server('--demo')
    record = process.run_demo()
    assert record['status']['current'] == 'done'
    assert [(s['id'], s['name']) for s in record['steps']] == [
        ('1', 'start'), ('1-1', 'profile'), ('1-2', 'orders'), ('1-2-1', 'invoice'),
        ('1-2-1-1', 'receipt'), ('1-2-2', 'ship'), ('1-3', 'notify')]
    assert all(s['status']['current'] == 'done' for s in record['steps'])
    assert process.terminate() == 0
    log = process.log.read_text()
    assert 'embedded in-process store' in log and 'stopped' in log


def test_demo_on_real_redis_is_recorded_there(server):
    client = real_redis()
    namespace = f'cameron-test-{uuid.uuid4().hex[:12]}'
    try:
        process = server('--demo', '--redis', REDIS_URL, '--namespace', namespace)
        record = process.run_demo(key='7')
        fields = client.hgetall(f'{namespace}:workflow:demo:ticket:{record["ticket"]}')
        assert fields['status.current'] == 'done' and fields['payload.key'] == '7'
        assert fields['step.1-2-1-1.name'] == 'receipt'
        assert fields['step.1-2-1-1.requestor'] == 'invoice'
        assert 0 < client.ttl(f'{namespace}:workflow:demo:ticket:{record["ticket"]}')
        assert process.terminate() == 0
        assert 'embedded' not in process.log.read_text()
    finally:
        for key in client.scan_iter(f'{namespace}:*'):
            client.delete(key)
