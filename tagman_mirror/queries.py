"""Every GraphQL document the cache sends to Stash, built from the entity specs.

``REGISTRY`` maps a document's operation name to its text; the conformance tests validate each of
them against the real Stash schema and the fake's. The per-type documents are also reachable by
type (``PAGE``, ``PROBE``, ``LISTING``, ``IDS``, ``LATEST``); the status documents are built for the types a
status run asks about. ``SIGNALS``, ``FILES_PAGE`` and ``PHASH_MISSING_IDS`` carry the checks of
``signals`` (changes Stash makes without a new ``updated_at``).
"""

from __future__ import annotations

from collections.abc import Sequence

from tagman_mirror.entities import SPEC_BY_TABLE, SPECS, EntitySpec


def page_query(spec: EntitySpec) -> str:
    """Full content of a page of entities, or of the entities with the given ids."""
    return (f"query TagManagerCache{spec.operation}Page($filter: FindFilterType, $ids: [ID!]) {{\n"
            f"  {spec.find}(filter: $filter, ids: $ids) {{ count {spec.list_key} {{ {spec.selection} }} }}\n}}")


def probe_query(spec: EntitySpec) -> str:
    """Total count, count of the cursor window and the full content of the recheck entities."""
    return (f"query TagManagerCache{spec.operation}Probe($window: {spec.filter_type}, $recheck: [ID!], "
            f"$withRecheck: Boolean!) {{\n"
            f"  total: {spec.find}(filter: {{per_page: 0}}) {{ count }}\n"
            f"  window: {spec.find}({spec.filter_arg}: $window, filter: {{per_page: 0}}) {{ count }}\n"
            f"  recheck: {spec.find}(ids: $recheck, filter: {{per_page: -1}}) @include(if: $withRecheck) "
            f"{{ {spec.list_key} {{ {spec.selection} }} }}\n}}")


def listing_query(spec: EntitySpec) -> str:
    """Ids and updated_at of the entities in a window (or of all entities)."""
    return (f"query TagManagerCache{spec.operation}Listing($window: {spec.filter_type}, $filter: FindFilterType) {{\n"
            f"  {spec.find}({spec.filter_arg}: $window, filter: $filter) {{ count {spec.list_key} {{ id updated_at }} }}\n}}")


def ids_query(spec: EntitySpec) -> str:
    """Ids alone of the entities in a window (or of all entities): the id comparison's pages."""
    return (f"query TagManagerCache{spec.operation}Ids($window: {spec.filter_type}, $filter: FindFilterType) {{\n"
            f"  {spec.find}({spec.filter_arg}: $window, filter: $filter) {{ {spec.list_key} {{ id }} }}\n}}")


def latest_query(spec: EntitySpec) -> str:
    """The newest updated_at (as text) Stash holds for the type, with the total count."""
    return (f"query TagManagerCache{spec.operation}Latest {{\n"
            f"  {spec.find}(filter: {{per_page: 1, sort: \"updated_at\", direction: DESC}}) "
            f"{{ count {spec.list_key} {{ id updated_at }} }}\n}}")


def status_counts_query(specs: Sequence[EntitySpec]) -> str:
    """Stash's total and cursor-window count of every type, in one request."""
    params = ", ".join(f"${s.table}Window: {s.filter_type}" for s in specs)
    body = "\n".join(
        f"  {s.table}Total: {s.find}(filter: {{per_page: 0}}) {{ count }}\n"
        f"  {s.table}Pending: {s.find}({s.filter_arg}: ${s.table}Window, filter: {{per_page: 0}}) {{ count }}"
        for s in specs)
    return f"query TagManagerCacheStatusCounts({params}) {{\n{body}\n}}"


def status_listing_query(specs: Sequence[EntitySpec]) -> str:
    """Ids and updated_at of every type's cursor window, in one request."""
    params = ", ".join(f"${s.table}Window: {s.filter_type}" for s in specs)
    body = "\n".join(f"  {s.table}: {s.find}({s.filter_arg}: ${s.table}Window, filter: {{per_page: -1}}) "
                     f"{{ {s.list_key} {{ id updated_at }} }}" for s in specs)
    return f"query TagManagerCacheStatusListing({params}) {{\n{body}\n}}"


