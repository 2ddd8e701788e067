"""GraphQL access to the local Stash server: connection, retry policy and shared queries.

The plugin sends its own named queries through one ``StashClient.call`` so that every request
gets the same retry policy (Stash restarting mid-run is survived; a 401 is reported at once).
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from tagman_base.errors import StashAuthError, StashError, StashQueryError, StashUnavailable
from tagman_base.stash_boxes import StashBox
from tagman_base.timestamps import http_date_epoch

log = logging.getLogger(__name__)

PLUGIN_ID = "tagManager"
# Stash has no cap on per_page; 1000 is the page size measured best for the tag sync's id pages
# and the cache (see README, Benchmarks › Page sizes).
MAX_PER_PAGE = 1000
RETRY_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0)
RETRYABLE_STATUS = {500, 502, 503, 504}
TRANSIENT_ERROR_MARKERS = ("database is locked",)

PLUGIN_CONFIG_QUERY = """
query TagManagerPluginConfig($include: [ID!]) {
  configuration { plugins(include: $include) }
}"""

STASH_BOXES_QUERY = """
query TagManagerStashBoxes {
  configuration {
    general { stashBoxes { endpoint api_key name max_requests_per_minute } }
    scraping { excludeTagPatterns }
  }
}"""


def stash_base_url(server_connection: Mapping[str, Any]) -> str:
    """Build Stash's base URL from the plugin input, mapping a 0.0.0.0 bind address to loopback."""
    scheme = server_connection.get("Scheme") or "http"
    host = server_connection.get("Host") or "localhost"
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    port = server_connection.get("Port") or 9999
    return f"{scheme}://{host}:{port}"


