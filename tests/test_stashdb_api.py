"""Tests for the stash-box client, its limiter and retry policy, and the fake StashDB server."""

from __future__ import annotations

import logging
import re
import threading
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import pytest
import requests
import responses
from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLObjectType,
    GraphQLScalarType,
    build_schema,
    parse,
    validate,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from responses import matchers
from responses.registries import OrderedRegistry

import stashdb_api
from stashdb_api import (
    FIND_SCENE_QUERY,
    FIND_SCENES_BY_FINGERPRINTS_QUERY,
    MAX_FINGERPRINT_LISTS,
    Fingerprint,
    StashDBClient,
    StashDBScene,
    StashDBTag,
    TokenBucket,
    effective_rate_per_minute,
    fingerprints_from_stash_files,
    retry_after_seconds,
)
from tests.fakes.fake_stashdb import FakeStashDB, load_schema
from tagman_base.errors import AuthError, GraphQLQueryError, RateLimitedError, StashDBError, StashDBUnavailable

REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
STASH_BOX_SCHEMA_DIR = REFERENCE_DIR / "stash-box-graphql" / "graphql" / "schema"
URL = "https://stashdb.example/graphql"
API_KEY = "SECRET-KEY-3f9a"
BUILTIN_SCALARS = {"String", "Int", "Float", "Boolean", "ID"}


# -- helpers ---------------------------------------------------------------------------------------


class FakeClock:
    """A clock whose sleep advances time instantly."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class CountingBucket(TokenBucket):
    """A TokenBucket that counts acquisitions."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.acquired = 0

    def acquire(self) -> float:
        self.acquired += 1
        return super().acquire()


def make_client(url: str = URL, max_retries: int = 3, timeout=(5.0, 30.0)) -> tuple[StashDBClient, list[float]]:
    """A client with an instant limiter and a sleep that only records."""
    clock = FakeClock()
    slept: list[float] = []
    client = StashDBClient(
        url, API_KEY, CountingBucket(1000.0, clock=clock, sleep=clock.sleep),
        sleep=slept.append, timeout=timeout, max_retries=max_retries,
    )
    return client, slept


def scene_json(scene_id: str = "s1", tags=(("t1", "Tag One"),)) -> dict:
    """A scene as StashDB answers it."""
    return {
        "id": scene_id,
        "deleted": False,
        "tags": [{"id": tid, "name": name, "aliases": [f"{name} alias"], "deleted": False} for tid, name in tags],
    }


def ok_scene(scene_id: str = "s1") -> dict:
    """A successful findScene answer body."""
    return {"data": {"findScene": scene_json(scene_id)}}


EXPECTED_SCENE = StashDBScene(
    id="s1", deleted=False, tags=(StashDBTag(id="t1", name="Tag One", aliases=("Tag One alias",), deleted=False),)
)


def world_scene(scene_id: str, *fingerprints: tuple[str, str], deleted: bool = False) -> dict:
    """A scene in the fake's world format."""
    return {
        "id": scene_id,
        "title": f"Scene {scene_id}",
        "deleted": deleted,
        "tags": [{"id": f"tag-{scene_id}", "name": f"Tag {scene_id}", "aliases": [], "deleted": False}],
        "fingerprints": [{"algorithm": a, "hash": h, "duration": 600} for a, h in fingerprints],
    }


@pytest.fixture(scope="module")
def world() -> dict:
    """Fifty scenes with one OSHASH and one PHASH each, plus a scene sharing s0's OSHASH."""
    scenes = {f"s{i}": world_scene(f"s{i}", ("OSHASH", f"{i:016x}"), ("PHASH", f"{i + 0x100:016x}")) for i in range(50)}
    scenes["twin"] = world_scene("twin", ("OSHASH", f"{0:016x}"), ("MD5", "d41d8cd98f00b204e9800998ecf8427e"))
    return {"scenes": scenes}


