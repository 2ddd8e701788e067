"""A fake stash-box (StashDB) GraphQL server over an in-memory world, for tests, demos and benchmarks.

World shape::

    {"scenes": {"<uuid>": {"id", "title", "deleted", "tags": [{"id", "name", "aliases", "deleted"}],
                           "fingerprints": [{"algorithm", "hash", "duration"}], "updated"}},
     "tags": {"<uuid>": {"id", "name", "aliases", "deleted"}}}   # optional: else the scenes' tags

``queryTags`` answers as stash-box's resolver does (internal/service/tag/query.go): deleted tags are
never listed, ``count`` is the number of live tags, rows are ordered by the sort field and paged
with LIMIT/OFFSET (``page`` below 1 means 1, ``per_page`` below 1 means 25, no upper cap), and
aliases come sorted. (Postgres orders names by its collation; only a stable order matters here.)

``updated`` is stash-box's microsecond UTC text; scenes without one get a fixed 2025 instant at
start. ``edit_scene`` and ``merge_scenes`` model applied edits as stash-box applies them (see
``../shared/reference/stash-behaviour.md``): deleted scenes are never returned by fingerprint,
``findScene`` returns them with ``deleted: true`` and does not follow merges. ``queryScenes``
serves only ``sort: UPDATED_AT`` (by instant, then id), lists live scenes only, counts them, and
takes any ``per_page``.

Requests are executed with graphql-core against ``stashdb_fake.graphql``, a strict subset of the
real stash-box schema, so a query with a wrong field fails as it would against StashDB.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from graphql import GraphQLError, build_schema, graphql_sync, parse, validate

SDL_PATH = Path(__file__).with_name("stashdb_fake.graphql")
MAX_FINGERPRINT_LISTS = 40
DEFAULT_API_KEY = "fake-stashdb-key"
DEFAULT_TAGS_PER_PAGE = 25
TAG_SORT_FIELDS = {"NAME": "name", "CREATED_AT": "created", "UPDATED_AT": "updated"}
INITIAL_UPDATED = datetime(2025, 1, 1, tzinfo=timezone.utc)


def stashbox_time(moment: datetime) -> str:
    """stash-box's ``updated`` text: UTC, microseconds with trailing zeros dropped (Go's RFC3339Nano)."""
    text = moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return text + "Z"


def updated_instant(text: str) -> datetime:
    """The instant of an ``updated`` text."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def stamp_missing_updated(world: dict) -> None:
    """Give every scene without ``updated`` a distinct fixed instant before 2025 (an hour apart, in world order)."""
    scenes = list(world.get("scenes", {}).values())
    for index, scene in enumerate(scenes):
        if not scene.get("updated"):
            scene["updated"] = stashbox_time(INITIAL_UPDATED - timedelta(hours=len(scenes) - index))


def load_schema():
    """The fake's GraphQL schema."""
    return build_schema(SDL_PATH.read_text(encoding="utf-8"))


def fingerprint_key(algorithm: str, value: str) -> tuple[str, object] | None:
    """Index key of a fingerprint: PHASH by integer value, others by lower-case text; None if unusable."""
    algorithm = str(algorithm).upper()
    if algorithm == "PHASH":
        try:
            return ("PHASH", int(str(value), 16))
        except ValueError:
            return None
    return (algorithm, str(value).strip().lower())


def build_fingerprint_index(world: dict) -> dict[tuple[str, object], list[str]]:
    """Map each fingerprint key to the ids of the scenes carrying it, in world order."""
    index: dict[tuple[str, object], list[str]] = {}
    for scene_id, scene in world.get("scenes", {}).items():
        for fp in scene.get("fingerprints", ()):
            key = fingerprint_key(fp["algorithm"], fp["hash"])
            if key is not None and scene_id not in index.setdefault(key, []):
                index[key].append(scene_id)
    return index


