"""Server settings: defaults, then conf/cameron.yaml, then CAMERON_* variables, then flags.

Every setting is a field of Config below; its flag is --the-name-with-dashes (--redis for
redis_url) and its variable CAMERON_THE_NAME. A value that cannot be used stops start-up with
one line naming where it came from.
"""
import argparse
import dataclasses
import math
import os
import re

import yaml

from .errors import ConfigError

DEFAULT_CONFIG_PATH = 'conf/cameron.yaml'
MIB = 1024 * 1024
# The store keeps up to 4 connections for its batches (store._Connections.KEPT) and one
# listens for endings; the rest serve heartbeats, health checks, idempotent starts and
# recovery, and more batches at once. Fewer would leave those waiting on one another.
MIN_REDIS_CONNECTIONS = 8


def _setting(default, help):
    return dataclasses.field(default=default, metadata={'help': help})


@dataclasses.dataclass(frozen=True)
class Config:
    workflows: str = _setting('conf/workflows.yaml', 'the workflow catalogue file')
    host: str = _setting('127.0.0.1', 'address the API listens on')
    port: int = _setting(8080, 'port the API listens on')
    redis_url: str = _setting(None, 'Redis URL, e.g. redis://127.0.0.1:6379/0; '
                                    'unset: an in-process store that is lost at exit')
    namespace: str = _setting('cameron', 'prefix of every Redis key Cameron writes')
    log_level: str = _setting('info', 'debug, info, warning or error')
    demo: bool = _setting(False, 'serve the example step service under /demo/')
    dispatch: bool = _setting(True, 'take and run tickets; --no-dispatch serves the API only, '
                                    'for tickets that other processes run')
    max_request_bytes: int = _setting(MIB, 'largest start request body; larger: 413')
    max_response_bytes: int = _setting(MIB, 'largest step answer; larger fails the step')
    body_timeout: float = _setting(30.0, 'seconds a client has to send a request body; '
                                         'slower: 408')
    step_timeout: float = _setting(10.0, 'seconds for one step call, default per workflow')
    retries: int = _setting(2, 'extra attempts on connection error, timeout, 5xx or 429')
    retry_backoff: float = _setting(0.2, 'seconds before the first retry; doubles each time')
    max_steps: int = _setting(1000, 'most steps one ticket may run, default per workflow')
    max_running_tickets: int = _setting(10_000, 'tickets run at once; the rest wait in Redis')
    max_outgoing_requests: int = _setting(1000, 'step calls in flight at once')
    redis_connections: int = _setting(200, 'most connections to Redis at once')
    max_connections: int = _setting(5000, 'API connections served at once; more wait in the '
                                          'listen backlog until one closes')
    poll_interval: float = _setting(1.0, 'seconds between looks at the queues when idle, '
                                         'for tickets started through other processes')
    max_fanout: int = _setting(100, 'most next steps one step answer may name')
    drain_timeout: float = _setting(30.0, 'seconds running tickets get to finish on SIGTERM')
    ticket_ttl: int = _setting(7 * 24 * 3600, 'seconds a finished ticket is kept')
    heartbeat_ttl: float = _setting(15.0, 'seconds a process counts as alive after its last '
                                          'heartbeat; a dead one is recovered within twice that')
    process_id: str = _setting(None, 'this process in Redis; unset: host:port, which a '
                                     'restart on the same port keeps')
    api_tokens: tuple = _setting((), 'comma-separated bearer tokens; when set, every /api/ '
                                     'route but health needs one')


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
LOG_LEVELS = ('debug', 'info', 'warning', 'error')
_FLAG_NAMES = {'redis_url': 'redis'}


def flag_name(name):
    return '--' + _FLAG_NAMES.get(name, name).replace('_', '-')


def env_name(name):
    return 'CAMERON_' + name.upper()


