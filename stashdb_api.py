"""Client for a stash-box (StashDB) GraphQL endpoint: rate limiting, retries and typed answers."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import requests

from tagman_base.errors import AuthError, GraphQLQueryError, RateLimitedError, StashDBError, StashDBUnavailable

log = logging.getLogger(__name__)

MAX_FINGERPRINT_LISTS = 40
DEFAULT_BOX_REQUESTS_PER_MINUTE = 240
MAX_RETRY_AFTER_S = 300.0
SENT_ALGORITHMS = ("OSHASH", "PHASH")

SCENE_SELECTION = "id deleted tags { id name aliases deleted }"

FIND_SCENES_BY_FINGERPRINTS_QUERY = (
    "query FindScenesBySceneFingerprints($fingerprints: [[FingerprintQueryInput!]!]!) {\n"
    f"  findScenesBySceneFingerprints(fingerprints: $fingerprints) {{ {SCENE_SELECTION} }}\n"
    "}"
)

FIND_SCENE_QUERY = (
    "query FindScene($id: ID!) {\n"
    f"  findScene(id: $id) {{ {SCENE_SELECTION} }}\n"
    "}"
)

AUTH_MESSAGE = (
    "StashDB rejected the API key (HTTP {status}). "
    "Check the API key under Settings › Metadata Providers › Stash-box Endpoints."
)


class TokenBucket:
    """Thread-safe token bucket: `rate_per_s` tokens a second, at most `burst` saved up."""

    def __init__(self, rate_per_s: float, burst: int = 1, clock=time.monotonic, sleep=time.sleep) -> None:
        if not (rate_per_s > 0 and math.isfinite(rate_per_s)):
            raise ValueError(f"rate_per_s must be a positive finite number, got {rate_per_s!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        self.rate_per_s = float(rate_per_s)
        self.burst = int(burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._stamp = clock()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TokenBucket(rate_per_s={self.rate_per_s!r}, burst={self.burst!r})"

    def acquire(self) -> float:
        """Block until a token is available; return seconds waited."""
        wait = self._reserve()
        if wait > 0:
            self._sleep(wait)
        return wait

    def _reserve(self) -> float:
        """Take a token now, going into debt if needed; return how long the debt takes to clear."""
        with self._lock:
            now = self._clock()
            refill = max(0.0, now - self._stamp) * self.rate_per_s
            self._tokens = min(float(self.burst), self._tokens + refill) - 1.0
            self._stamp = now
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate_per_s


def effective_rate_per_minute(
    box_max_requests_per_minute: int | None, user_max_requests_per_minute: float | None
) -> float:
    """Box's limit (0/None means 240), lowered — never raised — by the user's setting (None = not set)."""
    box_rate = float(box_max_requests_per_minute or 0)
    if box_rate <= 0:
        box_rate = float(DEFAULT_BOX_REQUESTS_PER_MINUTE)
    if user_max_requests_per_minute is None or user_max_requests_per_minute == 0:
        return box_rate
    if user_max_requests_per_minute < 0:
        raise ValueError(f"max requests per minute must be positive, got {user_max_requests_per_minute!r}")
    return min(box_rate, float(user_max_requests_per_minute))


@dataclass(frozen=True)
class Fingerprint:
    """One fingerprint as StashDB matches it."""

    algorithm: str  # "OSHASH" | "PHASH"
    hash: str


@dataclass(frozen=True)
class StashDBTag:
    """A tag as StashDB reports it on a scene."""

    id: str
    name: str
    aliases: tuple[str, ...]
    deleted: bool


@dataclass(frozen=True)
class StashDBScene:
    """A StashDB scene reduced to what tag syncing needs."""

    id: str
    deleted: bool
    tags: tuple[StashDBTag, ...]


def _tag_from_json(tag: dict) -> StashDBTag:
    """Build a StashDBTag from its GraphQL answer."""
    return StashDBTag(
        id=str(tag["id"]),
        name=str(tag["name"]),
        aliases=tuple(str(a) for a in tag.get("aliases") or ()),
        deleted=bool(tag.get("deleted", False)),
    )


def _scene_from_json(scene: dict) -> StashDBScene:
    """Build a StashDBScene from its GraphQL answer."""
    return StashDBScene(
        id=str(scene["id"]),
        deleted=bool(scene.get("deleted", False)),
        tags=tuple(_tag_from_json(t) for t in scene.get("tags") or ()),
    )


def _fingerprint_variables(fingerprints: Sequence[Fingerprint]) -> list[dict]:
    """Fingerprints as FingerprintQueryInput values; MD5 is left out because StashDB ignores it."""
    return [{"hash": fp.hash, "algorithm": fp.algorithm} for fp in fingerprints if fp.algorithm in SENT_ALGORITHMS]


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or HTTP-date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        seconds = _seconds_until_http_date(value, now)
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


def _seconds_until_http_date(value: str, now: datetime | None) -> float | None:
    """Seconds from `now` until an HTTP-date; None if it is not one."""
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return (when - (now or datetime.now(timezone.utc))).total_seconds()


class _Retry(Exception):
    """Internal: this attempt failed in a way worth retrying."""

    def __init__(self, reason: str, rate_limited: bool = False, delay: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rate_limited = rate_limited
        self.delay = delay


class StashDBClient:
    """Talks to one stash-box endpoint; every HTTP request takes a token from the shared limiter first."""

    def __init__(
        self,
        endpoint: str,
        api_key: str,
        limiter: TokenBucket,
        session: requests.Session | None = None,
        sleep=time.sleep,
        timeout: tuple[float, float] = (5.0, 30.0),
        max_retries: int = 3,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {max_retries!r}")
        self.endpoint = endpoint
        self._api_key = api_key
        self.limiter = limiter
        self.session = session if session is not None else requests.Session()
        self._sleep = sleep
        self.timeout = timeout
        self.max_retries = max_retries
        self.requests_sent = 0
        self.retries = 0
        self.throttled = 0
        self._counter_lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"StashDBClient(endpoint={self.endpoint!r}, requests_sent={self.requests_sent}, "
            f"retries={self.retries}, throttled={self.throttled})"
        )

    def find_scenes_by_fingerprints(self, fingerprint_lists: Sequence[Sequence[Fingerprint]]) -> list[list[StashDBScene]]:
        """One list of matching scenes per fingerprint list, in the same order (at most 40 lists)."""
        if len(fingerprint_lists) > MAX_FINGERPRINT_LISTS:
            raise ValueError(
                f"at most {MAX_FINGERPRINT_LISTS} fingerprint lists per request, got {len(fingerprint_lists)}"
            )
        if not fingerprint_lists:
            return []
        variables = {"fingerprints": [_fingerprint_variables(fps) for fps in fingerprint_lists]}
        data = self._execute("FindScenesBySceneFingerprints", FIND_SCENES_BY_FINGERPRINTS_QUERY, variables)
        matches = data.get("findScenesBySceneFingerprints")
        if not isinstance(matches, list) or len(matches) != len(fingerprint_lists):
            raise StashDBError(
                f"StashDB answered FindScenesBySceneFingerprints with {_shape(matches)} "
                f"for {len(fingerprint_lists)} fingerprint lists"
            )
        return [[_scene_from_json(s) for s in scenes or () if s is not None] for scenes in matches]

    def find_scene(self, scene_id: str) -> StashDBScene | None:
        """The scene with this StashDB id, or None when StashDB has none."""
        data = self._execute("FindScene", FIND_SCENE_QUERY, {"id": scene_id})
        scene = data.get("findScene")
        return _scene_from_json(scene) if scene is not None else None

    def _execute(self, operation: str, query: str, variables: dict) -> dict:
        """Send one GraphQL operation with the retry policy; return its `data`."""
        payload = {"operationName": operation, "query": query, "variables": variables}
        for attempt in range(self.max_retries + 1):
            try:
                return self._attempt(operation, payload, is_retry=attempt > 0)
            except _Retry as failure:
                if attempt >= self.max_retries:
                    raise self._final_error(operation, failure) from None
                delay = failure.delay if failure.delay is not None else float(2**attempt)
                log.warning(
                    "StashDB %s failed (%s); retry %d/%d in %.1f s",
                    operation, failure.reason, attempt + 1, self.max_retries, delay,
                )
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _final_error(self, operation: str, failure: _Retry) -> StashDBError:
        """The typed error for an operation that failed on every attempt."""
        tries = f"after {self.max_retries} retries"
        if failure.rate_limited:
            return RateLimitedError(
                f"StashDB kept answering HTTP 429 (rate limited) to {operation} {tries}. "
                "Lower the plugin's requests-per-minute setting or try again later."
            )
        return StashDBUnavailable(f"StashDB at {self.endpoint} failed {operation} {tries}: {failure.reason}")

    def _attempt(self, operation: str, payload: dict, is_retry: bool) -> dict:
        """One HTTP request (after taking a limiter token); return `data` or raise."""
        self.limiter.acquire()
        with self._counter_lock:
            self.requests_sent += 1
            self.retries += int(is_retry)
        try:
            response = self.session.post(self.endpoint, json=payload, headers=self._headers(), timeout=self.timeout)
        except requests.Timeout as exc:
            raise _Retry(f"timed out ({type(exc).__name__})") from None
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise _Retry(f"connection failed ({type(exc).__name__})") from None
        except requests.RequestException as exc:
            raise StashDBError(f"Cannot send {operation} to StashDB at {self.endpoint}: {type(exc).__name__}") from None
        return self._read_answer(operation, response)

    def _headers(self) -> dict:
        """Request headers, including the API key."""
        return {"ApiKey": self._api_key, "Accept": "application/json", "Content-Type": "application/json"}

    def _read_answer(self, operation: str, response: requests.Response) -> dict:
        """Classify an HTTP answer: return `data`, raise a typed error, or raise _Retry."""
        status = response.status_code
        if status in (401, 403):
            raise AuthError(AUTH_MESSAGE.format(status=status))
        if status == 429:
            with self._counter_lock:
                self.throttled += 1
            raise _Retry("HTTP 429", rate_limited=True, delay=retry_after_seconds(response.headers.get("Retry-After")))
        if status >= 500:
            raise _Retry(f"HTTP {status}")
        body = _json_or_none(response)
        if isinstance(body, dict) and body.get("errors"):
            raise GraphQLQueryError(body["errors"], operation)
        if status != 200:
            raise StashDBError(f"StashDB at {self.endpoint} answered {operation} with HTTP {status}")
        if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
            raise _Retry("malformed answer (not JSON or no data)")
        return body["data"]


def _json_or_none(response: requests.Response):
    """The decoded JSON body, or None when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def _shape(value) -> str:
    """A short description of an unexpected answer."""
    if isinstance(value, list):
        return f"{len(value)} lists"
    return type(value).__name__


