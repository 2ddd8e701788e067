"""Authentication to the Stash that started us, kept valid for runs of any length.

Stash hands a task a session cookie signed with the time the task started; once it is older than
``max_session_age`` (3600 s by default) Stash answers HTTP 401 when it has a login. Stash refreshes
the cookie with every answer (``Set-Cookie``), but a client that keeps the original and adds the
refreshed one sends two ``session`` cookies, and Stash reads the first (stashapp/stash#5332).

``StashSession`` wraps the HTTP session (``requests`` or the lean ``http.client`` one) and sends
exactly one credential with every request:

- the ``ApiKey`` header when Stash has an API key (read once at start with the cookie, through
  ``configuration { general { apiKey } }``; never logged or stored), else
- the latest ``session`` cookie, replaced by every refresh; a ``SessionKeeper`` thread sends a tiny
  request when Stash has heard nothing for half the session age (a long StashDB phase, a long
  watch interval), so that the cookie never ages out.

Credentials go only to the Stash address we were started with: no redirect is followed, and a
request for any other address is refused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from tagman_base import plugin_log
from tagman_base.errors import StashError

log = logging.getLogger(__name__)

COOKIE_NAME = "session"
KEEPALIVE_FRACTION = 0.5  # ping when Stash has heard nothing for this share of the session age

SESSION_QUERY = """
query TagManagerSession {
  configuration { general { apiKey maxSessionAge } }
}"""

KEEPALIVE_QUERY = """
query TagManagerKeepAlive {
  version { version }
}"""


class StashSession:
    """An HTTP session for one Stash that sends one credential per request and honours refreshes."""

    def __init__(self, inner: Any, base_url: str, cookie: str | None = None, api_key: str | None = None,
                 cookie_name: str = COOKIE_NAME, clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = inner
        self.origin = _origin(base_url)
        self.cookie_name = cookie_name or COOKIE_NAME
        self._cookie = cookie or None
        self._api_key = api_key or None
        self.clock = clock
        self.last_request = clock()
        self.refreshes = 0
        self._lock = threading.Lock()
        _forget_stored_credentials(inner)
        plugin_log.redactor.add(cookie)
        plugin_log.redactor.add(api_key)

    def __repr__(self) -> str:
        return f"StashSession(origin={self.origin!r}, credential={self.credential_kind!r})"

    @property
    def credential_kind(self) -> str:
        """``apikey``, ``cookie`` or ``none`` (never the value)."""
        return "apikey" if self._api_key else "cookie" if self._cookie else "none"

    def use_api_key(self, api_key: str) -> None:
        """From now on authenticate with Stash's API key instead of the session cookie."""
        plugin_log.redactor.add(api_key)
        with self._lock:
            self._api_key = api_key
            self._cookie = None

    def credential_headers(self) -> dict[str, str]:
        """The one header that authenticates the next request."""
        if self._api_key:
            return {"ApiKey": self._api_key}
        if self._cookie:
            return {"Cookie": f"{self.cookie_name}={self._cookie}"}
        return {}

    def post(self, url: str, json: Any = None, timeout: Any = None) -> Any:
        """POST to Stash with the current credential; keep the refreshed cookie of the answer."""
        if _origin(url) != self.origin:
            raise StashError(f"refusing to send Stash credentials to {_origin(url)} (Stash is {self.origin})")
        with self._lock:
            headers = self.credential_headers()
            response = self.inner.post(url, json=json, timeout=timeout, headers=headers, allow_redirects=False)
            self.last_request = self.clock()
            self._take_refresh(response)
        return response

    def _take_refresh(self, response: Any) -> None:
        """Replace the cookie with the one Stash just issued (the old one must not be sent again)."""
        refreshed = _response_cookie(response, self.cookie_name)
        _forget_stored_credentials(self.inner)
        if refreshed and self._cookie and not self._api_key and refreshed != self._cookie:
            plugin_log.redactor.add(refreshed)
            if self.refreshes:  # keep the redactor small on long runs: the task's own cookie and the latest
                plugin_log.redactor.secrets.discard(self._cookie)
            self._cookie = refreshed
            self.refreshes += 1


def _origin(url: str) -> str:
    """scheme://host:port of a URL, lower-case, with the default port filled in."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}:{port}"


def _forget_stored_credentials(inner: Any) -> None:
    """Empty the wrapped session's cookie jar and drop its ApiKey header (we send them ourselves)."""
    cookies = getattr(inner, "cookies", None)
    if cookies is not None:
        cookies.clear()
    headers = getattr(inner, "headers", None)
    if headers is not None:
        headers.pop("ApiKey", None)


def _response_cookie(response: Any, name: str) -> str | None:
    """The value of a cookie set by a response (requests' jar or the lean response's dict)."""
    cookies = getattr(response, "cookies", None)
    if cookies is None:
        return None
    try:
        return cookies.get(name)
    except Exception:  # noqa: BLE001 - a jar with two cookies of that name: take none
        return None


class SessionKeeper:
    """Sends Stash a tiny request whenever it has heard nothing for half the session age."""

    def __init__(self, session: StashSession, send: Callable[[], Any], max_age_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.session = session
        self.send = send
        self.idle_limit = max(1.0, max_age_s * KEEPALIVE_FRACTION)
        self.clock = clock
        self.pings = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def due(self) -> bool:
        """True when Stash has heard nothing from us for ``idle_limit`` seconds."""
        return self.clock() - self.session.last_request >= self.idle_limit

    def tick(self) -> None:
        """Ping Stash if due (a failed ping is only logged: the next request reports a real problem)."""
        if not self.due():
            return
        try:
            self.send()
            self.pings += 1
        except (OSError, StashError) as exc:
            log.debug(f"session keep-alive failed: {type(exc).__name__}")

    def start(self) -> SessionKeeper:
        """Run ``tick`` in a daemon thread, checking four times per idle limit."""
        def loop() -> None:
            while not self._stop.wait(self.idle_limit / 4):
                self.tick()

        self._thread = threading.Thread(target=loop, name="stash-session-keeper", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread (it also dies with the process)."""
        self._stop.set()


def establish(client: Any, session: StashSession) -> SessionKeeper | None:
    """Switch to Stash's API key if it has one; otherwise keep the cookie alive. Return the keeper."""
    if session.credential_kind != "cookie":
        return None
    general = client.call(SESSION_QUERY)["configuration"]["general"]
    api_key = general.get("apiKey") or ""
    if api_key:
        session.use_api_key(api_key)
        log.debug("Authenticating to Stash with its API key for the rest of the run")
        return None
    max_age = float(general.get("maxSessionAge") or 0)
    if max_age <= 0:
        return None
    def ping() -> None:
        session.post(client.url, json={"query": KEEPALIVE_QUERY}, timeout=client.timeout)

    return SessionKeeper(session, ping, max_age).start()