# -- conformance with the real stash-box schema ----------------------------------------------------


@pytest.fixture(scope="module")
def real_schema():
    """The reference stash-box schema, or skip when the reference copy is not present."""
    if not STASH_BOX_SCHEMA_DIR.is_dir():
        pytest.skip(f"stash-box reference schema not found at {STASH_BOX_SCHEMA_DIR}")
    files = [STASH_BOX_SCHEMA_DIR / "schema.graphql", *sorted((STASH_BOX_SCHEMA_DIR / "types").glob("*.graphql"))]
    sdl = "\n".join(f.read_text(encoding="utf-8") for f in files)
    # gqlgen accepts `= False` as a Boolean default; graphql-core only accepts the spec's `false`.
    return build_schema(re.sub(r"=\s*False\b", "= false", sdl))


@pytest.mark.parametrize("query", [FIND_SCENES_BY_FINGERPRINTS_QUERY, FIND_SCENE_QUERY], ids=["by-fingerprints", "scene"])
def test_queries_validate_against_real_schema(real_schema, query):
    assert validate(real_schema, parse(query)) == []


@pytest.mark.parametrize("query", [FIND_SCENES_BY_FINGERPRINTS_QUERY, FIND_SCENE_QUERY], ids=["by-fingerprints", "scene"])
def test_queries_validate_against_fake_schema(query):
    assert validate(load_schema(), parse(query)) == []


def test_fake_sdl_is_subset_of_real_schema(real_schema):
    fake = load_schema()
    for name, fake_type in fake.type_map.items():
        if name.startswith("__") or name in BUILTIN_SCALARS:
            continue
        real_type = real_schema.type_map.get(name)
        assert real_type is not None, f"{name} is not in the stash-box schema"
        assert type(real_type) is type(fake_type), f"{name} has a different kind"
        assert_same_members(name, fake_type, real_type)


def assert_same_members(name: str, fake_type, real_type) -> None:
    """Every field/argument/enum value of fake_type exists in real_type with the same type."""
    if isinstance(fake_type, GraphQLEnumType):
        assert set(fake_type.values) <= set(real_type.values), name
    elif isinstance(fake_type, (GraphQLObjectType, GraphQLInputObjectType)):
        for field_name, field in fake_type.fields.items():
            real_field = real_type.fields.get(field_name)
            assert real_field is not None, f"{name}.{field_name} is not in the stash-box schema"
            assert str(field.type) == str(real_field.type), f"{name}.{field_name}"
            for arg_name, arg in getattr(field, "args", {}).items():
                assert arg_name in real_field.args, f"{name}.{field_name}({arg_name})"
                assert str(arg.type) == str(real_field.args[arg_name].type), f"{name}.{field_name}({arg_name})"
    else:
        assert isinstance(fake_type, GraphQLScalarType), name


def test_scene_selection_is_exactly_what_tag_sync_needs():
    for query in (FIND_SCENES_BY_FINGERPRINTS_QUERY, FIND_SCENE_QUERY):
        assert "{ id deleted tags { id name aliases deleted } }" in query


# -- limiter ---------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    rate=st.floats(min_value=0.1, max_value=1000.0),
    burst=st.integers(min_value=1, max_value=5),
    gaps=st.lists(st.floats(min_value=0.0, max_value=5.0), min_size=1, max_size=40),
)
def test_token_bucket_never_exceeds_rate(rate, burst, gaps):
    clock = FakeClock()
    bucket = TokenBucket(rate, burst=burst, clock=clock, sleep=clock.sleep)
    clock.now += gaps[0]
    times, waits = [], []
    for gap in gaps[1:] + [0.0]:
        waits.append(bucket.acquire())
        times.append(clock.now)
        clock.now += gap
    assert waits[0] == 0.0
    assert all(w >= 0 for w in waits)
    tolerance = 1e-9 * max(1.0, times[-1])
    for start in range(len(times)):
        for end in range(start, len(times)):
            n = end - start + 1
            assert times[end] - times[start] >= (n - burst) / rate - tolerance