class StashClient:
    """Sends GraphQL requests to Stash with bounded retries on transient failures."""

    def __init__(
        self,
        session: Any,
        url: str,
        sleep: Callable[[float], None] = time.sleep,
        timeout: tuple[float, float] = (5.0, 300.0),
        backoff: tuple[float, ...] = RETRY_BACKOFF_S,
    ) -> None:
        self.session = session
        self.url = url if url.endswith("/graphql") else url.rstrip("/") + "/graphql"
        self.sleep = sleep
        self.timeout = timeout
        self.backoff = backoff
        self.requests_sent = 0
        self.session_keeper: Any = None  # stash_auth.SessionKeeper while a cookie is kept alive
        # Stash's clock (its HTTP Date header, whole UTC seconds) when it answered the latest request:
        # whatever Stash reads for a request sent afterwards, it reads at this time or later.
        self.server_epoch: int | None = None

    def __repr__(self) -> str:
        return f"StashClient(url={self.url!r})"

    def call(self, query: str, variables: Mapping[str, Any] | None = None) -> dict:
        """Run one GraphQL operation and return its ``data``; retries transient failures."""
        operation = operation_name(query)
        for attempt in range(len(self.backoff) + 1):
            failure = self._attempt(query, variables, operation)
            if isinstance(failure, dict):
                return failure
            if attempt == len(self.backoff):
                raise StashUnavailable(
                    f"Stash at {self.url} kept failing for {operation} ({failure}). "
                    "Check that Stash is running and reachable, then run the task again."
                )
            delay = self.backoff[attempt]
            log.warning(f"Stash {operation} failed ({failure}); retrying in {delay:g} s")
            self.sleep(delay)
        raise AssertionError("unreachable")

    def _attempt(self, query: str, variables: Mapping[str, Any] | None, operation: str) -> dict | str:
        """Send one request: the data on success, a reason string when worth retrying."""
        body: dict[str, Any] = {"query": query}
        if variables:
            body["variables"] = dict(variables)
        self.requests_sent += 1
        try:
            response = self.session.post(self.url, json=body, timeout=self.timeout)
        except OSError as exc:  # requests' ConnectionError and Timeout are OSErrors too
            return f"{type(exc).__name__}"
        self.server_epoch = http_date_epoch((getattr(response, "headers", None) or {}).get("Date")) or self.server_epoch
        if response.status_code in (401, 403):
            raise StashAuthError(
                f"Stash refused the request (HTTP {response.status_code}) for {operation}. "
                "The session may have expired: run the task again from Stash, "
                "or pass a valid --api-key on the command line."
            )
        if response.status_code in RETRYABLE_STATUS:
            return f"HTTP {response.status_code}"
        return self._parse(response, operation)

    def _parse(self, response: Any, operation: str) -> dict | str:
        """Turn a response into data, a retry reason, or a StashError."""
        try:
            payload = response.json()
        except ValueError:
            if response.status_code >= 400:
                raise StashError(f"Stash answered HTTP {response.status_code} to {operation}.") from None
            return "malformed response body"
        errors = payload.get("errors") if isinstance(payload, dict) else None
        if errors:
            if any(marker in str(e) for e in errors for marker in TRANSIENT_ERROR_MARKERS):
                return "database is locked"
            data = payload.get("data")
            raise StashQueryError(errors, operation, data if isinstance(data, dict) else None)
        if response.status_code >= 400:
            raise StashError(f"Stash answered HTTP {response.status_code} to {operation}.")
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), dict):
            return "response without data"
        return payload["data"]

    def call_by_ids(self, query: str, variables: Mapping[str, Any], ids_key: str = "ids",
                    empty: Callable[[dict], dict] | None = None) -> dict | None:
        """Run a lookup by ids, leaving out ids Stash no longer has; None when none is left.

        Stash's lookups by id fail as a whole when one id is missing ("scene with id 7 not found"),
        so an entity deleted a moment ago would sink the others. ``empty`` adapts the variables
        when the id list runs empty (None: there is nothing to ask).
        """
        current = dict(variables)
        while True:
            try:
                return self.call(query, current)
            except StashQueryError as exc:
                gone = missing_ids(exc)
                remaining = [i for i in current[ids_key] if str(i) not in gone]
                if not gone or len(remaining) == len(current[ids_key]):
                    raise
                log.debug(f"{operation_name(query)}: ids {', '.join(sorted(gone))} no longer exist in Stash")
                current[ids_key] = remaining
                if not remaining:
                    if empty is None:
                        return None
                    current = empty(current)

    def paginate(self, query: str, variables: Mapping[str, Any], result_key: str, list_key: str,
                 per_page: int = MAX_PER_PAGE) -> Iterator[list[dict]]:
        """Yield pages of ``result_key.list_key`` using ``filter.page``/``per_page`` (offset paging)."""
        page, seen = 1, 0
        while True:
            find_filter = dict(variables.get("filter") or {}, page=page, per_page=per_page)
            data = self.call(query, {**variables, "filter": find_filter})[result_key]
            items = data[list_key]
            if not items:
                return
            yield items
            seen += len(items)
            if seen >= data["count"]:
                return
            page += 1

    def plugin_settings(self, plugin_id: str = PLUGIN_ID) -> dict:
        """Return this plugin's settings as Stash stores them (absent ones are simply missing)."""
        plugins = self.call(PLUGIN_CONFIG_QUERY, {"include": [plugin_id]})["configuration"]["plugins"] or {}
        return dict(plugins.get(plugin_id) or {})

    def stash_boxes_and_exclusions(self) -> tuple[list[StashBox], list[str]]:
        """Return the configured stash-boxes and Stash's scraping tag-exclusion patterns."""
        config = self.call(STASH_BOXES_QUERY)["configuration"]
        boxes = [
            StashBox(b["endpoint"], b.get("api_key") or "", b.get("name") or "", int(b.get("max_requests_per_minute") or 0))
            for b in config["general"]["stashBoxes"] or []
        ]
        return boxes, list(config["scraping"].get("excludeTagPatterns") or [])


