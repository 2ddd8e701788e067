"""Linking local tags to StashDB tags (mode ``link_tags``): the rules, the writes, the preview, the fakes."""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagman_base import stash_client
from tagman_base.settings import Settings
from stashdb_api import StashDBClient, StashDBTag, TokenBucket
from stashdb_tag_links import TagIndex, TagLinker, plan_links
from tag_manager import RunContext, run_link_tags
from tests.conftest import SESSION_COOKIE, STASHDB_API_KEY, STASHDB_RATE_PER_MINUTE, Servers, run_plugin
from tests.fakes.library import OTHER_ENDPOINT
from tests.tag_link_model import (
    OTHER_LINK_STAMP,
    expected_after,
    oracle,
    prepare_for_linking,
    remote_tags,
    stash_id_pairs,
    tag_rows,
)


def as_stashdb_tag(remote: dict) -> StashDBTag:
    return StashDBTag(remote["id"], remote["name"], tuple(remote.get("aliases") or ()), bool(remote.get("deleted")))


def plan_as_dict(local_tags, remote_tags, endpoint) -> dict[int, tuple[str, list[str]]]:
    proposals = plan_links(local_tags, TagIndex.build(as_stashdb_tag(r) for r in remote_tags), endpoint)
    return {p.tag_id: (p.reason, sorted(t.id for t in p.candidates)) for p in proposals}


ENDPOINT = "https://stashdb.org/graphql"
TEXTS = st.sampled_from(["a", "A", "b", "B", "ab", "AB", "é", "É", "a_b", "a%", "", " a"])
local_strategy = st.lists(
    st.tuples(TEXTS.filter(bool), st.lists(TEXTS, max_size=3),
              st.lists(st.sampled_from([ENDPOINT, OTHER_ENDPOINT]), max_size=2)),
    max_size=10)
remote_strategy = st.lists(st.tuples(TEXTS.filter(bool), st.lists(TEXTS, max_size=3), st.booleans()), max_size=8)


@settings(max_examples=250, deadline=None)
@given(local_strategy, remote_strategy)
def test_linking_rules_equal_a_brute_force_model(local_spec, remote_spec):
    local_tags = [{"id": str(i + 1), "name": name, "aliases": aliases,
                   "stash_ids": [{"endpoint": e, "stash_id": f"x{i}"} for e in endpoints]}
                  for i, (name, aliases, endpoints) in enumerate(local_spec)]
    remote_tags = [{"id": f"r{i}", "name": name, "aliases": aliases, "deleted": deleted}
                   for i, (name, aliases, deleted) in enumerate(remote_spec)]
    assert plan_as_dict(local_tags, remote_tags, ENDPOINT) == oracle(local_tags, remote_tags, ENDPOINT)


def test_rules_by_example():
    remote = [{"id": "r1", "name": "Outdoor", "aliases": ["Outdoors"]}, {"id": "r2", "name": "Blonde", "aliases": []},
              {"id": "r3", "name": "blonde", "aliases": []}, {"id": "r4", "name": "Émilie", "aliases": []},
              {"id": "r5", "name": "Gone", "aliases": [], "deleted": True}]
    local = [{"id": "1", "name": "outdoor", "aliases": []},  # name, case folded
             {"id": "2", "name": "Garden", "aliases": ["OUTDOORS"]},  # local alias = remote alias
             {"id": "3", "name": "Blonde", "aliases": []},  # two live StashDB tags differ only in case
             {"id": "4", "name": "émilie", "aliases": []},  # non-ASCII letters do not fold
             {"id": "5", "name": "Gone", "aliases": []},  # deleted on StashDB
             {"id": "6", "name": "Outdoor", "aliases": [], "stash_ids": [{"endpoint": ENDPOINT, "stash_id": "r9"}]}]
    assert plan_as_dict(local, remote, ENDPOINT) == {
        1: ("name", ["r1"]), 2: ("alias", ["r1"]), 3: ("ambiguous", ["r2", "r3"]), 4: ("unmatched", []),
        5: ("unmatched", [])}


def without_link_fields(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("stash_ids", "updated_at")}