@settings(max_examples=100, deadline=None)
@given(rate=st.floats(min_value=0.1, max_value=1000.0), burst=st.integers(min_value=1, max_value=10))
def test_token_bucket_full_burst_is_free_then_paced(rate, burst):
    clock = FakeClock()
    bucket = TokenBucket(rate, burst=burst, clock=clock, sleep=clock.sleep)
    assert [bucket.acquire() for _ in range(burst)] == [0.0] * burst
    assert bucket.acquire() == pytest.approx(1 / rate)


@settings(max_examples=100, deadline=None)
@given(rate=st.floats(min_value=0.1, max_value=1000.0), n=st.integers(min_value=1, max_value=30))
def test_token_bucket_spaced_callers_never_wait(rate, n):
    clock = FakeClock()
    bucket = TokenBucket(rate, clock=clock, sleep=clock.sleep)
    for _ in range(n):
        assert bucket.acquire() == 0.0
        clock.now += 1 / rate * 1.0001


def test_token_bucket_is_shared_safely_between_threads():
    bucket = TokenBucket(200.0)
    stamps: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            bucket.acquire()
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stamps.sort()
    assert stamps[-1] - stamps[0] >= 14 / 200.0 - 0.002


@pytest.mark.parametrize("rate", [0, -1, float("inf"), float("nan")])
def test_token_bucket_rejects_bad_rates(rate):
    with pytest.raises(ValueError):
        TokenBucket(rate)


@pytest.mark.parametrize(
    ("box", "user", "expected"),
    [
        (0, None, 240.0),
        (None, None, 240.0),
        (120, None, 120.0),
        (0, 60, 60.0),
        (240, 600, 240.0),
        (100, 30.5, 30.5),
        (None, 1000, 240.0),
        (300, 0, 300.0),
    ],
)
def test_effective_rate_per_minute(box, user, expected):
    assert effective_rate_per_minute(box, user) == expected


def test_effective_rate_rejects_negative_user_setting():
    with pytest.raises(ValueError):
        effective_rate_per_minute(240, -5)


# -- retry policy with `responses` -----------------------------------------------------------------


@pytest.fixture
def mocked():
    """An ordered `responses` mock: answers are consumed in registration order."""
    with responses.RequestsMock(registry=OrderedRegistry, assert_all_requests_are_fired=True) as rsps:
        yield rsps


def test_find_scene_parses_answer_and_sends_key(mocked):
    mocked.post(URL, json=ok_scene(), match=[
        matchers.header_matcher({"ApiKey": API_KEY}),
        matchers.json_params_matcher({"operationName": "FindScene", "query": FIND_SCENE_QUERY, "variables": {"id": "s1"}}),
    ])
    client, slept = make_client()
    assert client.find_scene("s1") == EXPECTED_SCENE
    assert (client.requests_sent, client.retries, client.throttled, slept) == (1, 0, 0, [])


def test_find_scene_missing_is_none(mocked):
    mocked.post(URL, json={"data": {"findScene": None}})
    client, _ = make_client()
    assert client.find_scene("nope") is None


def test_429_honours_retry_after_seconds(mocked):
    mocked.post(URL, status=429, headers={"Retry-After": "7"})
    mocked.post(URL, json=ok_scene())
    client, slept = make_client()
    assert client.find_scene("s1") == EXPECTED_SCENE
    assert slept == [7.0]
    assert (client.requests_sent, client.retries, client.throttled) == (2, 1, 1)
    assert client.limiter.acquired == 2


def test_429_honours_retry_after_http_date(mocked):
    when = datetime.now(timezone.utc) + timedelta(seconds=12)
    mocked.post(URL, status=429, headers={"Retry-After": format_datetime(when, usegmt=True)})
    mocked.post(URL, json=ok_scene())
    client, slept = make_client()
    client.find_scene("s1")
    assert len(slept) == 1 and 9.0 <= slept[0] <= 12.0