MISSING_ID = re.compile(r"with id (\d+) not found")


def missing_ids(exc: StashQueryError) -> set[str]:
    """Ids named by Stash's "<type> with id N not found" errors."""
    return {m for e in exc.errors for m in MISSING_ID.findall(str(e.get("message", "") if isinstance(e, dict) else e))}


def operation_name(query: str) -> str:
    """Return the operation name of a query string (``query Name(...)``), or 'request'."""
    words = query.replace("(", " ").replace("{", " ").split()
    for index, word in enumerate(words[:-1]):
        if word in ("query", "mutation"):
            return words[index + 1]
    return "request"


def started_by_stash(server_connection: Mapping[str, Any]) -> bool:
    """True for the connection Stash wrote to our stdin (it names the plugin folder)."""
    return bool(server_connection.get("PluginDir"))


def connect(server_connection: Mapping[str, Any], api_key: str | None = None, lean: bool = False,
            establish_session: bool = True) -> StashClient:
    """Connect to Stash with the session cookie (or an API key); ``lean`` skips stashapi's introspection.

    Every request carries one credential (see ``stash_auth``). With ``establish_session`` the run
    switches to Stash's API key when it has one, or keeps the refreshed cookie alive, so that runs
    of any length keep their session. A Stash that started us is reached at the address it gave,
    whatever its certificate (self-signed, or issued for a host name rather than the bind address);
    from the command line the certificate is verified.
    """
    from tagman_base import stash_auth

    base_url = stash_base_url(server_connection)
    cookie_info = server_connection.get("SessionCookie") or {}
    verify = not started_by_stash(server_connection)
    if lean:
        inner: Any = LeanSession(verify=verify)
    else:
        inner = _connect_with_stashapi(server_connection, base_url, api_key, verify)
    session = stash_auth.StashSession(inner, base_url, cookie=None if api_key else cookie_info.get("Value"),
                                      api_key=api_key, cookie_name=cookie_info.get("Name") or "session")
    client = StashClient(session, base_url)
    if establish_session:
        client.session_keeper = stash_auth.establish(client, session)
    return client


@dataclass(frozen=True)
class LeanResponse:
    """The part of a ``requests.Response`` that ``StashClient`` reads."""

    status_code: int
    content: bytes
    cookies: dict[str, str] = field(default_factory=dict)  # from Set-Cookie
    headers: dict[str, str] = field(default_factory=dict)  # only those StashClient reads (Date)

    def json(self) -> Any:
        """Decode the body as JSON (raises ValueError when it is not)."""
        return json.loads(self.content)


class LeanSession:
    """A ``requests.Session`` stand-in on ``http.client`` for modes that must start fast (hooks).

    Importing requests costs a hook process ~0.1-0.2 s; a hook sends one or two requests.
    Transport failures surface as OSError (ConnectionError, TimeoutError), as with requests.
    """

    def __init__(self, verify: bool = True) -> None:
        self.headers: dict[str, str] = {}
        self.cookies: dict[str, str] = {}
        self.verify = verify

    def post(self, url: str, json: Any = None, timeout: float | tuple[float, float] | None = 30.0,
             headers: Mapping[str, str] | None = None, allow_redirects: bool = False) -> LeanResponse:
        """POST a JSON body on a fresh connection and read the whole answer (redirects are never followed)."""
        parts = urlsplit(url)
        seconds = (max(timeout) if isinstance(timeout, tuple) else timeout) or 30.0
        if parts.scheme == "https":
            context = ssl.create_default_context() if self.verify else ssl._create_unverified_context()
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=seconds, context=context)
        else:
            connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=seconds)
        sent = {"Content-Type": "application/json", "Accept": "application/json", **self.headers, **(headers or {})}
        if self.cookies and "Cookie" not in sent:
            sent["Cookie"] = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        try:
            connection.request("POST", parts.path or "/", body=_json_bytes(json), headers=sent)
            answer = connection.getresponse()
            date = answer.headers.get("Date")
            return LeanResponse(answer.status, answer.read(), _set_cookies(answer.headers.get_all("Set-Cookie") or []),
                                {"Date": date} if date else {})
        except http.client.HTTPException as exc:
            raise ConnectionError(f"bad HTTP answer: {type(exc).__name__}") from None
        finally:
            connection.close()