def context(servers: Servers, tmp_path: Path, dry_run: bool = False, **settings) -> RunContext:
    """A run context wired as the entry script wires it."""
    stash = stash_client.connect(servers.server_connection(tmp_path), lean=True)
    args = {"mode": "link_tags", **({"dry_run": "true"} if dry_run else {})}
    return RunContext(stash, Settings(**settings), args, tmp_path, lambda f: None, lambda s: None)


def linker(servers: Servers, tmp_path: Path, dry_run: bool = False, stash=None, **options) -> TagLinker:
    """A TagLinker on the fakes with test-sized pages and batches."""
    from tagman_base.stash_boxes import StashBox

    stash = stash or stash_client.connect(servers.server_connection(tmp_path), lean=True)
    box = StashBox(servers.library.endpoint, STASHDB_API_KEY, "StashDB", 0)
    stashdb = StashDBClient(box.endpoint, STASHDB_API_KEY, paced(), sleep=lambda s: None)
    return TagLinker(stash, stashdb, box, dry_run, tmp_path / "reports", **options)


def paced() -> TokenBucket:
    """A limiter 2 % under the rate the fake StashDB enforces, as the entry script builds it."""
    return TokenBucket(STASHDB_RATE_PER_MINUTE * 0.98 / 60.0)


def link_writes(servers: Servers) -> int:
    """tagUpdate fields Stash received from link runs."""
    return sum(len(variables) for _, variables in servers.stash.requests("TagLinkSetStashIdsBatch"))


# -- runs against the fakes ------------------------------------------------------------------------

@pytest.fixture
def linkable(servers):
    """The 300-scene library, prepared so that every linking rule applies to some tag."""
    return prepare_for_linking(servers)


def test_link_adds_exactly_the_planned_stash_ids_and_changes_nothing_else(linkable, tmp_path):
    servers = linkable
    before = tag_rows(servers)
    endpoint = servers.library.endpoint
    plan = oracle(list(before.values()), remote_tags(servers), endpoint)
    reasons = [reason for reason, _ in plan.values()]
    assert {"name", "alias", "ambiguous", "unmatched"} <= set(reasons), "the library must exercise every rule"
    result = run_link_tags(context(servers, tmp_path))
    after = tag_rows(servers)
    assert stash_id_pairs(after) == expected_after(before, plan, endpoint)
    for tid, row in after.items():
        assert without_link_fields(row) == without_link_fields(before[tid]), f"tag {tid} changed beyond its StashIDs"
        kept = [s for s in row["stash_ids"] if s["endpoint"] == OTHER_ENDPOINT]
        assert kept == [s for s in before[tid]["stash_ids"] if s["endpoint"] == OTHER_ENDPOINT]
    assert any(s["updated_at"] == OTHER_LINK_STAMP for row in after.values() for s in row["stash_ids"]
               if plan.get(row["id"], ("",))[0] in ("name", "alias"))
    linked = reasons.count("name") + reasons.count("alias")
    live = sum(1 for r in remote_tags(servers) if not r["deleted"])
    assert result.linked == linked == link_writes(servers) == result.stash_mutations
    assert (result.matched_by_name, result.matched_by_alias) == (reasons.count("name"), reasons.count("alias"))
    assert (result.ambiguous, result.unmatched) == (reasons.count("ambiguous"), reasons.count("unmatched"))
    assert result.considered == len(plan) and result.already_linked == len(before) - len(plan)
    assert result.stashdb_tags == live and servers.stashdb.operations["QueryTags"] == 1
    assert result.errors == 0 and result.changed_meanwhile == 0 and not result.dry_run


def test_second_run_links_nothing_more(servers, tmp_path):
    first = run_link_tags(context(servers, tmp_path))
    after_first = tag_rows(servers)
    servers.stash.clear_log()
    second = run_link_tags(context(servers, tmp_path))
    assert first.linked > 0 and second.linked == 0 and link_writes(servers) == 0
    assert tag_rows(servers) == after_first
    assert second.considered == first.considered - first.linked