def test_retry_after_parsing():
    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert retry_after_seconds("3", now) == 3.0
    assert retry_after_seconds("1.5", now) == 1.5
    assert retry_after_seconds("Mon, 01 Jan 2024 12:00:30 GMT", now) == 30.0
    assert retry_after_seconds("Mon, 01 Jan 2024 11:00:00 GMT", now) == 0.0
    assert retry_after_seconds("-4", now) == 0.0
    assert retry_after_seconds("99999", now) == stashdb_api.MAX_RETRY_AFTER_S
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None


def test_429_without_retry_after_backs_off_then_raises(mocked):
    for _ in range(4):
        mocked.post(URL, status=429)
    client, slept = make_client()
    with pytest.raises(RateLimitedError) as caught:
        client.find_scene("s1")
    assert slept == [1.0, 2.0, 4.0]
    assert (client.requests_sent, client.retries, client.throttled) == (4, 3, 4)
    assert client.limiter.acquired == 4
    assert API_KEY not in str(caught.value)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_then_success(mocked, status):
    mocked.post(URL, status=status, body="upstream trouble")
    mocked.post(URL, status=status, body="upstream trouble")
    mocked.post(URL, json=ok_scene())
    client, slept = make_client()
    assert client.find_scene("s1") == EXPECTED_SCENE
    assert slept == [1.0, 2.0]
    assert (client.requests_sent, client.retries, client.throttled) == (3, 2, 0)


FAILURES = {
    "http-500": {"status": 500, "body": "oops"},
    "http-503": {"status": 503, "body": ""},
    "read-timeout": {"body": requests.exceptions.ReadTimeout("read timed out")},
    "connect-timeout": {"body": requests.exceptions.ConnectTimeout("connect timed out")},
    "connection-error": {"body": requests.exceptions.ConnectionError("refused")},
    "non-json": {"status": 200, "body": "<html>maintenance</html>", "content_type": "text/html"},
    "no-data": {"status": 200, "json": {"hello": "world"}},
}


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_failure_once_then_success(mocked, kind):
    mocked.post(URL, **FAILURES[kind])
    mocked.post(URL, json=ok_scene())
    client, slept = make_client()
    assert client.find_scene("s1") == EXPECTED_SCENE
    assert slept == [1.0]
    assert (client.requests_sent, client.retries) == (2, 1)


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_failure_every_time_raises_unavailable(mocked, kind):
    for _ in range(4):
        mocked.post(URL, **FAILURES[kind])
    client, slept = make_client()
    with pytest.raises(StashDBUnavailable) as caught:
        client.find_scene("s1")
    assert slept == [1.0, 2.0, 4.0]
    assert (client.requests_sent, client.retries) == (4, 3)
    assert API_KEY not in str(caught.value)


def test_max_retries_zero_fails_at_once(mocked):
    mocked.post(URL, status=502)
    client, slept = make_client(max_retries=0)
    with pytest.raises(StashDBUnavailable):
        client.find_scene("s1")
    assert (slept, client.requests_sent) == ([], 1)


def test_graphql_error_is_not_retried(mocked):
    mocked.post(URL, json={"errors": [{"message": "too many scenes"}], "data": None})
    client, slept = make_client()
    with pytest.raises(GraphQLQueryError) as caught:
        client.find_scenes_by_fingerprints([[Fingerprint("OSHASH", "ab")]])
    assert caught.value.operation == "FindScenesBySceneFingerprints"
    assert caught.value.errors == [{"message": "too many scenes"}]
    assert "too many scenes" in str(caught.value)
    assert (slept, client.requests_sent) == ([], 1)


def test_graphql_validation_error_with_422_is_a_query_error(mocked):
    mocked.post(URL, status=422, json={"errors": [{"message": "Cannot query field"}], "data": None})
    client, _ = make_client()
    with pytest.raises(GraphQLQueryError):
        client.find_scene("s1")