def parser():
    """The command line: --config plus one flag per setting, none with a default of its own,
    so that only flags actually given override the file and the environment."""
    p = argparse.ArgumentParser(
        prog='cameron-server', argument_default=argparse.SUPPRESS,
        description='Run the Cameron workflow server. Each flag overrides the variable '
                    'named in its help, which overrides the config file.')
    p.add_argument('--config', metavar='PATH',
                   help=f'settings file (CAMERON_CONFIG; default {DEFAULT_CONFIG_PATH})')
    for name, f in FIELDS.items():
        text = f"{f.metadata['help']} ({env_name(name)}; default {f.default})"
        if f.default is False or f.default is True:
            p.add_argument(flag_name(name), dest=name, help=text,
                           action=argparse.BooleanOptionalAction)
        else:
            p.add_argument(flag_name(name), dest=name, help=text, metavar=name.upper())
    return p


def load_config(argv, environ):
    """The Config for these arguments and environment; ConfigError names the bad source."""
    flags = vars(parser().parse_args(argv))
    path = flags.pop('config', None) or environ.get('CAMERON_CONFIG')
    raw = {}
    for name, value in _read_file(path or DEFAULT_CONFIG_PATH, required=bool(path)).items():
        raw[name] = (value, path or DEFAULT_CONFIG_PATH)
    for name in FIELDS:
        if env_name(name) in environ:
            raw[name] = (environ[env_name(name)], env_name(name))
    for name, value in flags.items():
        raw[name] = (value, flag_name(name))
    config = Config(**{name: _convert(name, value, source)
                       for name, (value, source) in raw.items()})
    _check(config, {name: source for name, (_, source) in raw.items()})
    return config


def _read_file(path, required):
    if not os.path.exists(path):
        if required:
            raise ConfigError(f'{path}: no such file')
        return {}
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f'{path}: cannot read it: {e}') from None
    if not isinstance(values, dict):
        raise ConfigError(f'{path}: expected a mapping of settings')
    for name in values:
        if name not in FIELDS:
            raise ConfigError(f'{path}: unknown setting {name!r}')
    return values


def _convert(name, value, source):
    """Turn a value from YAML (typed) or from a variable or flag (text) into the field's type."""
    default = FIELDS[name].default
    if default is None:  # optional text: empty means unset
        return str(value) if value not in (None, '') else None
    if isinstance(default, tuple):  # a YAML list, or text separated by commas
        items = value.split(',') if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f'{source}: {name} must be a list of text')
        return tuple(i.strip() for i in items if i.strip())
    try:
        if isinstance(default, bool):
            return _to_bool(value)
        if isinstance(default, int):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if not isinstance(value, (str, int, float)):
            raise ValueError
        return str(value)
    except (TypeError, ValueError):
        kind = {bool: 'boolean', int: 'whole number', float: 'number'}.get(type(default), 'text')
        raise ConfigError(f'{source}: {name} must be a {kind}, not {value!r}') from None


def _to_bool(value):
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ('1', 'true', 'yes', 'on'):
        return True
    if text in ('0', 'false', 'no', 'off'):
        return False
    raise ValueError


def _check(config, sources):
    def fail(name, problem):
        where = sources.get(name, 'default')
        raise ConfigError(f'{where}: {name} {problem}')

    if not 0 <= config.port <= 65535:
        fail('port', 'must be between 0 and 65535')
    if not re.fullmatch(r'[A-Za-z0-9_.-]+', config.namespace):
        fail('namespace', 'may hold only letters, digits, _ . and -')
    if config.process_id is not None and not re.fullmatch(r'[A-Za-z0-9_.:-]+', config.process_id):
        fail('process_id', 'may hold only letters, digits, _ . : and -')
    if config.log_level not in LOG_LEVELS:
        fail('log_level', f'must be one of {", ".join(LOG_LEVELS)}')
    for name in ('max_request_bytes', 'max_response_bytes', 'step_timeout', 'max_steps',
                 'max_running_tickets', 'max_outgoing_requests', 'redis_connections',
                 'max_connections', 'poll_interval', 'max_fanout', 'ticket_ttl',
                 'heartbeat_ttl', 'body_timeout'):
        if not 0 < getattr(config, name) < math.inf:  # NaN fails too
            fail(name, 'must be above 0 and finite')
    if config.redis_connections < MIN_REDIS_CONNECTIONS:
        fail('redis_connections', f'must be at least {MIN_REDIS_CONNECTIONS}')
    for name in ('retries', 'retry_backoff', 'drain_timeout'):
        if not 0 <= getattr(config, name) < math.inf:
            fail(name, 'must be 0 or more and finite')
