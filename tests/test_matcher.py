"""The tag matcher: StashID link, then name, then alias, ASCII case folding, lowest id on ties."""

from hypothesis import given
from hypothesis import strategies as st

from stashdb_api import StashDBTag
from tagman_tagsync.matcher import LocalTag, TagMatcher, fold_case

ENDPOINT = "https://stashdb.org/graphql"


def remote(name, id_="r-1", aliases=(), deleted=False):
    return StashDBTag(id=id_, name=name, aliases=tuple(aliases), deleted=deleted)


def local(id_, name, aliases=(), stash_ids=()):
    return {"id": str(id_), "name": name, "aliases": list(aliases),
            "stash_ids": [{"endpoint": e, "stash_id": s} for e, s in stash_ids]}


def test_stash_id_link_beats_name_and_alias():
    matcher = TagMatcher.from_local_tags([
        local(1, "Blonde"), local(2, "Other", aliases=["blonde"]),
        local(3, "Linked", stash_ids=[(ENDPOINT, "r-9")]),
    ], ENDPOINT)
    assert matcher.match(remote("Blonde", "r-9")) == LocalTag(3, "Linked")


def test_link_for_another_endpoint_is_ignored():
    matcher = TagMatcher.from_local_tags([local(3, "Linked", stash_ids=[("https://fansdb.cc/graphql", "r-9")]),
                                          local(4, "Blonde")], ENDPOINT)
    assert matcher.match(remote("Blonde", "r-9")) == LocalTag(4, "Blonde")


def test_name_beats_alias_and_case_is_ignored():
    matcher = TagMatcher.from_local_tags([local(1, "Aliased", aliases=["BLONDE"]), local(5, "blonde")], ENDPOINT)
    assert matcher.match(remote("Blonde")) == LocalTag(5, "blonde")


def test_alias_match():
    matcher = TagMatcher.from_local_tags([local(7, "Big Tits", aliases=["Large Breasts"])], ENDPOINT)
    assert matcher.match(remote("large breasts")) == LocalTag(7, "Big Tits")


def test_remote_aliases_are_not_used_like_stash():
    matcher = TagMatcher.from_local_tags([local(7, "Outdoors")], ENDPOINT)
    assert matcher.match(remote("Outside", aliases=["Outdoors"])) is None


def test_lowest_id_wins_ties_in_any_insert_order():
    tags = [local(9, "X", aliases=["dup"]), local(4, "Y", aliases=["Dup"]),
            local(8, "Z", stash_ids=[(ENDPOINT, "r-1")]), local(6, "W", stash_ids=[(ENDPOINT, "r-1")])]
    for ordered in (tags, list(reversed(tags))):
        matcher = TagMatcher.from_local_tags(ordered, ENDPOINT)
        assert matcher.match(remote("DUP", "r-2")).id == 4
        assert matcher.match(remote("nothing", "r-1")).id == 6


def test_non_ascii_case_is_not_folded_like_sqlite_nocase():
    matcher = TagMatcher.from_local_tags([local(1, "Émilie")], ENDPOINT)
    assert matcher.match(remote("émilie")) is None
    assert matcher.match(remote("ÉMILIE")).id == 1  # only the ASCII letters fold


def test_no_wildcards():
    matcher = TagMatcher.from_local_tags([local(1, "a_c"), local(2, "100%")], ENDPOINT)
    assert matcher.match(remote("abc")) is None
    assert matcher.match(remote("100 percent")) is None
    assert matcher.match(remote("A_C")).id == 1


local_tags = st.lists(
    st.tuples(st.integers(1, 50), st.sampled_from(["a", "A", "b", "B", "é", "É", "c_d"]),
              st.lists(st.sampled_from(["a", "b", "x", "X"]), max_size=2)),
    max_size=12, unique_by=lambda t: t[0])


@given(local_tags, st.sampled_from(["a", "A", "b", "x", "é", "c_d", "zz"]))
def test_match_equals_a_brute_force_model(tags, name):
    """The index gives exactly what a scan in priority order with lowest id would."""
    matcher = TagMatcher.from_local_tags([local(i, n, aliases) for i, n, aliases in tags], ENDPOINT)
    by_name = sorted(i for i, n, _ in tags if fold_case(n) == fold_case(name))
    by_alias = sorted(i for i, _, aliases in tags if any(fold_case(a) == fold_case(name) for a in aliases))
    expected = (by_name or by_alias or [None])[0]
    found = matcher.match(remote(name))
    assert (found.id if found else None) == expected
