"""catalogue: conf/workflows.yaml and the original Erlang-term layout into Workflow objects."""
import pathlib

import pytest

from cameron.catalogue import Workflow, load_catalogue, parse_catalogue
from cameron.errors import CatalogueError

CONF = pathlib.Path(__file__).parent.parent / 'conf'
DEFAULTS = {'step_timeout': 7.0, 'retries': 3, 'max_steps': 42}


def default_workflow(name, url):
    return Workflow(name=name, start_point_url=url, step_timeout=7.0, retries=3, max_steps=42)


BAR = default_workflow('bar', 'http://foo.com/workflow/bar/start/{key}')
ZAR = default_workflow('zar', 'http://foo.com/workflow/zar/start/{key}')


# --- the YAML layout --------------------------------------------------------------------

def test_yaml_layout():
    text = '''
workflows:
  bar:
    start_point_url: "http://foo.com/workflow/bar/start/{key}"
  zar:
    start_point_url: "http://foo.com/workflow/zar/start/{key}"
'''
    assert parse_catalogue(text, 'cat.yaml', DEFAULTS) == {'bar': BAR, 'zar': ZAR}


def test_yaml_per_workflow_overrides():
    text = '''
workflows:
  zar:
    start_point_url: "https://Foo.com/workflow/zar/start/{key}"
    step_timeout: 2.5
    retries: 0
    max_steps: 5
    allowed_hosts: [Foo.COM, bar.com]
'''
    assert parse_catalogue(text, 'cat.yaml', DEFAULTS)['zar'] == Workflow(
        name='zar', start_point_url='https://Foo.com/workflow/zar/start/{key}',
        step_timeout=2.5, retries=0, max_steps=5, allowed_hosts=('foo.com', 'bar.com'))


def test_defaults_come_from_the_defaults_dict():
    text = 'workflows:\n  bar:\n    start_point_url: "http://foo.com/{key}"\n'
    defaults = {'step_timeout': 1, 'retries': 9, 'max_steps': 11}
    workflow = parse_catalogue(text, 'cat.yaml', defaults)['bar']
    assert (workflow.step_timeout, workflow.retries, workflow.max_steps) == (1.0, 9, 11)
    assert type(workflow.step_timeout) is float
    assert workflow.allowed_hosts is None


def test_yaml_with_no_workflows_is_empty():
    assert parse_catalogue('workflows:\n', 'cat.yaml', DEFAULTS) == {}


# --- the original Erlang-term layout ----------------------------------------------------

SEED = ('{workflows, [{workflow, {name, bar}, '
        '{start_point_url, "http://foo.com/workflow/bar/start/{key}"}},\n'
        '             {workflow, {name, zar}, '
        '{start_point_url, "http://foo.com/workflow/zar/start/{key}"}}]}')


@pytest.mark.parametrize('text', [
    SEED + '.\n',
    SEED,
    '\n\n  ' + SEED + ' .  \n',
    ('{workflows, [  % every workflow\n'
     '  {workflow, {name, bar},  % the first\n'
     '   {start_point_url, "http://foo.com/workflow/bar/start/{key}"}},\n'
     '  {workflow, {name, \'zar\'}, {start_point_url, '
     '"http://foo.com/workflow/zar/start/{key}"}}\n'
     ']}.\n'),
], ids=['with-dot', 'without-dot', 'blank-around', 'inline-comments'])
def test_term_layout(text):
    assert parse_catalogue(text, 'cat.erl', DEFAULTS) == {'bar': BAR, 'zar': ZAR}


def test_term_layout_with_options():
    text = ('{workflows, [{workflow, {name, zar}, {start_point_url, "http://a.com/z/{key}"},\n'
            '  {retries, 0}, {step_timeout, 2.5}, {max_steps, 5},\n'
            '  {allowed_hosts, ["a.com", "b.com"]}}]}.')
    assert parse_catalogue(text, 'cat.erl', DEFAULTS) == {'zar': Workflow(
        name='zar', start_point_url='http://a.com/z/{key}', step_timeout=2.5, retries=0,
        max_steps=5, allowed_hosts=('a.com', 'b.com'))}


def test_term_layout_percent_inside_a_string_is_not_a_comment():
    text = '{workflows, [{workflow, {name, bar}, {start_point_url, "http://a.com/x%20y/{key}"}}]}.'
    assert parse_catalogue(text, 'cat.erl', DEFAULTS)['bar'].start_point_url == \
        'http://a.com/x%20y/{key}'


def test_term_layout_empty():
    assert parse_catalogue('{workflows, []}.', 'cat.erl', DEFAULTS) == {}


def test_term_layout_opening_with_a_comment_line():
    assert parse_catalogue('% the catalogue\n' + SEED + '.\n', 'cat.erl', DEFAULTS) == \
        {'bar': BAR, 'zar': ZAR}


def test_term_layout_comment_after_the_final_dot():
    assert parse_catalogue(SEED + '.\n% end of catalogue\n', 'cat.erl', DEFAULTS) == \
        {'bar': BAR, 'zar': ZAR}


# --- errors name the file, the workflow and the problem ---------------------------------

def yaml_workflow(name, *lines):
    return f'workflows:\n  "{name}":\n' + ''.join(f'    {line}\n' for line in lines)


URL = 'start_point_url: "http://foo.com/{key}"'


