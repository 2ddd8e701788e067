"""The plugin's exception tree; only ``tag_manager.main()`` turns these into ``{"error": ...}``.

    TagManagerError
    ├── SettingsError              a plugin setting or task argument is invalid
    ├── RunLockedError             the same job is already running
    ├── StashError                 talking to the local Stash server failed
    │   ├── StashAuthError         Stash refused the session cookie / API key
    │   ├── StashUnavailable       Stash could not be reached after retries
    │   └── StashQueryError        Stash answered a GraphQL error
    ├── StashDBError               talking to the stash-box (StashDB) server failed
    │   ├── AuthError              the stash-box rejected the API key (HTTP 401)
    │   ├── RateLimitedError       still HTTP 429 after every retry
    │   ├── StashDBUnavailable     5xx, timeouts or malformed bodies after every retry
    │   └── GraphQLQueryError      the stash-box answered GraphQL errors
    └── CacheError                 the sidecar SQLite cache cannot be used
        ├── CacheSchemaError       the file is not a cache of a version this code understands
        └── CacheLockedError       another sync holds the cache
"""

from __future__ import annotations


def graphql_messages(errors: list) -> str:
    """The messages of a GraphQL ``errors`` list, joined for one line."""
    return "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors)


class TagManagerError(Exception):
    """Base of every error the plugin raises on purpose."""


class SettingsError(TagManagerError):
    """A plugin setting or task argument has a value the plugin cannot use."""


class RunLockedError(TagManagerError):
    """The same job is already running against this Stash; this run changed nothing."""


class StashError(TagManagerError):
    """Talking to the local Stash server failed."""


class StashAuthError(StashError):
    """Stash refused the credentials (HTTP 401/403)."""


class StashUnavailable(StashError):
    """Stash could not be reached or kept failing after every retry."""


class StashQueryError(StashError):
    """Stash answered a GraphQL error (``data`` holds whatever part of the answer succeeded)."""

    def __init__(self, errors: list, operation: str = "", data: dict | None = None) -> None:
        self.errors = errors
        self.operation = operation
        self.data = data
        super().__init__(f"Stash rejected {operation or 'a request'}: {graphql_messages(errors)}")


class StashDBError(TagManagerError):
    """Talking to the stash-box server failed."""


class AuthError(StashDBError):
    """The stash-box rejected the API key (HTTP 401)."""


class RateLimitedError(StashDBError):
    """The stash-box kept answering HTTP 429 after every retry."""


class StashDBUnavailable(StashDBError):
    """The stash-box kept failing (5xx, timeout, refused, malformed body) after every retry."""


class GraphQLQueryError(StashDBError):
    """The stash-box answered a GraphQL error for a request."""

    def __init__(self, errors: list, operation: str = "") -> None:
        self.errors = errors
        self.operation = operation
        super().__init__(f"StashDB rejected {operation or 'a request'}: {graphql_messages(errors)}")


class CacheError(TagManagerError):
    """The sidecar SQLite cache cannot be used."""


class CacheSchemaError(CacheError):
    """The cache file is corrupt, not SQLite, or from a newer version of the plugin."""


class CacheLockedError(CacheError):
    """Another sync is running against the same cache file."""