@pytest.mark.parametrize("status", [401, 403])
def test_auth_rejected_at_once_without_leaking_key(mocked, status, caplog):
    caplog.set_level(logging.DEBUG)
    mocked.post(URL, status=status, body="")
    client, slept = make_client()
    with pytest.raises(AuthError) as caught:
        client.find_scene("s1")
    message = str(caught.value)
    assert message == (
        f"StashDB rejected the API key (HTTP {status}). "
        "Check the API key under Settings › Metadata Providers › Stash-box Endpoints."
    )
    assert API_KEY not in message and API_KEY not in repr(caught.value)
    assert (slept, client.requests_sent) == ([], 1)
    assert API_KEY not in caplog.text


def test_key_never_in_repr_or_retry_logs(mocked, caplog):
    caplog.set_level(logging.DEBUG)
    mocked.post(URL, status=500)
    mocked.post(URL, status=429, headers={"Retry-After": "1"})
    mocked.post(URL, json=ok_scene())
    client, _ = make_client()
    client.find_scene("s1")
    assert API_KEY not in repr(client)
    assert "retry 1/3" in caplog.text and "retry 2/3" in caplog.text
    assert API_KEY not in caplog.text


def test_unexpected_4xx_is_not_retried(mocked):
    mocked.post(URL, status=404, body="not here")
    client, slept = make_client()
    with pytest.raises(StashDBError) as caught:
        client.find_scene("s1")
    assert type(caught.value) is StashDBError
    assert (slept, client.requests_sent) == ([], 1)


def test_40_lists_sent_without_md5(mocked):
    lists = [
        [Fingerprint("OSHASH", f"{i:016x}"), Fingerprint("MD5", f"{i:032x}"), Fingerprint("PHASH", f"{i:x}")]
        for i in range(MAX_FINGERPRINT_LISTS)
    ]
    expected_variables = {
        "fingerprints": [
            [{"hash": f"{i:016x}", "algorithm": "OSHASH"}, {"hash": f"{i:x}", "algorithm": "PHASH"}]
            for i in range(MAX_FINGERPRINT_LISTS)
        ]
    }
    answer = [[scene_json(f"s{i}")] if i % 2 else [] for i in range(MAX_FINGERPRINT_LISTS)]
    mocked.post(URL, json={"data": {"findScenesBySceneFingerprints": answer}}, match=[
        matchers.json_params_matcher({
            "operationName": "FindScenesBySceneFingerprints",
            "query": FIND_SCENES_BY_FINGERPRINTS_QUERY,
            "variables": expected_variables,
        }),
    ])
    client, _ = make_client()
    result = client.find_scenes_by_fingerprints(lists)
    assert len(result) == MAX_FINGERPRINT_LISTS
    assert [len(r) for r in result] == [i % 2 for i in range(MAX_FINGERPRINT_LISTS)]
    assert result[1][0].id == "s1"


def test_more_than_40_lists_rejected_before_sending(mocked):
    client, _ = make_client()
    with pytest.raises(ValueError, match="40"):
        client.find_scenes_by_fingerprints([[Fingerprint("OSHASH", "ab")]] * 41)
    assert client.requests_sent == 0


def test_no_lists_sends_nothing(mocked):
    client, _ = make_client()
    assert client.find_scenes_by_fingerprints([]) == []
    assert client.requests_sent == 0


def test_wrong_answer_length_is_an_error(mocked):
    mocked.post(URL, json={"data": {"findScenesBySceneFingerprints": [[]]}})
    client, _ = make_client()
    with pytest.raises(StashDBError):
        client.find_scenes_by_fingerprints([[Fingerprint("OSHASH", "a")], [Fingerprint("OSHASH", "b")]])