def read_report(path: str) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_preview_writes_nothing_and_reports_every_considered_tag(linkable, tmp_path):
    servers = linkable
    before = tag_rows(servers)
    endpoint = servers.library.endpoint
    plan = oracle(list(before.values()), remote_tags(servers), endpoint)
    result = run_link_tags(context(servers, tmp_path, dry_run=True))
    assert tag_rows(servers) == before
    assert servers.stash.count("TagLinkSetStashIdsBatch") == servers.stash.count("TagLinkTagsById") == 0
    assert result.dry_run and result.linked == 0 and result.stash_mutations == 0
    assert Path(result.report_path).parent == tmp_path / "reports"
    assert Path(result.report_path).name.startswith("tag_links_preview_")
    rows = read_report(result.report_path)
    assert [int(row["local_tag_id"]) for row in rows] == sorted(plan)
    pool = servers.library.stashdb["tags"]
    for row in rows:
        tid = int(row["local_tag_id"])
        reason, candidates = plan[tid]
        assert row["local_tag_name"] == before[tid]["name"] and row["reason"] == reason
        if reason in ("name", "alias"):
            assert (row["stashdb_tag_id"], row["stashdb_tag_name"]) == (candidates[0], pool[candidates[0]]["name"])
            assert row["action"] == "would link" and row["candidates"] == ""
        else:
            assert row["stashdb_tag_id"] == row["stashdb_tag_name"] == "" and row["action"] == "left alone"
        if reason == "ambiguous":
            listed = row["candidates"].split("; ")
            assert sorted(item.rsplit(" [", 1)[1].rstrip("]") for item in listed) == candidates
            assert all(item.rsplit(" [", 1)[0] == pool[item.rsplit(" [", 1)[1].rstrip("]")]["name"] for item in listed)


@pytest.mark.parametrize("page_size", [1000, 7, 4])
def test_stashdb_tags_are_read_in_ceil_t_over_per_page_requests(servers, tmp_path, page_size):
    live = sum(1 for r in remote_tags(servers) if not r["deleted"])
    if page_size == 4:  # an exact multiple: no extra request for an empty page
        extra = (-live) % 4
        for i in range(extra):
            servers.library.stashdb["tags"][f"extra-{i}"] = {"id": f"extra-{i}", "name": f"Extra {i}",
                                                             "aliases": [], "deleted": False}
        live += extra
    result = linker(servers, tmp_path, dry_run=True, page_size=page_size).run()
    assert result.stashdb_tags == live
    # a 429 (a busy machine delaying the limiter) costs a retry; the pages themselves never change
    assert servers.stashdb.operations["QueryTags"] == math.ceil(live / page_size)
    assert result.stashdb_requests == math.ceil(live / page_size) + servers.stashdb.throttled
    pages = [call["variables"]["input"] for call in servers.stashdb.calls if call["operation"] == "QueryTags"]
    assert [p["page"] for p in pages] == list(range(1, len(pages) + 1))
    assert {(p["per_page"], p["sort"], p["direction"]) for p in pages} == {(page_size, "NAME", "ASC")}


def test_tag_list_changing_while_read_is_read_again(servers, tmp_path):
    live_before = sum(1 for r in remote_tags(servers) if not r["deleted"])

    class GrowingClient(StashDBClient):
        """Another tag appears on StashDB right after the first page."""

        def query_tags(self, page, per_page):
            answer = super().query_tags(page, per_page)
            if page == 1 and "new-tag" not in servers.library.stashdb["tags"]:
                servers.library.stashdb["tags"]["new-tag"] = {"id": "new-tag", "name": "AAA New", "aliases": [],
                                                              "deleted": False}
            return answer

    progress: list[float] = []
    run = linker(servers, tmp_path, dry_run=True, page_size=10, progress=progress.append)
    run.stashdb = GrowingClient(run.stashdb.endpoint, STASHDB_API_KEY, paced(), sleep=lambda s: None)
    result = run.run()
    assert result.stashdb_tags == live_before + 1
    assert progress == sorted(progress) and progress[-1] == 1.0  # the re-read never moves the bar back
    assert servers.stashdb.operations["QueryTags"] == math.ceil(live_before / 10) + math.ceil((live_before + 1) / 10)


