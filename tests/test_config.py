"""config.load_config: defaults, then the YAML file, then CAMERON_* variables, then flags."""
import dataclasses
import pathlib
import re

import pytest

from cameron import config
from cameron.config import Config, load_config, parser
from cameron.errors import ConfigError

CONF = pathlib.Path(__file__).parent.parent / 'conf'


@pytest.fixture(autouse=True)
def empty_cwd(tmp_path, monkeypatch):
    """The default path conf/cameron.yaml is relative to the cwd: keep the repo's out of it."""
    monkeypatch.chdir(tmp_path)


def settings_file(tmp_path, text, name='settings.yaml'):
    path = tmp_path / name
    path.write_text(text)
    return path


# --- defaults and where the file comes from ---------------------------------------------

def test_defaults_when_no_file_exists():
    loaded = load_config([], {})
    assert loaded == Config()
    assert (loaded.workflows, loaded.host, loaded.port, loaded.redis_url, loaded.namespace) == \
        ('conf/workflows.yaml', '127.0.0.1', 8080, None, 'cameron')
    assert (loaded.log_level, loaded.demo, loaded.max_running_tickets,
            loaded.max_outgoing_requests, loaded.max_response_bytes, loaded.max_request_bytes,
            loaded.drain_timeout, loaded.ticket_ttl) == \
        ('info', False, 10_000, 1000, 1024 * 1024, 1024 * 1024, 30.0, 7 * 24 * 3600)


def test_empty_file_gives_defaults(tmp_path):
    path = settings_file(tmp_path, '# nothing set\n')
    assert load_config(['--config', str(path)], {}) == Config()


def test_default_path_is_conf_cameron_yaml_in_cwd(tmp_path):
    (tmp_path / 'conf').mkdir()
    settings_file(tmp_path / 'conf', 'port: 1234\n', name='cameron.yaml')
    assert load_config([], {}).port == 1234


def test_config_from_variable(tmp_path):
    path = settings_file(tmp_path, 'port: 1234\n')
    assert load_config([], {'CAMERON_CONFIG': str(path)}).port == 1234


def test_config_flag_wins_over_variable(tmp_path):
    from_env = settings_file(tmp_path, 'port: 1111\n', name='env.yaml')
    from_flag = settings_file(tmp_path, 'port: 2222\n', name='flag.yaml')
    loaded = load_config(['--config', str(from_flag)], {'CAMERON_CONFIG': str(from_env)})
    assert loaded.port == 2222


# --- layering: later wins ---------------------------------------------------------------

LAYERS = [
    # name, file line, variable, variable value, flags, value from file, env, flag
    ('port', 'port: 1111', 'CAMERON_PORT', '2222', ['--port', '3333'], 1111, 2222, 3333),
    ('redis_url', 'redis_url: redis://file:6379/0', 'CAMERON_REDIS_URL', 'redis://env:6379/1',
     ['--redis', 'redis://flag:6379/2'],
     'redis://file:6379/0', 'redis://env:6379/1', 'redis://flag:6379/2'),
    ('namespace', 'namespace: file-ns', 'CAMERON_NAMESPACE', 'env-ns',
     ['--namespace', 'flag-ns'], 'file-ns', 'env-ns', 'flag-ns'),
    ('demo', 'demo: true', 'CAMERON_DEMO', 'false', ['--demo'], True, False, True),
    ('demo', 'demo: false', 'CAMERON_DEMO', 'true', ['--no-demo'], False, True, False),
]


@pytest.mark.parametrize('name, line, var, env_value, flags, from_file, from_env, from_flag',
                         LAYERS)
def test_file_then_variable_then_flag(tmp_path, name, line, var, env_value, flags,
                                      from_file, from_env, from_flag):
    env = {'CAMERON_CONFIG': str(settings_file(tmp_path, line + '\n'))}
    assert getattr(load_config([], env), name) == from_file
    env[var] = env_value
    assert getattr(load_config([], env), name) == from_env
    assert getattr(load_config(flags, env), name) == from_flag