def test_null_scenes_in_answer_are_skipped(mocked):
    mocked.post(URL, json={"data": {"findScenesBySceneFingerprints": [[None, scene_json()]]}})
    client, _ = make_client()
    assert client.find_scenes_by_fingerprints([[Fingerprint("OSHASH", "a")]]) == [[EXPECTED_SCENE]]


# -- against the fake StashDB server ---------------------------------------------------------------


@pytest.fixture
def fake(world):
    """A running fake StashDB without rate enforcement."""
    with FakeStashDB(world, api_key=API_KEY) as server:
        yield server


def fake_client(server: FakeStashDB, api_key: str = API_KEY, rate_per_s: float = 1000.0, **kwargs) -> StashDBClient:
    """A client pointed at the fake with a real limiter."""
    return StashDBClient(server.url, api_key, TokenBucket(rate_per_s), **kwargs)


def lists_for(indices) -> list[list[Fingerprint]]:
    """One fingerprint list per world scene index (OSHASH and PHASH)."""
    return [[Fingerprint("OSHASH", f"{i:016x}"), Fingerprint("PHASH", f"{i + 0x100:x}")] for i in indices]


def test_fake_batch_of_one(fake):
    client = fake_client(fake)
    result = client.find_scenes_by_fingerprints(lists_for([7]))
    assert [[s.id for s in scenes] for scenes in result] == [["s7"]]
    assert result[0][0].tags == (StashDBTag(id="tag-s7", name="Tag s7", aliases=(), deleted=False),)
    assert fake.operations == {"FindScenesBySceneFingerprints": 1}


def test_fake_batch_of_forty_keeps_order_and_dedups(fake):
    client = fake_client(fake)
    indices = list(range(39, -1, -1))
    result = client.find_scenes_by_fingerprints(lists_for(indices))
    assert len(result) == 40
    for i, scenes in zip(indices, result):
        expected = [f"s{i}", "twin"] if i == 0 else [f"s{i}"]
        assert [s.id for s in scenes] == expected
    assert fake.calls[-1]["variables"]["fingerprints"][0][1] == {"hash": "127", "algorithm": "PHASH"}


def test_fake_batch_of_41_is_refused_by_client(fake):
    client = fake_client(fake)
    with pytest.raises(ValueError):
        client.find_scenes_by_fingerprints(lists_for(range(41)))
    assert fake.requests == 0


def test_fake_answers_too_many_scenes_for_41_lists(fake):
    variables = {"fingerprints": [[{"hash": "1", "algorithm": "OSHASH"}]] * 41}
    body = {"operationName": "FindScenesBySceneFingerprints", "query": FIND_SCENES_BY_FINGERPRINTS_QUERY, "variables": variables}
    answer = requests.post(fake.url, json=body, headers={"ApiKey": API_KEY}, timeout=5).json()
    assert answer["errors"][0]["message"] == "too many scenes"


def test_fake_ignores_md5_and_matches_phash_as_integers(fake):
    client = fake_client(fake)
    result = client.find_scenes_by_fingerprints([
        [Fingerprint("MD5", "d41d8cd98f00b204e9800998ecf8427e")],
        [Fingerprint("PHASH", "000000000000010a")],
    ])
    assert [[s.id for s in scenes] for scenes in result] == [[], ["s10"]]


def test_fake_find_scene(fake):
    client = fake_client(fake)
    assert client.find_scene("s3").id == "s3"
    assert client.find_scene("missing") is None
    assert fake.operations == {"FindScene": 2}


def test_fake_rejects_unknown_field_like_stashdb(fake):
    body = {"query": "query Q { findScene(id: \"s1\") { id studio { id } } }"}
    answer = requests.post(fake.url, json=body, headers={"ApiKey": API_KEY}, timeout=5)
    assert answer.status_code == 422
    assert "studio" in answer.json()["errors"][0]["message"]