class EditingStash:
    """A Stash client that lets the user edit tags just before the linker re-reads them."""

    def __init__(self, client, edit):
        self.client, self.edit, self.done = client, edit, False

    def __getattr__(self, name):
        return getattr(self.client, name)

    def call_by_ids(self, query, variables, *args, **kwargs):
        if "TagLinkTagsById" in query and not self.done:
            self.done = True
            self.edit()
        return self.client.call_by_ids(query, variables, *args, **kwargs)


def test_edits_in_stash_between_plan_and_write_are_never_overwritten(servers, tmp_path):
    world, endpoint = servers.library.world, servers.library.endpoint
    before = tag_rows(servers)
    plan = oracle(list(before.values()), remote_tags(servers), endpoint)
    to_link = [tid for tid, (reason, _) in sorted(plan.items()) if reason in ("name", "alias")]
    linked_by_user, renamed, deleted = to_link[:3]

    def user_edits():
        world.update_entity("tag", linked_by_user, stash_ids=[{"endpoint": endpoint, "stash_id": "chosen-by-user"}])
        world.update_entity("tag", renamed, name="Something Else Entirely", aliases=[])
        world.delete_entity("tag", deleted)

    stash = EditingStash(stash_client.connect(servers.server_connection(tmp_path), lean=True), user_edits)
    result = linker(servers, tmp_path, stash=stash).run()
    after = tag_rows(servers)
    assert after[linked_by_user]["stash_ids"][0]["stash_id"] == "chosen-by-user"
    assert len(after[linked_by_user]["stash_ids"]) == 1
    assert after[renamed]["stash_ids"] == before[renamed]["stash_ids"] and deleted not in after
    assert result.changed_meanwhile == 3 and result.linked == len(to_link) - 3 and result.errors == 0
    rows = {int(r["local_tag_id"]): r for r in read_report(result.report_path)}
    assert rows[renamed]["action"] == "changed in Stash meanwhile, left alone"
    assert rows[to_link[3]]["action"] == "linked"


def test_links_are_written_in_batches_after_a_fresh_read(servers, tmp_path):
    before = tag_rows(servers)
    plan = oracle(list(before.values()), remote_tags(servers), servers.library.endpoint)
    to_link = sum(1 for reason, _ in plan.values() if reason in ("name", "alias"))
    result = linker(servers, tmp_path, batch_size=4).run()
    operations = [op for op, _ in servers.stash.requests() if op.startswith("TagLink")]
    writes = [op for op in operations if op == "TagLinkSetStashIdsBatch"]
    assert len(writes) == math.ceil(to_link / 4) and result.linked == to_link
    for index, op in enumerate(operations):  # every write directly follows the read of its tags
        if op == "TagLinkSetStashIdsBatch":
            assert operations[index - 1] == "TagLinkTagsById"


def test_a_write_stash_rejects_is_counted_and_the_rest_still_land(servers, tmp_path):
    world = servers.library.world
    before = tag_rows(servers)
    plan = oracle(list(before.values()), remote_tags(servers), servers.library.endpoint)
    to_link = [tid for tid, (reason, _) in sorted(plan.items()) if reason in ("name", "alias")]

    class DeletingStash(EditingStash):
        """The tag disappears after the re-read, before the write."""

        def call_by_ids(self, query, variables, *args, **kwargs):
            return self.client.call_by_ids(query, variables, *args, **kwargs)

        def call(self, query, variables=None):
            if "TagLinkSetStashIdsBatch" in query and not self.done:
                self.done = True
                self.edit()
            return self.client.call(query, variables)

    stash = DeletingStash(stash_client.connect(servers.server_connection(tmp_path), lean=True),
                          lambda: world.delete_entity("tag", to_link[0]))
    result = linker(servers, tmp_path, stash=stash).run()
    assert result.errors == 1 and result.linked == len(to_link) - 1 and result.changed_meanwhile == 0
    rows = {int(r["local_tag_id"]): r for r in read_report(result.report_path)}
    assert rows[to_link[0]]["action"] == "error" and rows[to_link[1]]["action"] == "linked"