@pytest.mark.parametrize('text, fragments', [
    ('workflows: [\n', ['not valid YAML']),
    ('flows:\n  bar: {}\n', ['expected one key, workflows']),
    ('{workflows, [{workflow, {name, bar} #]}', ['cannot read the term']),
    ('{workflows, [{workflow, {name, bar}', ["missing '}'"]),
    ('{workflows, [{workflow, {start_point_url, "http://a.com/"}}]}', ['without {name']),
    ('{workflows, [bar]}', ['expected {workflow']),
    (yaml_workflow('bar', 'retries: 1'),
     ["workflow 'bar'", 'start_point_url must be an http or https URL']),
    (yaml_workflow('bar', 'start_point_url: "ftp://foo.com/{key}"'),
     ["workflow 'bar'", 'start_point_url must be an http or https URL']),
    (yaml_workflow('bar', 'start_point_url: "/relative/{key}"'),
     ["workflow 'bar'", 'start_point_url must be an http or https URL']),
    (yaml_workflow('bar', 'start_point_url: "http://foo.com:99999/{key}"'),
     ["workflow 'bar'", 'start_point_url must be an http or https URL']),
    (yaml_workflow('bar', URL, 'timeout: 5'), ["workflow 'bar'", "unknown option 'timeout'"]),
    (yaml_workflow('a b', URL), ["workflow 'a b'", 'a name may hold only']),
    (yaml_workflow('bar', URL, 'retries: -1'),
     ["workflow 'bar'", 'retries must be', 'whole number 0 or more']),
    (yaml_workflow('bar', URL, 'retries: 1.5'), ["workflow 'bar'", 'retries must be a whole number']),
    (yaml_workflow('bar', URL, 'step_timeout: 0'),
     ["workflow 'bar'", 'step_timeout must be a number above 0']),
    (yaml_workflow('bar', URL, 'max_steps: true'), ["workflow 'bar'", 'max_steps must be a whole number']),
    (yaml_workflow('bar', URL, 'allowed_hosts: foo.com'),
     ["workflow 'bar'", 'allowed_hosts must be a list of host names']),
    (yaml_workflow('bar', URL, 'allowed_hosts: [other.com]'),
     ["workflow 'bar'", 'start_point_url is not on allowed_hosts']),
    ('workflows:\n  bar: "http://foo.com/"\n',
     ["workflow 'bar'", 'expected a mapping of options']),
    ('{workflows, [{workflow, {name, bar}, {start_point_url, "ftp://a.com/"}}]}',
     ["workflow 'bar'", 'start_point_url must be an http or https URL']),
    ('{workflows, [{workflow, {name, bar}, {start_point_url, "http://a.com/"}, {tries, 1}}]}',
     ["workflow 'bar'", "unknown option 'tries'"]),
    ('{workflows, [{workflow, {name, bar}, {start_point_url, "http://a.com/"}, {retries, -1}}]}',
     ["workflow 'bar'", 'retries must be', 'whole number 0 or more']),
    ('{workflows, [{workflow, {name, bar}, {start_point_url, "http://a.com/"},'
     ' {allowed_hosts, "a.com"}}]}', ["workflow 'bar'", 'allowed_hosts must be a list']),
    ('{workflows, [{workflow, {name, \'a b\'}, {start_point_url, "http://a.com/"}}]}',
     ["workflow 'a b'", 'a name may hold only']),
    ('{workflows, [{workflow, {name, bar}, {start_point_url, "http://a.com/"}},'
     ' {workflow, {name, bar}, {start_point_url, "http://b.com/"}}]}',
     ["workflow 'bar'", 'listed twice']),
])
def test_error_names_file_workflow_and_problem(text, fragments):
    with pytest.raises(CatalogueError) as raised:
        parse_catalogue(text, 'cat.txt', DEFAULTS)
    message = str(raised.value)
    assert message.startswith('cat.txt: ')
    for fragment in fragments:
        assert fragment in message


def test_infinite_max_steps_is_a_catalogue_error():
    with pytest.raises(CatalogueError):
        parse_catalogue(yaml_workflow('bar', URL, 'max_steps: .inf'), 'cat.yaml', DEFAULTS)


# --- load_catalogue ---------------------------------------------------------------------

def test_load_catalogue_reads_the_file(tmp_path):
    path = tmp_path / 'workflows.yaml'
    path.write_text(yaml_workflow('bar', f'start_point_url: "{BAR.start_point_url}"'))
    assert load_catalogue(str(path), DEFAULTS) == {'bar': BAR}


def test_load_catalogue_missing_file(tmp_path):
    path = str(tmp_path / 'missing.yaml')
    with pytest.raises(CatalogueError) as raised:
        load_catalogue(path, DEFAULTS)
    assert str(raised.value) == f'{path}: cannot read it: No such file or directory'


def test_error_in_a_loaded_file_names_that_file(tmp_path):
    path = tmp_path / 'workflows.yaml'
    path.write_text(yaml_workflow('bar', URL, 'retries: -1'))
    with pytest.raises(CatalogueError) as raised:
        load_catalogue(str(path), DEFAULTS)
    assert str(raised.value).startswith(f"{path}: workflow 'bar': retries must be")


def test_shipped_catalogue_has_demo():
    catalogue = load_catalogue(str(CONF / 'workflows.yaml'), DEFAULTS)
    assert catalogue['demo'] == Workflow(
        name='demo', start_point_url='http://127.0.0.1:8080/demo/start/{key}',
        step_timeout=5.0, retries=3, max_steps=42, allowed_hosts=('127.0.0.1',))
