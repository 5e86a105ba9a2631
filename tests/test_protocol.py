"""protocol: the step protocol's pure functions (URLs, answers, errors, retries, step ids)."""
import json
import random
from urllib.parse import urljoin

import pytest

from cameron.errors import InvalidAnswer
from cameron.protocol import (
    Answer, NextStep, child_step_id, expand_url, is_retryable, parse_answer, parse_retry_after,
    retry_delay, step_error, step_headers)

STEP_URL = 'http://steps.com/workflow/bar/start/007'


def body(**fields):
    return json.dumps(fields).encode()


# --- expand_url -------------------------------------------------------------------------

@pytest.mark.parametrize('key, expected', [
    ('007', 'http://foo.com/start/007'),
    ('a/b', 'http://foo.com/start/a%2Fb'),
    ('a?b', 'http://foo.com/start/a%3Fb'),
    ('a b', 'http://foo.com/start/a%20b'),
    ('a&b=c', 'http://foo.com/start/a%26b%3Dc'),
    ('100%', 'http://foo.com/start/100%25'),
    ('café', 'http://foo.com/start/caf%C3%A9'),
    ('#x', 'http://foo.com/start/%23x'),
])
def test_expand_url_encodes_the_key(key, expected):
    assert expand_url('http://foo.com/start/{key}', key) == expected


def test_expand_url_replaces_every_key():
    assert expand_url('https://foo.com/{key}?id={key}', 'a b') == 'https://foo.com/a%20b?id=a%20b'


def test_expand_url_without_key_placeholder_is_unchanged():
    assert expand_url('http://foo.com/start', 'k') == 'http://foo.com/start'


@pytest.mark.parametrize('template, expected', [
    ('/next/{key}', 'http://steps.com/next/k%2F1'),
    ('next/{key}', 'http://steps.com/workflow/bar/start/next/k%2F1'),
    ('../kar', 'http://steps.com/workflow/bar/kar'),
    ('http://other.com/{key}', 'http://other.com/k%2F1'),
])
def test_expand_url_resolves_relative_urls_against_base(template, expected):
    assert expand_url(template, 'k/1', base=STEP_URL) == expected


def test_expand_url_resolves_as_urljoin_does():
    # Paths from the root are joined without urljoin when there is nothing to resolve in
    # them; every kind of segment, base and ending must come out as urljoin has it.
    segments = ['a', 'b.c', '.', '..', '', '...', '.a', 'a.', '%2F', 'x;y', 'é', ' s', 'a b',
                '~u', "!$&'()*+,=:@", '{key}']
    endings = ['', '/', '?q', '#f', '?', '#', '\t', ' ', '/.', '/..']
    bases = [STEP_URL, 'https://u:p@h.com:8080/x/y?z=1#f', 'http://[::1]:9/', 'http://h.com',
             'HTTP://H.com/a/']
    rng = random.Random(7)
    for _ in range(3000):
        template = '/' + '/'.join(rng.choice(segments) for _ in range(rng.randint(1, 4))) \
            + rng.choice(endings)
        for base in bases:
            joined = urljoin(base, template.replace('{key}', 'k.1'))
            assert _outcome(expand_url, template, 'k.1', base=base) == \
                _outcome(expand_url, joined, 'k.1'), template


def _outcome(function, *args, **kwargs):
    try:
        return function(*args, **kwargs)
    except InvalidAnswer:
        return 'invalid'


@pytest.mark.parametrize('template, base', [
    ('ftp://foo.com/{key}', None),
    ('file:///etc/passwd', None),
    ('javascript:alert(1)', None),
    ('/relative/{key}', None),
    ('http:///no-host', None),
    ('http://foo.com:99999/{key}', None),
    ('http://[oops/{key}', None),
    ('ftp://foo.com/{key}', STEP_URL),
])
def test_expand_url_refuses_non_http_urls(template, base):
    with pytest.raises(InvalidAnswer, match='is not an http or https URL'):
        expand_url(template, 'k', base=base)


def test_expand_url_on_allowed_hosts():
    assert expand_url('http://A.com/{key}', 'k', allowed_hosts=('a.com', 'b.com')) == \
        'http://A.com/k'


def test_expand_url_refuses_host_not_on_allowed_hosts():
    with pytest.raises(InvalidAnswer, match="'evil.com' is not on allowed_hosts"):
        expand_url('http://evil.com/{key}', 'k', allowed_hosts=('a.com',))


def test_expand_url_allowed_hosts_checked_after_resolving():
    assert expand_url('/x', 'k', base='http://a.com/y', allowed_hosts=('a.com',)) == \
        'http://a.com/x'
    with pytest.raises(InvalidAnswer):
        expand_url('//evil.com/x', 'k', base='http://a.com/y', allowed_hosts=('a.com',))