@pytest.mark.parametrize('flags, var, env_value, name, expected', [
    (['--port', '3333'], 'CAMERON_PORT', '2222', 'port', 3333),
    (['--redis', 'redis://flag/2'], 'CAMERON_REDIS_URL', 'redis://env/1', 'redis_url',
     'redis://flag/2'),
    (['--namespace', 'flag-ns'], 'CAMERON_NAMESPACE', 'env-ns', 'namespace', 'flag-ns'),
    (['--no-demo'], 'CAMERON_DEMO', 'yes', 'demo', False),
])
def test_flag_wins_over_variable_without_file(flags, var, env_value, name, expected):
    assert getattr(load_config(flags, {var: env_value}), name) == expected


def test_unset_layers_keep_the_file_values(tmp_path):
    path = settings_file(tmp_path, 'port: 1111\nnamespace: from-file\n')
    loaded = load_config(['--config', str(path), '--port', '3333'], {})
    assert (loaded.port, loaded.namespace, loaded.host) == (3333, 'from-file', '127.0.0.1')


# --- type conversion --------------------------------------------------------------------

@pytest.mark.parametrize('var, text, name, expected', [
    ('CAMERON_PORT', '9000', 'port', 9000),
    ('CAMERON_PORT', ' 9000 ', 'port', 9000),
    ('CAMERON_STEP_TIMEOUT', '2.5', 'step_timeout', 2.5),
    ('CAMERON_STEP_TIMEOUT', '3', 'step_timeout', 3.0),
    ('CAMERON_RETRIES', '0', 'retries', 0),
    ('CAMERON_MAX_STEPS', '50', 'max_steps', 50),
    ('CAMERON_HOST', '0.0.0.0', 'host', '0.0.0.0'),
    ('CAMERON_REDIS_URL', '', 'redis_url', None),
    ('CAMERON_DEMO', '1', 'demo', True),
    ('CAMERON_DEMO', 'TRUE', 'demo', True),
    ('CAMERON_DEMO', 'yes', 'demo', True),
    ('CAMERON_DEMO', 'on', 'demo', True),
    ('CAMERON_DEMO', '0', 'demo', False),
    ('CAMERON_DEMO', 'False', 'demo', False),
    ('CAMERON_DEMO', 'no', 'demo', False),
    ('CAMERON_DEMO', 'off', 'demo', False),
])
def test_variable_text_is_converted(var, text, name, expected):
    value = getattr(load_config([], {var: text}), name)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize('flags, name, expected', [
    (['--poll-interval', '0.25'], 'poll_interval', 0.25),
    (['--max-running-tickets', '5'], 'max_running_tickets', 5),
    (['--log-level', 'debug'], 'log_level', 'debug'),
])
def test_flag_text_is_converted(flags, name, expected):
    value = getattr(load_config(flags, {}), name)
    assert value == expected
    assert type(value) is type(expected)


def test_yaml_values_are_converted_to_field_types(tmp_path):
    path = settings_file(tmp_path, 'step_timeout: 3\nport: 8081.0\nnamespace: 123\n')
    loaded = load_config(['--config', str(path)], {})
    assert (loaded.step_timeout, loaded.port, loaded.namespace) == (3.0, 8081, '123')
    assert (type(loaded.step_timeout), type(loaded.port)) == (float, int)


# --- errors name their source -----------------------------------------------------------

