"""The bench scripts, run small so that they keep working: each must finish without
errors and print its JSON line. The figures themselves are not judged here."""
import json
import shutil
import subprocess
import sys

import pytest

from .conftest import IN_CI, ROOT

BENCH = ROOT / 'bench'


@pytest.fixture(autouse=True)
def needs_redis_server():
    if shutil.which('redis-server') is None:
        if IN_CI:
            pytest.fail('CI=true but redis-server is not installed')
        pytest.skip('the benches start a redis-server of their own')


@pytest.mark.parametrize('script, args', [
    ('fan7.py', ['--tickets', '30', '--concurrency', '10', '--runs', '2']),
    ('start_api.py', ['--seconds', '1', '--connections', '5', '--rounds', '1']),
    ('inflight.py', ['--tickets', '50', '--delay', '0.05', '--outgoing', '100']),
    ('two_processes.py', ['--seconds', '1', '--warmup', '0.5', '--concurrency', '10',
                          '--runs', '1']),
    ('two_processes.py', ['--seconds', '1', '--warmup', '0.5', '--concurrency', '10',
                          '--runs', '1', '--driver', 'python', '--helpers', 'normal']),
])
def test_bench_runs(script, args):
    result = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(result.stdout.splitlines()[-2])
    assert figures['bench'] == script.removesuffix('.py')