def test_expand_url_empty_allowed_hosts_refuses_everything():
    with pytest.raises(InvalidAnswer):
        expand_url('http://a.com/', 'k', allowed_hosts=())


# --- parse_answer -----------------------------------------------------------------------

@pytest.mark.parametrize('empty', [b'', b'  \r\n', ''])
def test_empty_body_is_done_without_next(empty):
    answer = parse_answer(empty, STEP_URL, 'k')
    assert answer == Answer()
    assert (answer.name, answer.data, answer.next, answer.parallel) == (None, None, (), True)


def test_full_answer():
    answer = parse_answer(body(name='bar', data={'any': ['json', 1]},
                               next=[{'name': 'kar', 'url': 'http://kar.com/workflow/{key}'},
                                     {'name': 'xar', 'url': 'http://xar.com/workflow/{key}'}],
                               parallel='no'),
                          STEP_URL, 'a b')
    assert answer == Answer(name='bar', data={'any': ['json', 1]}, parallel=False, next=(
        NextStep('kar', 'http://kar.com/workflow/a%20b'),
        NextStep('xar', 'http://xar.com/workflow/a%20b')))


def test_answer_without_next_ends_the_branch():
    assert parse_answer(body(data=5), STEP_URL, 'k') == Answer(data=5)


@pytest.mark.parametrize('next_steps', [None, []])
def test_null_or_empty_next_is_no_next(next_steps):
    assert parse_answer(body(next=next_steps), STEP_URL, 'k').next == ()


def test_relative_next_url_is_resolved_against_the_step_url():
    answer = parse_answer(body(next=[{'name': 'kar', 'url': '/kar/{key}'}]), STEP_URL, '7')
    assert answer.next == (NextStep('kar', 'http://steps.com/kar/7'),)


def test_next_activities_definitions_is_accepted():
    answer = parse_answer(body(next_activities={'definitions': [
        {'name': 'kar', 'url': 'http://kar.com/{key}'}]}), STEP_URL, 'k')
    assert answer.next == (NextStep('kar', 'http://kar.com/k'),)


def test_next_is_checked_against_allowed_hosts():
    ok = body(next=[{'name': 'kar', 'url': '/kar'}])
    assert parse_answer(ok, STEP_URL, 'k', allowed_hosts=('steps.com',)).next == \
        (NextStep('kar', 'http://steps.com/kar'),)
    bad = body(next=[{'name': 'kar', 'url': 'http://evil.com/kar'}])
    with pytest.raises(InvalidAnswer, match=r"next step 1 \(kar\): 'evil.com' is not on"):
        parse_answer(bad, STEP_URL, 'k', allowed_hosts=('steps.com',))


@pytest.mark.parametrize('raw, message', [
    (b'not json', 'the answer is not JSON'),
    (b'{"name": "bar"', 'the answer is not JSON'),
    (b'\xff\xfe', 'the answer is not JSON'),
    (b'[1, 2]', 'the answer is not a JSON object'),
    (b'"done"', 'the answer is not a JSON object'),
    (b'null', 'the answer is not a JSON object'),
    (body(name=5), '"name" is not a string'),
    (body(next={'name': 'kar', 'url': 'http://kar.com/'}), '"next" is not a list'),
    (body(next='http://kar.com/'), '"next" is not a list'),
    (body(next=['http://kar.com/']), 'next step 1 is not an object with a string name and url'),
    (body(next=[{'url': 'http://kar.com/'}]), 'next step 1 is not an object'),
    (body(next=[{'name': 'kar'}]), 'next step 1 is not an object'),
    (body(next=[{'name': 1, 'url': 'http://kar.com/'}]), 'next step 1 is not an object'),
    (body(next=[{'name': 'kar', 'url': 'http://kar.com/'}, {'name': 'xar', 'url': None}]),
     'next step 2 is not an object'),
    (body(next=[{'name': 'kar', 'url': 'ftp://kar.com/'}]),
     "next step 1 (kar): 'ftp://kar.com/' is not an http or https URL"),
    (body(parallel='maybe'), '"parallel" is not "yes", "no" or a boolean'),
    (body(parallel=1), '"parallel" is not "yes", "no" or a boolean'),
])
def test_invalid_answer(raw, message):
    with pytest.raises(InvalidAnswer) as raised:
        parse_answer(raw, STEP_URL, 'k')
    assert message in str(raised.value)


@pytest.mark.parametrize('fields, parallel', [
    ({'parallel': 'yes'}, True),
    ({'parallel': 'no'}, False),
    ({'parallel': 'YES'}, True),
    ({'parallel': 'No'}, False),
    ({'parallel': True}, True),
    ({'parallel': False}, False),
    ({}, True),
])
def test_parallel(fields, parallel):
    assert parse_answer(body(**fields), STEP_URL, 'k').parallel is parallel