# -- the fakes do what the real servers do ---------------------------------------------------------

def test_fake_query_tags_lists_live_tags_only_sorted_by_name_without_cap(servers):
    """stash-box's tag Query: WHERE deleted = false, ORDER BY name, LIMIT/OFFSET with no cap on per_page."""
    from tests.fakes.fake_stashdb import FakeStashDB

    unthrottled = FakeStashDB(servers.library.stashdb).start()
    query = "query Q($input: TagQueryInput!) { queryTags(input: $input) { count tags { id name aliases deleted } } }"

    def ask(**page):
        status, answer = unthrottled.execute({"query": query, "variables": {"input": page}})
        assert status == 200 and "errors" not in answer, answer
        return answer["data"]["queryTags"]

    pool = remote_tags(servers)
    live = sorted((r for r in pool if not r["deleted"]), key=lambda r: r["name"])
    assert any(r["deleted"] for r in pool)
    everything = ask(per_page=100000)
    assert everything["count"] == len(live) and [t["id"] for t in everything["tags"]] == [r["id"] for r in live]
    assert not any(t["deleted"] for t in everything["tags"])
    assert all(t["aliases"] == sorted(t["aliases"]) for t in everything["tags"])
    assert [t["id"] for t in ask()["tags"]] == [r["id"] for r in live[:25]]  # defaults: page 1, 25 per page
    assert ask(page=0, per_page=0)["tags"] == ask(page=1, per_page=25)["tags"]
    assert [t["id"] for t in ask(page=2, per_page=5)["tags"]] == [r["id"] for r in live[5:10]]
    assert [t["id"] for t in ask(per_page=3, direction="DESC")["tags"]] == [r["id"] for r in live[::-1][:3]]
    unthrottled.stop()


def test_fake_tag_update_replaces_the_stash_id_list_like_stash(servers, tmp_path):
    """tagUpdate's stash_ids is a SET (changeset_translator.updateStashIDs): the list replaces the old
    one; a pair given twice is stored once; a missing updated_at becomes now; omitting the field keeps it."""
    world = servers.library.world
    tid = min(world.table("tag"))
    world.update_entity("tag", tid, stash_ids=[{"endpoint": OTHER_ENDPOINT, "stash_id": "o1",
                                                "updated_at": OTHER_LINK_STAMP}])
    before = tag_rows(servers)[tid]
    stash = stash_client.connect(servers.server_connection(tmp_path), lean=True)
    mutation = "mutation U($input: TagUpdateInput!) { tagUpdate(input: $input) { id } }"
    new = {"endpoint": "https://stashdb.org/graphql", "stash_id": "s1"}
    stash.call(mutation, {"input": {"id": str(tid), "stash_ids": [new, new]}})
    row = tag_rows(servers)[tid]
    assert [(s["endpoint"], s["stash_id"]) for s in row["stash_ids"]] == [(new["endpoint"], "s1")]
    assert row["stash_ids"][0]["updated_at"] == row["updated_at"]
    assert without_link_fields(row) == without_link_fields(before)
    kept = {"endpoint": OTHER_ENDPOINT, "stash_id": "o1", "updated_at": OTHER_LINK_STAMP}
    stash.call(mutation, {"input": {"id": str(tid), "stash_ids": [kept, new]}})
    stash.call(mutation, {"input": {"id": str(tid), "description": "edited"}})
    row = tag_rows(servers)[tid]
    assert [(s["endpoint"], s["stash_id"], s["updated_at"]) for s in row["stash_ids"]][0] == \
        (OTHER_ENDPOINT, "o1", OTHER_LINK_STAMP)
    assert len(row["stash_ids"]) == 2 and row["description"] == "edited"