# 'FILE' stands for the settings file's path. Each case: file text, variables, flags,
# what the message starts with, and a pattern for what else it must say.
ERRORS = [
    ('colour: red\n', {}, [], 'FILE', "unknown setting 'colour'"),
    ('port: [1]\n', {}, [], 'FILE', 'port must be a whole number'),
    ('demo: maybe\n', {}, [], 'FILE', 'demo must be a boolean'),
    ('- port\n- host\n', {}, [], 'FILE', 'expected a mapping'),
    ('port: [\n', {}, [], 'FILE', 'cannot read it'),
    ('', {'CAMERON_PORT': 'eighty'}, [], 'CAMERON_PORT', "port must be a whole number, not 'eighty'"),
    ('', {'CAMERON_DEMO': 'maybe'}, [], 'CAMERON_DEMO', 'demo must be a boolean'),
    ('', {'CAMERON_STEP_TIMEOUT': 'soon'}, [], 'CAMERON_STEP_TIMEOUT', 'step_timeout'),
    ('', {}, ['--max-steps', 'many'], '--max-steps', "max_steps must be a whole number, not 'many'"),
    ('', {}, ['--retry-backoff', 'x'], '--retry-backoff', 'retry_backoff must be a number'),
    ('', {}, ['--port', '70000'], '--port', 'port must be between 0 and 65535'),
    ('port: 70000\n', {}, [], 'FILE', 'port must be between 0 and 65535'),
    ('', {'CAMERON_MAX_RUNNING_TICKETS': '0'}, [], 'CAMERON_MAX_RUNNING_TICKETS',
     'max_running_tickets must be above 0'),
    ('log_level: verbose\n', {}, [], 'FILE', 'log_level must be one of debug, info'),
    ('', {}, ['--namespace', 'a b'], '--namespace', 'namespace may hold only'),
    ('', {'CAMERON_NAMESPACE': 'a:b'}, [], 'CAMERON_NAMESPACE', 'namespace may hold only'),
    ('', {'CAMERON_RETRIES': '-1'}, [], 'CAMERON_RETRIES', 'retries must be 0 or more'),
    ('step_timeout: 0\n', {}, [], 'FILE', 'step_timeout must be above 0'),
    ('', {}, ['--redis-connections', '4'], '--redis-connections',
     'redis_connections must be at least 8'),
    ('', {}, ['--max-connections', '0'], '--max-connections', 'max_connections must be above 0'),
]


@pytest.mark.parametrize('text, env, flags, source, problem', ERRORS)
def test_error_names_its_source(tmp_path, text, env, flags, source, problem):
    path = settings_file(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_config(flags, {'CAMERON_CONFIG': str(path), **env})
    named = str(path) if source == 'FILE' else source
    assert str(raised.value).startswith(named + ': ')
    assert re.search(problem, str(raised.value))


@pytest.mark.parametrize('how', ['flag', 'variable'])
def test_explicit_config_that_does_not_exist(tmp_path, how):
    missing = str(tmp_path / 'missing.yaml')
    argv, env = (['--config', missing], {}) if how == 'flag' else ([], {'CAMERON_CONFIG': missing})
    with pytest.raises(ConfigError) as raised:
        load_config(argv, env)
    assert str(raised.value) == f'{missing}: no such file'


def test_nan_step_timeout_is_refused():
    with pytest.raises(ConfigError):
        load_config(['--step-timeout', 'nan'], {})


# --- the shipped file and --help --------------------------------------------------------

def test_shipped_config_loads():
    loaded = load_config(['--config', str(CONF / 'cameron.yaml')], {})
    assert loaded == dataclasses.replace(Config(), demo=True)
    assert (loaded.port, loaded.redis_url, loaded.namespace, loaded.demo) == \
        (8080, None, 'cameron', True)


def test_help_lists_every_setting():
    text = parser().format_help()
    assert '--config' in text and 'CAMERON_CONFIG' in text
    assert '--no-demo' in text
    for field in dataclasses.fields(Config):
        assert config.flag_name(field.name) in text, field.name
        assert config.env_name(field.name) in text, field.name


@pytest.mark.parametrize('name, flag, var', [
    ('redis_url', '--redis', 'CAMERON_REDIS_URL'),
    ('max_running_tickets', '--max-running-tickets', 'CAMERON_MAX_RUNNING_TICKETS'),
    ('port', '--port', 'CAMERON_PORT'),
])
def test_flag_and_variable_names(name, flag, var):
    assert (config.flag_name(name), config.env_name(name)) == (flag, var)