def test_answer_name_is_kept():
    assert parse_answer(body(name='my-own-name'), STEP_URL, 'k').name == 'my-own-name'


def test_answer_may_be_text():
    assert parse_answer('{"data": "é"}', STEP_URL, 'k') == Answer(data='é')


# --- step_error -------------------------------------------------------------------------

def test_step_error_fields():
    assert step_error('http_status', 'answered 500', 500, b'oops') == {
        'type': 'http_status', 'message': 'answered 500', 'http_status': 500, 'body': 'oops'}


def test_step_error_defaults():
    assert step_error('timeout', 'no answer in 10s') == {
        'type': 'timeout', 'message': 'no answer in 10s', 'http_status': None, 'body': ''}


def test_step_error_keeps_the_first_kib_of_the_body():
    assert step_error('http_status', 'm', 500, b'a' * 1024 + b'b' * 10)['body'] == 'a' * 1024


def test_step_error_decodes_invalid_utf8_safely():
    assert step_error('invalid_response', 'm', 200, b'ok \xff\xfe end')['body'] == \
        'ok \ufffd\ufffd end'


def test_step_error_cut_inside_a_character_is_replaced():
    cut = step_error('http_status', 'm', 500, b'a' + 'é'.encode() * 600)['body']
    assert cut == 'a' + 'é' * 511 + '\ufffd'


# --- step_headers -----------------------------------------------------------------------

def test_step_headers():
    assert step_headers('3bd73a77', '1-2', 3) == {
        'Content-Type': 'application/json',
        'X-Cameron-Ticket': '3bd73a77',
        'X-Cameron-Step': '1-2',
        'X-Cameron-Attempt': '3',
        'Idempotency-Key': '3bd73a77:1-2',
    }


def test_idempotency_key_is_stable_across_attempts():
    keys = {step_headers('t', '1-1', attempt)['Idempotency-Key'] for attempt in (1, 2, 3)}
    assert keys == {'t:1-1'}


# --- retries ----------------------------------------------------------------------------

@pytest.mark.parametrize('status, retryable', [
    (429, True), (500, True), (502, True), (503, True), (504, True),
    (400, False), (401, False), (404, False), (409, False), (422, False),
])
def test_is_retryable(status, retryable):
    assert is_retryable(status) is retryable


@pytest.mark.parametrize('attempt, low', [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.6)])
def test_retry_delay_bounds(attempt, low):
    backoff = 0.2  # low is 0.5 x backoff x 2^(attempt-1)
    assert retry_delay(attempt, backoff, rng=lambda: 0.0) == pytest.approx(low)
    assert retry_delay(attempt, backoff, rng=lambda: 0.5) == pytest.approx(low * 1.5)
    assert retry_delay(attempt, backoff, rng=lambda: 0.999999) == pytest.approx(low * 2, rel=1e-5)
    assert retry_delay(attempt, backoff, rng=lambda: 0.999999) < low * 2


def test_retry_delay_doubles_each_attempt():
    delays = [retry_delay(attempt, 0.5, rng=lambda: 0.3) for attempt in range(1, 7)]
    assert [later / earlier for earlier, later in zip(delays, delays[1:])] == \
        pytest.approx([2.0] * 5)


def test_retry_delay_jitter_stays_in_range():
    rng = random.Random(1234).random
    for attempt in range(1, 9):
        ceiling = 0.2 * 2 ** (attempt - 1)
        for _ in range(50):
            assert 0.5 * ceiling <= retry_delay(attempt, 0.2, rng=rng) <= ceiling


def test_retry_delay_jitter_varies():
    rng = random.Random(99).random
    assert len({retry_delay(1, 1.0, rng=rng) for _ in range(20)}) == 20


@pytest.mark.parametrize('retry_after', [0.0, 3.0, 120.0])
def test_retry_delay_honours_retry_after(retry_after):
    assert retry_delay(4, 0.2, retry_after=retry_after, rng=lambda: 0.0) == retry_after


@pytest.mark.parametrize('value, seconds', [
    ('5', 5.0), ('0', 0.0), ('2.5', 2.5), (' 7 ', 7.0), ('-3', 0.0),
    ('Wed, 21 Oct 2015 07:28:00 GMT', None), ('soon', None), ('', None), (None, None),
])
def test_parse_retry_after(value, seconds):
    assert parse_retry_after(value) == seconds


# --- step ids ---------------------------------------------------------------------------

@pytest.mark.parametrize('parent, index, child', [
    ('1', 1, '1-1'), ('1', 2, '1-2'), ('1-2', 10, '1-2-10'),
])
def test_child_step_id(parent, index, child):
    assert child_step_id(parent, index) == child