def _set_cookies(headers: list[str]) -> dict[str, str]:
    """Cookie name -> value from a response's Set-Cookie headers."""
    from http.cookies import CookieError, SimpleCookie

    cookies: dict[str, str] = {}
    for header in headers:
        try:
            parsed = SimpleCookie(header)
        except CookieError:
            continue
        cookies.update({name: morsel.value for name, morsel in parsed.items()})
    return cookies


def _json_bytes(value: Any) -> bytes:
    """Encode a request body as compact JSON."""
    return json.dumps(value, separators=(",", ":")).encode()


def _connect_with_stashapi(server_connection: Mapping[str, Any], base_url: str, api_key: str | None,
                           verify: bool = True) -> Any:
    """Build a ``stashapi.StashInterface`` (checks the connection) and return its HTTP session."""
    import requests
    from stashapi.stashapp import StashInterface

    conn = dict(server_connection)
    conn["Logger"] = _QuietStashapiLogger()
    if api_key:
        conn["ApiKey"] = api_key
    if not verify:  # the Stash that started us, on loopback, with its own certificate: no warning per request
        import warnings

        warnings.filterwarnings("ignore", message="Unverified HTTPS request")
    try:
        stash = _one_cookie_interface(StashInterface, trust_env=verify)(conn, verify_ssl=verify)
    except requests.RequestException as exc:
        raise StashUnavailable(
            f"Could not reach Stash at {base_url} ({type(exc).__name__}). Check that Stash is running."
        ) from None
    except Exception as exc:  # stashapi raises bare Exception on HTTP errors
        if "401" in str(exc) or "403" in str(exc):
            raise StashAuthError(
                f"Stash at {base_url} refused the credentials. Run the task from Stash, or pass a valid --api-key."
            ) from None
        raise StashUnavailable(f"Could not connect to Stash at {base_url}: {exc}") from None
    return stash.s


def _one_cookie_interface(base: type, trust_env: bool = True) -> type:
    """stashapi's client, keeping exactly one session cookie in its jar: the latest one Stash issued.

    stashapi stores the task's cookie without a domain, so a refresh would be stored beside it and
    both sent (Stash reads the first). This matters only for stashapi's own start-up requests; after
    them ``stash_auth.StashSession`` sends the credential itself. Without ``trust_env`` the
    environment's CA bundle (which requests lets override ``verify=False``) and proxies are ignored:
    the Stash that started us is reached directly at the address it gave.
    """

    class OneCookieStashInterface(base):
        def _GQL(self, query, variables={}):  # noqa: B006, ANN001, ANN202, N802 - stashapi's signature
            self.s.trust_env = trust_env
            return super()._GQL(query, variables)

        def _handle_GQL_response(self, response):  # noqa: ANN001, ANN202 - stashapi's signature
            refreshed = getattr(response, "cookies", {}).get("session")
            if refreshed:
                self.s.cookies.clear()
                self.s.cookies.set("session", refreshed)
            return super()._handle_GQL_response(response)

    return OneCookieStashInterface


class _QuietStashapiLogger:
    """Routes stashapi's own log calls into this plugin's logging (so redaction applies)."""

    def __getattr__(self, level: str) -> Callable[[Any], None]:
        mapped = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.DEBUG,
                  "warning": logging.WARNING, "error": logging.DEBUG, "progress": None}.get(level, logging.DEBUG)
        if mapped is None:
            return lambda *_: None
        return lambda message, *_: log.log(mapped, f"stashapi: {message}")
