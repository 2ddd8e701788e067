"""Sessions and API-key authentication as the real Stash does them, for the fake Stash.

- A session cookie carries the time it was issued (Stash signs a timestamp into it); once it is
  older than ``max_age`` seconds (``max_session_age``, 3600 by default) it authenticates nobody and
  ``/graphql`` answers HTTP 401.
- Every request authenticated by a cookie answers with ``Set-Cookie: session=<refreshed>``.
- When a request carries two ``session`` cookies, the first one counts (Go's ``r.Cookie``).
- An ``ApiKey`` header authenticates when it equals the configured key; a wrong one is 401 even
  beside a valid cookie.

The clock is injectable, and ``seconds_per_request`` ages the world by a fixed amount on every
request, so that tests can expire sessions deterministically (no sleeps, no load dependence).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_MAX_SESSION_AGE = 3600
COOKIE_NAME = "session"


@dataclass(frozen=True)
class AuthOutcome:
    """How one request was authenticated: ``kind`` is apikey, cookie, open or refused."""

    kind: str
    refreshed_cookie: str | None = None
    session_cookies_sent: int = 0

    @property
    def allowed(self) -> bool:
        """True unless the request must be answered with HTTP 401."""
        return self.kind != "refused"


class SessionStore:
    """Issues, ages and checks session cookies like Stash's signed cookie store."""

    def __init__(self, max_age: float = DEFAULT_MAX_SESSION_AGE, clock: Callable[[], float] = time.time,
                 seconds_per_request: float = 0.0) -> None:
        self.max_age = max_age
        self.clock = clock
        self.seconds_per_request = seconds_per_request
        self._secret = os.urandom(16)
        self._serial = itertools.count(1)
        self._known: dict[str, float] = {}  # cookies handed out as fixed values (tests' SESSION_COOKIE)
        self._requests = 0
        self._lock = threading.Lock()

    def now(self) -> float:
        """The store's current time: the clock plus the ageing of every request seen so far."""
        return self.clock() + self._requests * self.seconds_per_request

    def tick(self) -> None:
        """Count one request (ages the world by ``seconds_per_request``)."""
        with self._lock:
            self._requests += 1

    def register(self, value: str, issued: float | None = None) -> None:
        """Accept a fixed cookie value as issued at ``issued`` (default: now)."""
        self._known[value] = self.now() if issued is None else issued

    def issue(self) -> str:
        """A new signed cookie value carrying the current time."""
        issued = f"{self.now():.3f}"
        body = f"{next(self._serial)}|{issued}"
        return f"{body}|{self._sign(body)}"

    def _sign(self, body: str) -> str:
        return hmac.new(self._secret, body.encode(), hashlib.sha256).hexdigest()[:24]

    def issued_at(self, value: str) -> float | None:
        """When a cookie was issued, or None for a value this store never issued."""
        if value in self._known:
            return self._known[value]
        parts = value.split("|")
        if len(parts) != 3 or not hmac.compare_digest(self._sign(f"{parts[0]}|{parts[1]}"), parts[2]):
            return None
        try:
            return float(parts[1])
        except ValueError:
            return None

    def valid(self, value: str) -> bool:
        """True when the cookie was issued here and is not older than ``max_age``."""
        issued = self.issued_at(value)
        return issued is not None and self.now() - issued <= self.max_age


def session_cookies(cookie_headers: list[str]) -> list[str]:
    """Every ``session`` cookie value of a request, in the order sent (headers, then pairs)."""
    values = []
    for header in cookie_headers:
        for pair in header.split(";"):
            name, _, value = pair.strip().partition("=")
            if name == COOKIE_NAME and _:
                values.append(value.strip().strip('"'))
    return values


def authenticate(store: SessionStore | None, api_key: str | None, headers) -> AuthOutcome:
    """Decide a request as Stash's authentication middleware does (``headers``: an email.message)."""
    cookies = session_cookies(headers.get_all("Cookie") or [])
    if store is None and not api_key:
        return AuthOutcome("open", session_cookies_sent=len(cookies))
    sent_key = headers.get("ApiKey")
    if sent_key:
        kind = "apikey" if api_key and hmac.compare_digest(sent_key, api_key) else "refused"
        return AuthOutcome(kind, session_cookies_sent=len(cookies))
    if store is not None and cookies and store.valid(cookies[0]):
        return AuthOutcome("cookie", store.issue(), len(cookies))
    return AuthOutcome("refused", session_cookies_sent=len(cookies))


def set_cookie_header(value: str, max_age: float) -> str:
    """The ``Set-Cookie`` value of a refreshed session, as gorilla/sessions writes it."""
    return f"{COOKIE_NAME}={value}; Path=/; Max-Age={int(max_age)}; HttpOnly; SameSite=Lax"