class FakeStashDB:
    """A stash-box look-alike on 127.0.0.1 with API-key auth, optional rate enforcement and fault injection.

    With `max_requests_per_minute` set, a request arriving more than `tolerance_s` earlier than
    60/rate seconds after the previous accepted one gets HTTP 429; the tolerance absorbs the
    scheduling jitter between a client's limiter and the server's clock on a busy machine.
    """

    def __init__(
        self,
        world: dict | None,
        api_key: str = DEFAULT_API_KEY,
        max_requests_per_minute: float | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        tolerance_s: float = 0.02,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.clock = clock
        self.api_key = api_key
        self.max_requests_per_minute = max_requests_per_minute
        self.tolerance_s = tolerance_s
        self.schema = load_schema()
        if world is not None:
            self.load_world(world)
        self._host, self._port = host, port
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._failures: list[tuple[int, bytes, dict, str | None]] = []
        self._delays: list[float] = []
        self._last_accepted: float | None = None
        self.reset_counters()

    def load_world(self, world: dict) -> None:
        """Serve ``world``: a fake started without one (to learn its port first) is given it here."""
        stamp_missing_updated(world)
        self.world = world
        self.index = build_fingerprint_index(world)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakeStashDB:
        """Start serving in a daemon thread; return self."""
        if self._server is not None:
            return self
        self._server = _Server((self._host, self._port), _Handler)
        self._server.fake = self
        self._port = self._server.server_address[1]  # a restart comes back on the same port
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-stashdb", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeStashDB:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The GraphQL endpoint URL (server must be started)."""
        if self._server is None:
            raise RuntimeError("FakeStashDB is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/graphql"

    # -- counters and fault injection ----------------------------------------------------------

    def reset_counters(self) -> None:
        """Zero every counter and forget recorded calls."""
        with self._lock:
            self.requests = 0
            self.throttled = 0
            self.unauthorized = 0
            self.anonymous = 0
            self.operations: Counter[str] = Counter()
            self.calls: list[dict] = []
            self.user_agents: list[str | None] = []  # the User-Agent header of every request

    def fail_next(self, n: int = 1, status: int = 500, body: bytes | str = b"", headers: dict | None = None,
                  operation: str | None = None) -> None:
        """Answer the next `n` authorised requests (of `operation` only, when given) with this status, body
        and headers instead of executing them."""
        raw = body.encode() if isinstance(body, str) else bytes(body)
        with self._lock:
            self._failures.extend([(status, raw, dict(headers or {}), operation)] * n)

    def delay_next(self, n: int = 1, seconds: float = 1.0) -> None:
        """Wait `seconds` before answering each of the next `n` authorised requests."""
        with self._lock:
            self._delays.extend([seconds] * n)

    # -- edits, as stash-box applies them ------------------------------------------------------

    def edit_scene(self, scene_id: str, tags: list[dict] | None = None, started_at: datetime | None = None) -> str:
        """Apply an edit to a scene (new tag list): ``updated`` becomes the edit's start; returns it.

        stash-box stamps ``now()``, the transaction's start, so an edit that commits late can carry
        an ``updated`` older than one a reader has already seen: pass ``started_at`` to model that.
        """
        with self._lock:
            scene = self.world["scenes"][scene_id]
            if tags is not None:
                scene["tags"] = list(tags)
            scene["updated"] = stashbox_time(started_at or self.clock())
            return scene["updated"]

    def merge_scenes(self, source_id: str, target_id: str) -> None:
        """Merge one scene into another: the source is deleted, its fingerprints move, both sides' ``updated`` move."""
        with self._lock:
            scenes = self.world["scenes"]
            source, target = scenes[source_id], scenes[target_id]
            now = stashbox_time(self.clock())
            target["fingerprints"] = list(target.get("fingerprints", ())) + list(source.get("fingerprints", ()))
            source["fingerprints"] = []
            source["deleted"] = True
            source["updated"] = target["updated"] = now
            self.index = build_fingerprint_index(self.world)

    def delete_scene(self, scene_id: str) -> None:
        """Delete a scene as an applied destroy edit does (``deleted`` set, ``updated`` moves)."""
        with self._lock:
            scene = self.world["scenes"][scene_id]
            scene["deleted"] = True
            scene["updated"] = stashbox_time(self.clock())

    # -- request handling (called from handler threads) ----------------------------------------

    def admit(self, api_key: str | None, arrived: float,
              user_agent: str | None = None, operation: str | None = None
              ) -> tuple[tuple[int, bytes, dict] | None, float]:
        """Count a request; return (refusal or None to execute it, seconds to stall first).

        A missing or empty key is anonymous: stash-box executes the request, and every field
        guarded by ``@hasRole(READ)`` answers "not authorized" (see ``execute``). A wrong
        non-empty key is HTTP 401 with an empty body.
        """
        with self._lock:
            self.requests += 1
            self.user_agents.append(user_agent)
            if not api_key:
                self.anonymous += 1
                return None, 0.0
            if api_key != self.api_key:
                self.unauthorized += 1
                return (401, b"", {}), 0.0
            retry_after = self._too_soon(arrived)
            if retry_after is not None:
                self.throttled += 1
                return (429, b"rate limited", {"Retry-After": str(retry_after), "Content-Type": "text/plain"}), 0.0
            self._last_accepted = arrived
            delay = self._delays.pop(0) if self._delays else 0.0
            return self._take_failure(operation), delay

    def _take_failure(self, operation: str | None) -> tuple[int, bytes, dict] | None:
        """The first queued failure meant for this operation (or for any), removed from the queue."""
        for index, (status, body, headers, wanted) in enumerate(self._failures):
            if wanted is None or wanted == operation:
                del self._failures[index]
                return status, body, headers
        return None

    def _too_soon(self, arrived: float) -> int | None:
        """Whole seconds to put in Retry-After if this request beats the rate; None if it is on time."""
        if not self.max_requests_per_minute or self._last_accepted is None:
            return None
        interval = 60.0 / self.max_requests_per_minute
        early_by = self._last_accepted + interval - arrived
        if early_by <= self.tolerance_s:
            return None
        return max(1, math.ceil(early_by))

    def execute(self, payload: object, anonymous: bool = False) -> tuple[int, dict]:
        """Run one GraphQL request body; return (HTTP status, JSON answer) as gqlgen would."""
        if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
            return 400, {"errors": [{"message": "no query in request body"}], "data": None}
        variables = payload.get("variables") or {}
        try:
            document = parse(payload["query"])
        except GraphQLError as error:
            return 422, {"errors": [error.formatted], "data": None}
        problems = validate(self.schema, document)
        if problems:
            return 422, {"errors": [p.formatted for p in problems], "data": None}
        self._record(payload, document, variables)
        if anonymous:  # every query field of ours is guarded by @hasRole(READ)
            fields = [sel.name.value for op in document.definitions for sel in op.selection_set.selections]
            return 200, {"errors": [{"message": "not authorized", "path": [f]} for f in fields], "data": None}
        result = graphql_sync(
            self.schema, payload["query"], root_value=self._root(), variable_values=variables,
            operation_name=payload.get("operationName"),
        )
        return 200, result.formatted

    def _record(self, payload: dict, document, variables: dict) -> None:
        """Count the call under its operation name and keep its variables."""
        name = payload.get("operationName") or _first_operation_name(document) or "anonymous"
        with self._lock:
            self.operations[name] += 1
            self.calls.append({"operation": name, "variables": variables})

    def _root(self) -> dict:
        """Root resolvers for the Query type."""
        return {"findScene": self._find_scene, "findScenesBySceneFingerprints": self._find_by_fingerprints,
                "queryTags": self._query_tags, "queryScenes": self._query_scenes}

    def _query_tags(self, _info, input: dict):  # noqa: A002 - GraphQL argument name
        """Resolve queryTags: live tags only, sorted, LIMIT/OFFSET paging without a cap."""
        live = [tag for tag in self._tag_pool() if not tag.get("deleted")]
        field = TAG_SORT_FIELDS[input["sort"]]
        live.sort(key=lambda tag: str(tag.get(field) or ""), reverse=input["direction"] == "DESC")
        page = max(1, input["page"])
        per_page = input["per_page"] if input["per_page"] > 0 else DEFAULT_TAGS_PER_PAGE
        start = (page - 1) * per_page
        rows = live[start:start + per_page]
        return {"count": len(live), "tags": [dict(tag, aliases=sorted(tag.get("aliases") or ())) for tag in rows]}

    def _tag_pool(self) -> list[dict]:
        """Every StashDB tag: the world's tag list, else the distinct tags of its scenes."""
        if "tags" in self.world:
            return list(self.world["tags"].values())
        pool: dict[str, dict] = {}
        for scene in self.world.get("scenes", {}).values():
            for tag in scene.get("tags", ()):
                pool.setdefault(tag["id"], tag)
        return list(pool.values())

    def _query_scenes(self, _info, input: dict):  # noqa: A002 - GraphQL argument name
        """Resolve queryScenes sorted by UPDATED_AT: live scenes only, offset paging, no per_page cap."""
        if input["sort"] != "UPDATED_AT":
            raise GraphQLError("the fake StashDB sorts queryScenes by UPDATED_AT only")
        with self._lock:
            live = [s for s in self.world.get("scenes", {}).values() if not s.get("deleted")]
        # stash-box orders by the timestamp column; its text drops trailing zeros, so order by instant
        live.sort(key=lambda s: (updated_instant(s["updated"]), s["id"]), reverse=input["direction"] == "DESC")
        page, per_page = max(1, input["page"]), input["per_page"]
        start = (page - 1) * per_page if per_page >= 0 else 0
        return {"count": len(live), "scenes": live[start:start + per_page] if per_page >= 0 else live}

    def _find_scene(self, _info, id: str):  # noqa: A002 - GraphQL argument name
        """Resolve findScene."""
        return self.world.get("scenes", {}).get(id)

    def _find_by_fingerprints(self, _info, fingerprints: list[list[dict]]):
        """Resolve findScenesBySceneFingerprints: per input list, the scenes carrying any of its hashes."""
        if len(fingerprints) > MAX_FINGERPRINT_LISTS:
            raise GraphQLError("too many scenes")
        return [self._scenes_matching(group) for group in fingerprints]

    def _scenes_matching(self, group: list[dict]) -> list[dict]:
        """Live scenes having any fingerprint of the group, deduplicated; MD5 is ignored like StashDB does
        and deleted scenes are never returned (``scene.sql`` filters ``deleted = false``)."""
        scenes = self.world.get("scenes", {})
        ids: list[str] = []
        for fp in group:
            if fp["algorithm"] == "MD5":
                continue
            for scene_id in self.index.get(fingerprint_key(fp["algorithm"], fp["hash"]), ()):
                if scene_id not in ids:
                    ids.append(scene_id)
        return [scenes[i] for i in ids if not scenes[i].get("deleted")]


def _first_operation_name(document) -> str | None:
    """Name of the first operation in a parsed document."""
    for definition in document.definitions:
        name = getattr(definition, "name", None)
        if getattr(definition, "operation", None) is not None:
            return name.value if name else None
    return None


class _Server(ThreadingHTTPServer):
    """Threaded HTTP server that does not wait for idle keep-alive connections on close."""

    daemon_threads = True
    block_on_close = False
    fake: FakeStashDB


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 handler for POST /graphql."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 30
    server: _Server

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        """Authenticate, rate-check, inject faults, then execute the GraphQL request."""
        arrived = time.monotonic()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.split("?")[0].rstrip("/") != "/graphql":
            self._send(404, b"not found", {"Content-Type": "text/plain"})
            return
        fake = self.server.fake
        api_key = self.headers.get("ApiKey")
        payload = _decode(body)
        operation = payload.get("operationName") if isinstance(payload, dict) else None
        refusal, delay = fake.admit(api_key, arrived, self.headers.get("User-Agent"), operation)
        if delay:
            time.sleep(delay)
        if refusal is not None:
            self._send(*refusal)
            return
        self._send_json(*(fake.execute(payload) if api_key else fake.execute(payload, anonymous=True)))

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        """Only POST is served."""
        self._send(405, b"use POST", {"Content-Type": "text/plain", "Allow": "POST"})

    def _send_json(self, status: int, answer: dict) -> None:
        """Send a JSON answer."""
        self._send(status, json.dumps(answer).encode(), {"Content-Type": "application/json"})

    def _send(self, status: int, body: bytes, headers: dict) -> None:
        """Send a complete answer, ignoring clients that already hung up."""
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - signature of the base class
        """Stay quiet; tests read counters instead."""


def _decode(body: bytes) -> object:
    """The JSON request body, or None when it is not JSON."""
    try:
        return json.loads(body or b"null")
    except ValueError:
        return None


def main(argv: list[str] | None = None) -> None:
    """Serve a world file until interrupted, printing one JSON line with the URL when ready."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--world", type=Path, help="JSON file with the world (default: empty world)")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--rpm", type=float, default=None, help="enforce this many requests per minute")
    args = parser.parse_args(argv)
    world = json.loads(args.world.read_text(encoding="utf-8")) if args.world else {"scenes": {}}
    fake = FakeStashDB(world, api_key=args.api_key, max_requests_per_minute=args.rpm, host=args.host, port=args.port)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with fake:
        print(json.dumps({"url": fake.url}), flush=True)
        try:
            stopped.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