def test_fake_wrong_key_is_401_with_empty_body(fake):
    client = fake_client(fake, api_key="wrong")
    with pytest.raises(AuthError):
        client.find_scene("s1")
    answer = requests.post(fake.url, json={"query": FIND_SCENE_QUERY}, timeout=5)
    assert (answer.status_code, answer.content) == (401, b"")
    assert (fake.requests, fake.unauthorized, client.requests_sent) == (2, 2, 1)


def test_fake_injected_failures_are_retried(fake):
    fake.fail_next(2, status=502, body="bad gateway")
    client = fake_client(fake, sleep=lambda s: None)
    assert client.find_scene("s1").id == "s1"
    assert (client.requests_sent, client.retries, fake.requests) == (3, 2, 3)


def test_fake_delay_causes_read_timeout_then_retry(fake):
    fake.delay_next(1, 0.6)
    client = fake_client(fake, sleep=lambda s: None, timeout=(1.0, 0.2))
    assert client.find_scene("s2").id == "s2"
    assert (client.requests_sent, client.retries) == (2, 1)


def test_fake_enforces_rate_with_429(world):
    with FakeStashDB(world, api_key=API_KEY, max_requests_per_minute=60) as server:
        body = {"query": FIND_SCENE_QUERY, "variables": {"id": "s1"}}
        with requests.Session() as session:
            first = session.post(server.url, json=body, headers={"ApiKey": API_KEY}, timeout=5)
            second = session.post(server.url, json=body, headers={"ApiKey": API_KEY}, timeout=5)
        assert first.status_code == 200
        assert second.status_code == 429 and second.headers["Retry-After"] == "1"
        assert (server.requests, server.throttled) == (2, 1)


def test_client_at_rate_sees_no_429_from_fake_enforcing_it(world):
    rpm = 600
    # the tolerance (half the interval) absorbs scheduling jitter on a busy machine; pacing is checked below
    with FakeStashDB(world, api_key=API_KEY, max_requests_per_minute=rpm, tolerance_s=30 / rpm) as server:
        client = fake_client(server, rate_per_s=rpm / 60, max_retries=0)
        started = time.monotonic()
        for i in range(10):
            client.find_scenes_by_fingerprints(lists_for([i]))
        elapsed = time.monotonic() - started
    assert (server.throttled, client.throttled, client.retries) == (0, 0, 0)
    assert server.requests == 10
    assert elapsed >= 9 * 60 / rpm - 0.01


# -- fingerprints from Stash files -----------------------------------------------------------------


def test_fingerprints_from_stash_files_drops_md5_and_dedups():
    files = [
        {"fingerprints": [
            {"type": "md5", "value": "d41d8cd98f00b204e9800998ecf8427e"},
            {"type": "oshash", "value": "00ff00ff00ff00ff"},
            {"type": "phash", "value": "0a1f"},
        ]},
        {"fingerprints": [
            {"type": "phash", "value": "a1f"},
            {"type": "oshash", "value": "00FF00FF00FF00FF"},
            {"type": "oshash", "value": "1111111111111111"},
        ]},
        {"fingerprints": []},
        {},
    ]
    assert fingerprints_from_stash_files(files) == [
        Fingerprint("OSHASH", "00ff00ff00ff00ff"),
        Fingerprint("PHASH", "0a1f"),
        Fingerprint("OSHASH", "1111111111111111"),
    ]


def test_fingerprints_from_stash_files_skips_unreadable_phash():
    files = [{"fingerprints": [{"type": "phash", "value": "not-hex"}, {"type": "phash", "value": ""}]}]
    assert fingerprints_from_stash_files(files) == []


@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 4)), max_size=20))
def test_phash_leading_zeros_never_duplicate(phashes):
    files = [{"fingerprints": [{"type": "phash", "value": "0" * zeros + format(v, "x")} for v, zeros in phashes]}]
    result = fingerprints_from_stash_files(files)
    values = [int(fp.hash, 16) for fp in result]
    assert len(values) == len(set(values))
    assert set(values) == {v for v, _ in phashes}
