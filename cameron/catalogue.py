"""The workflow catalogue: conf/workflows.yaml, or the original Erlang-term layout.

    workflows:
      bar:
        start_point_url: "http://foo.com/workflow/bar/start/{key}"
        step_timeout: 10          # optional; the others default to the server config
        retries: 2
        max_steps: 1000
        allowed_hosts: [foo.com]
        deadline: 300             # optional: seconds from start after which no step is called

    {workflows, [{workflow, {name, bar}, {start_point_url, "http://..."}}]}.

The term layout is recognised by its first non-blank character, `{`.
"""
import dataclasses
import math
import re
from urllib.parse import urlsplit

import yaml

from .errors import CatalogueError

NAME_PATTERN = re.compile(r'[A-Za-z0-9_.-]+')
OPTIONS = ('start_point_url', 'step_timeout', 'retries', 'max_steps', 'allowed_hosts', 'deadline')


@dataclasses.dataclass(frozen=True)
class Workflow:
    name: str
    start_point_url: str
    step_timeout: float
    retries: int
    max_steps: int
    allowed_hosts: tuple = None  # None: any host
    deadline: float = math.inf  # seconds from start after which no step is called


def load_catalogue(path, defaults):
    """{name: Workflow} from the file at path. defaults holds step_timeout, retries and
    max_steps for workflows that do not set them."""
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
    except OSError as e:
        raise CatalogueError(f'{path}: cannot read it: {e.strerror}') from None
    return parse_catalogue(text, path, defaults)


def parse_catalogue(text, path, defaults):
    is_terms = re.sub(r'(?m)^\s*%.*$', '', text).lstrip().startswith('{')
    entries = _parse_terms(text, path) if is_terms else _parse_yaml(text, path)
    catalogue = {}
    for name, options in entries:
        where = f'{path}: workflow {name!r}'
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise CatalogueError(f'{where}: a name may hold only letters, digits, _ . and -')
        if name in catalogue:
            raise CatalogueError(f'{where}: listed twice')
        catalogue[name] = _workflow(name, options, defaults, where)
    return catalogue


def _is_http_url(url):
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a ValueError if it is not a port number)
    except ValueError:
        return False
    return parts.scheme in ('http', 'https') and bool(parts.hostname)


def _workflow(name, options, defaults, where):
    if not isinstance(options, dict):
        raise CatalogueError(f'{where}: expected a mapping of options')
    for option in options:
        if option not in OPTIONS:
            raise CatalogueError(f'{where}: unknown option {option!r}')
    url = options.get('start_point_url')
    if not isinstance(url, str) or not _is_http_url(url):
        raise CatalogueError(f'{where}: start_point_url must be an http or https URL')
    hosts = options.get('allowed_hosts')
    if hosts is not None:
        if not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts):
            raise CatalogueError(f'{where}: allowed_hosts must be a list of host names')
        hosts = tuple(h.lower() for h in hosts)
        if urlsplit(url).hostname not in hosts:
            raise CatalogueError(f'{where}: start_point_url is not on allowed_hosts')
    return Workflow(
        name=name, start_point_url=url, allowed_hosts=hosts,
        step_timeout=_number(options, 'step_timeout', defaults, where, float, 0),
        retries=_number(options, 'retries', defaults, where, int, -1),
        max_steps=_number(options, 'max_steps', defaults, where, int, 0),
        deadline=_number(options, 'deadline', {'deadline': math.inf}, where, float, 0))


def _number(options, option, defaults, where, kind, above):
    if option not in options:
        return kind(defaults[option])
    value = options[option]
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or (kind is int and value != int(value)) \
            or value <= above:
        lowest = 'above 0' if above == 0 else '0 or more'
        kind_name = 'whole number' if kind is int else 'number'
        raise CatalogueError(f'{where}: {option} must be a {kind_name} {lowest}')
    return kind(value)


def _parse_yaml(text, path):
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CatalogueError(f'{path}: not valid YAML: {e}') from None
    if not isinstance(document, dict) or set(document) != {'workflows'} \
            or not isinstance(document['workflows'], (dict, type(None))):
        raise CatalogueError(f'{path}: expected one key, workflows, holding a mapping')
    return list((document['workflows'] or {}).items())


# The original layout: Erlang terms made of tuples {...}, lists [...], atoms and strings.
_TOKEN = re.compile(r'\s*(?:(?P<punct>[{}\[\],.])|"(?P<string>(?:[^"\\]|\\.)*)"'
                    r"|'(?P<quoted>(?:[^'\\]|\\.)*)'|(?P<number>-?\d+(?:\.\d+)?)"
                    r'|(?P<atom>[a-z][A-Za-z0-9_@.-]*)|(?P<comment>%[^\n]*))')


def _parse_terms(text, path):
    tokens = _tokenize(text, path)
    term = _read_term(tokens, path)
    if tokens == [('punct', '.')]:  # the full stop that ends a term is optional
        tokens.pop()
    if tokens:
        raise CatalogueError(f'{path}: unexpected {tokens[0][1]!r} after the catalogue')
    if not (isinstance(term, tuple) and len(term) == 2 and term[0] == 'workflows'
            and isinstance(term[1], list)):
        raise CatalogueError(f'{path}: expected {{workflows, [...]}}')
    return [_term_workflow(entry, path) for entry in term[1]]


def _term_workflow(entry, path):
    if not (isinstance(entry, tuple) and entry and entry[0] == 'workflow'
            and all(isinstance(o, tuple) and len(o) == 2 for o in entry[1:])):
        raise CatalogueError(f'{path}: expected {{workflow, {{name, N}}, {{option, V}}...}}, '
                             f'found {entry!r}')
    options = dict(entry[1:])
    name = options.pop('name', None)
    if name is None:
        raise CatalogueError(f'{path}: a workflow without {{name, ...}}: {entry!r}')
    return str(name), options


def _tokenize(text, path):
    tokens, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            if text[position:].strip() == '':
                break
            raise CatalogueError(f'{path}: cannot read the term at character {position}: '
                                 f'{text[position:position + 20]!r}')
        position = match.end()
        kind = match.lastgroup
        if kind != 'comment':
            tokens.append((kind, match.group(kind)))
    return tokens


def _read_term(tokens, path):
    if not tokens:
        raise CatalogueError(f'{path}: the catalogue ends too early')
    kind, value = tokens.pop(0)
    if kind == 'punct' and value in '{[':
        closing = '}' if value == '{' else ']'
        items = []
        while tokens and tokens[0] != ('punct', closing):
            items.append(_read_term(tokens, path))
            if tokens and tokens[0] == ('punct', ','):
                tokens.pop(0)
        if not tokens:
            raise CatalogueError(f'{path}: missing {closing!r}')
        tokens.pop(0)
        return tuple(items) if closing == '}' else items
    if kind in ('string', 'quoted'):
        return re.sub(r'\\(.)', r'\1', value)
    if kind == 'number':
        return float(value) if '.' in value else int(value)
    if kind == 'atom':
        return value
    raise CatalogueError(f'{path}: unexpected {value!r}')