SIGNAL_TYPES: tuple[str, ...] = ("scenes", "images", "galleries")  # types with files and an id filter
WINDOW_PAGE = 1000  # owners read per request from a file-change window
_FILE_TIMES = {
    "scenes": "files { updated_at }",
    "images": "visual_files { ... on ImageFile { updated_at } ... on VideoFile { updated_at } }",
    "galleries": "files { updated_at }",
}


def _signal_fields(spec: EntitySpec) -> str:
    """The file-change window and the re-verification slice of one type, as aliased fields."""
    t = spec.table
    return (f"  {t}Files: {spec.find}({spec.filter_arg}: ${t}Files, filter: {{per_page: {WINDOW_PAGE}, "
            f"sort: \"id\", direction: ASC}}) @include(if: ${t}FilesOn) "
            f"{{ count {spec.list_key} {{ {spec.selection} {_FILE_TIMES[t]} }} }}\n"
            f"  {t}Verify: {spec.find}({spec.filter_arg}: ${t}Verify, filter: ${t}VerifyPage) "
            f"@include(if: ${t}VerifyOn) {{ count {spec.list_key} {{ {spec.selection} }} }}\n"
            f"  {t}Total: {spec.find}(filter: {{per_page: 0}}) @include(if: ${t}VerifyOn) {{ count }}\n")


def signals_query() -> str:
    """One request with every check of a run (each type's part switched by its variables)."""
    params, body = [], ""
    for t in SIGNAL_TYPES:
        spec = SPEC_BY_TABLE[t]
        params += [f"${t}Files: {spec.filter_type}", f"${t}FilesOn: Boolean!", f"${t}Verify: {spec.filter_type}",
                   f"${t}VerifyPage: FindFilterType", f"${t}VerifyOn: Boolean!"]
        body += _signal_fields(spec)
    body += ("  phashMissing: findScenes(scene_filter: {is_missing: \"phash\"}, filter: {per_page: 0}) "
             "@include(if: $phashOn) { count }\n")
    return f"query TagManagerCacheSignals({', '.join(params)}, $phashOn: Boolean!) {{\n{body}}}"


def files_page_query(spec: EntitySpec) -> str:
    """Further owners of a file-change window (keyset: ids above the last one read)."""
    return (f"query TagManagerCache{spec.operation}FilesPage($filter: {spec.filter_type}) {{\n"
            f"  {spec.find}({spec.filter_arg}: $filter, filter: {{per_page: {WINDOW_PAGE}, sort: \"id\", "
            f"direction: ASC}}) {{ count {spec.list_key} {{ {spec.selection} {_FILE_TIMES[spec.table]} }} }}\n}}")


# the smallest answer Stash gives: read for its Date header alone (``engine``: Stash's clock before a run's reads)
CLOCK = "query TagManagerCacheClock {\n  version { version }\n}"

PHASH_MISSING_IDS = """query TagManagerCachePhashMissing {
  findScenes(scene_filter: {is_missing: "phash"}, filter: {per_page: -1, sort: "id", direction: ASC}) { scenes { id } }
}"""

PAGE = {spec.table: page_query(spec) for spec in SPECS}
PROBE = {spec.table: probe_query(spec) for spec in SPECS}
LISTING = {spec.table: listing_query(spec) for spec in SPECS}
IDS = {spec.table: ids_query(spec) for spec in SPECS}
LATEST = {spec.table: latest_query(spec) for spec in SPECS}
SIGNALS = signals_query()
FILES_PAGE = {t: files_page_query(SPEC_BY_TABLE[t]) for t in SIGNAL_TYPES}


def _named(documents: list[str]) -> dict[str, str]:
    """Documents by their operation name (the word after ``query``)."""
    return {doc.split(None, 2)[1].split("(")[0]: doc for doc in documents}


# every document the cache can send; the status listing is shown for all types (a run lists fewer)
REGISTRY: dict[str, str] = _named([*PAGE.values(), *PROBE.values(), *LISTING.values(), *IDS.values(),
                                   *LATEST.values(), CLOCK,
                                   status_counts_query(SPECS), status_listing_query(SPECS),
                                   SIGNALS, *FILES_PAGE.values(), PHASH_MISSING_IDS])
