"""bin/cameron-server as a user runs it: a real process, its flags, its start-up checks,
the demo workflow, and SIGTERM."""
import signal
import subprocess
import sys
import uuid

import gevent
import pytest

from cameron.config import FIELDS, flag_name

from .conftest import REDIS_URL, ROOT, SERVER, Reply, free_port, real_redis


def run(*args, timeout=20):
    return subprocess.run(SERVER + list(args), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


@pytest.fixture
def demo_server(servers):
    """A server running the shipped demo catalogue, moved to the server's own port."""
    def start(*args):
        port = free_port()
        catalogue = (ROOT / 'conf' / 'workflows.yaml').read_text() \
            .replace('127.0.0.1:8080', f'127.0.0.1:{port}')
        return servers(catalogue, '--demo', *args, port=port)
    return start


def test_help_lists_every_flag():
    result = run('--help')
    assert result.returncode == 0
    for name in FIELDS:
        assert flag_name(name) in result.stdout
    assert '--config PATH' in result.stdout and '--redis REDIS_URL' in result.stdout


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


def test_a_port_in_use_stops_start_up(demo_server):
    first = demo_server()
    result = run('--port', str(first.port))
    assert result.returncode == 1 and 'cannot listen on' in result.stderr


def test_the_server_refuses_to_run_unpatched():
    result = subprocess.run([sys.executable, '-c', 'import sys; from cameron.server import main;'
                             ' sys.exit(main([]))'], capture_output=True, text=True, timeout=20,
                            cwd=ROOT)
    assert result.returncode == 1 and 'patch_all' in result.stderr


def run_demo(server, key='42'):
    return server.record('demo', server.start('demo', key), wait=10)


def test_demo_on_the_embedded_store_then_sigterm(demo_server):
    server = demo_server()
    record = run_demo(server)
    assert record['status']['current'] == 'done'
    assert [(s['id'], s['name']) for s in record['steps']] == [
        ('1', 'start'), ('1-1', 'profile'), ('1-2', 'orders'), ('1-2-1', 'invoice'),
        ('1-2-1-1', 'receipt'), ('1-2-2', 'ship'), ('1-3', 'notify')]
    assert all(s['status']['current'] == 'done' for s in record['steps'])
    assert server.terminate() == 0
    log = server.log.read_text()
    assert 'embedded in-process store' in log and 'stopped' in log


def test_demo_on_real_redis_is_recorded_there(demo_server):
    client = real_redis()
    namespace = f'cameron-test-{uuid.uuid4().hex[:12]}'
    try:
        server = demo_server('--redis', REDIS_URL, '--namespace', namespace)
        record = run_demo(server, key='7')
        fields = client.hgetall(f'{namespace}:workflow:demo:ticket:{record["ticket"]}')
        assert fields['status.current'] == 'done' and fields['payload.key'] == '7'
        assert fields['step.1-2-1-1.name'] == 'receipt'
        assert fields['step.1-2-1-1.requestor'] == 'invoice'
        assert 0 < client.ttl(f'{namespace}:workflow:demo:ticket:{record["ticket"]}')
        assert server.terminate() == 0
        assert 'embedded' not in server.log.read_text()
        assert client.hgetall(f'{namespace}:processes') == {}  # a clean exit leaves the registry
    finally:
        for key in client.scan_iter(f'{namespace}:*'):
            client.delete(key)


def test_a_wait_in_flight_at_sigterm_gets_the_ticket_it_waits_for(servers, step_service):
    # The drain lets running tickets finish: a client waiting for one gets it, not a 500.
    step_service.routes['/start/k1'] = Reply(body={}, delay=2)
    server = servers({'slow': {'start_point_url': step_service.url('/start/{key}')}})
    ticket = server.start('slow', 'k1')
    waiting = gevent.spawn(server.record, 'slow', ticket, 15)
    gevent.sleep(0.5)
    server.process.send_signal(signal.SIGTERM)
    assert waiting.get(timeout=20)['status']['current'] == 'done'
    assert server.process.wait(timeout=30) == 0