def fingerprints_from_stash_files(files: list[dict]) -> list[Fingerprint]:
    """From Stash scene `files { fingerprints { type value } }`: OSHASH and PHASH only (md5 dropped), de-duplicated; hashes compared as integers (hex) so '0a1f' and 'a1f' are one phash."""
    seen: set[tuple[str, object]] = set()
    result: list[Fingerprint] = []
    for file in files or ():
        for raw in file.get("fingerprints") or ():
            fingerprint = _stash_fingerprint(raw)
            if fingerprint is None:
                continue
            key = _fingerprint_key(fingerprint)
            if key not in seen:
                seen.add(key)
                result.append(fingerprint)
    return result


def _stash_fingerprint(raw: dict) -> Fingerprint | None:
    """One Stash `{type, value}` fingerprint as a Fingerprint, or None for MD5, unknown or unreadable ones."""
    algorithm = str(raw.get("type") or "").upper()
    value = raw.get("value")
    if algorithm not in SENT_ALGORITHMS or value is None or value == "":
        return None
    if isinstance(value, int):
        value = format(value & 0xFFFFFFFFFFFFFFFF, "x")
    value = str(value).strip()
    if algorithm == "PHASH" and _hex_int(value) is None:
        log.debug("Skipping unreadable phash %r", value)
        return None
    return Fingerprint(algorithm=algorithm, hash=value)


def _fingerprint_key(fingerprint: Fingerprint) -> tuple[str, object]:
    """Identity of a fingerprint: phash by integer value, others by lower-case text."""
    if fingerprint.algorithm == "PHASH":
        return ("PHASH", _hex_int(fingerprint.hash))
    return (fingerprint.algorithm, fingerprint.hash.lower())


def _hex_int(value: str) -> int | None:
    """A hex string as an integer, or None when it is not hex."""
    try:
        return int(value, 16)
    except ValueError:
        return None