def test_generated_batch_mutation_is_valid_for_the_real_schema():
    from graphql import parse, validate
    from graphql.execution.values import get_variable_values

    from stashdb_tag_links import linked_stash_ids, set_stash_ids_batch_document
    from tests.reference import real_stash_schema

    document = parse(set_stash_ids_batch_document(3))
    assert not validate(real_stash_schema(), document)
    tag = {"id": "5", "stash_ids": [{"endpoint": OTHER_ENDPOINT, "stash_id": "o", "updated_at": OTHER_LINK_STAMP}]}
    variables = {f"t{i}": {"id": "5", "stash_ids": linked_stash_ids(tag, ENDPOINT, "s")} for i in range(3)}
    coerced = get_variable_values(real_stash_schema(), document.definitions[0].variable_definitions, variables)
    assert not isinstance(coerced, list), coerced


# -- the plugin as Stash runs it -------------------------------------------------------------------

def link_input(servers: Servers, tmp_path: Path, **args) -> dict:
    return {"server_connection": servers.server_connection(tmp_path), "args": {"mode": "link_tags", **args}}


def test_preview_then_link_through_stdin(linkable, tmp_path):
    servers = linkable
    before = tag_rows(servers)
    endpoint = servers.library.endpoint
    plan = oracle(list(before.values()), remote_tags(servers), endpoint)
    preview = run_plugin(link_input(servers, tmp_path, dry_run="true"))
    assert preview.returncode == 0, preview.stderr
    output = preview.document["output"]
    assert output["dry_run"] is True and tag_rows(servers) == before
    assert [str(p) for p in (tmp_path / "reports").glob("tag_links_preview_*.csv")] == [output["report_path"]]
    assert any("would be linked to" in line for line in preview.log_lines("i"))
    run = run_plugin(link_input(servers, tmp_path))
    assert run.returncode == 0, run.stderr
    output = run.document["output"]
    assert stash_id_pairs(tag_rows(servers)) == expected_after(before, plan, endpoint)
    assert output["linked"] == sum(1 for reason, _ in plan.values() if reason in ("name", "alias"))
    assert any("Tag linking (applied)" in line for line in run.log_lines("i"))
    assert [float(p) for p in run.log_lines("p")][-1] == 1.0
    for secret in (SESSION_COOKIE, STASHDB_API_KEY):
        assert secret not in run.stdout + run.stderr + preview.stdout + preview.stderr
        assert secret not in Path(output["report_path"]).read_text(encoding="utf-8")
    json.loads(run.stdout)


def test_a_second_link_run_is_refused_while_one_runs(servers, tmp_path):
    from tagman_base import file_lock
    from stashdb_tag_links import TAG_LINK_LOCK
    from tagman_base.errors import RunLockedError

    before = tag_rows(servers)
    with file_lock.exclusive(tmp_path / TAG_LINK_LOCK):
        with pytest.raises(RunLockedError, match="A tag link run is already running"):
            run_link_tags(context(servers, tmp_path))
        assert run_link_tags(context(servers, tmp_path, dry_run=True)).dry_run  # a preview writes nothing: allowed
    assert tag_rows(servers) == before


def test_stashdb_failing_stops_the_run_before_any_write(servers, tmp_path):
    from tagman_base.errors import StashDBUnavailable

    before = tag_rows(servers)
    servers.stashdb.fail_next(4, status=502)
    with pytest.raises(StashDBUnavailable, match="QueryTags"):
        linker(servers, tmp_path, page_size=10).run()
    assert tag_rows(servers) == before and servers.stash.count("TagLinkSetStashIdsBatch") == 0


def test_stashdb_graphql_error_is_reported_through_stdin(servers, tmp_path):
    servers.stashdb.fail_next(1, status=200, body=json.dumps({"errors": [{"message": "not authorized"}], "data": None}))
    run = run_plugin(link_input(servers, tmp_path))
    assert run.returncode == 1 and "not authorized" in run.document["error"]
    assert servers.stash.count("TagLinkSetStashIdsBatch") == 0


def test_manifest_declares_both_tasks():
    import yaml

    from tests.conftest import ROOT

    tasks = {task["name"]: task["defaultArgs"] for task in yaml.safe_load((ROOT / "tagManager.yml").read_text())["tasks"]}
    assert tasks["Preview Tag Links"] == {"mode": "link_tags", "dry_run": "true"}
    assert tasks["Link Tags to StashDB"] == {"mode": "link_tags"}
