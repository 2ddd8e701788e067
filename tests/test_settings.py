"""Settings parsing, stash-box selection and the tag blacklist."""

import pytest
from hypothesis import given, strategies as st

from tagman_base.errors import SettingsError
from tagman_base.settings import Settings, split_blacklist, TagBlacklist
from tagman_base.stash_boxes import select_stash_box, StashBox
from tagman_mirror.results import CacheOptions


def test_absent_settings_take_defaults():
    assert Settings.from_plugin_config(None) == Settings()
    assert Settings.from_plugin_config({}) == Settings(
        sync_dry_run=False, stash_box_endpoint="", tag_blacklist="", max_requests_per_minute=None,
        cache_db_path="", live_cache=False)


def test_values_as_stash_sends_them():
    config = {"syncDryRun": True, "stashBoxEndpoint": " https://stashdb.org/graphql ",
              "tagBlacklist": "a, b", "maxRequestsPerMinute": 120, "cacheDbPath": "/tmp/x.sqlite3"}
    assert Settings.from_plugin_config(config) == Settings(
        sync_dry_run=True, stash_box_endpoint="https://stashdb.org/graphql", tag_blacklist="a, b",
        max_requests_per_minute=120.0, cache_db_path="/tmp/x.sqlite3")


@pytest.mark.parametrize("raw", ["abc", -1, "-5", float("nan"), True])
def test_bad_rate_names_the_setting(raw):
    with pytest.raises(SettingsError, match="maxRequestsPerMinute"):
        Settings.from_plugin_config({"maxRequestsPerMinute": raw})


@pytest.mark.parametrize("raw", [0, "0", ""])
def test_zero_or_empty_rate_means_not_set(raw):
    assert Settings.from_plugin_config({"maxRequestsPerMinute": raw}).max_requests_per_minute is None


def test_bad_boolean_names_the_setting():
    with pytest.raises(SettingsError, match="syncDryRun"):
        Settings.from_plugin_config({"syncDryRun": "maybe"})


BOXES = [StashBox("https://fansdb.cc/graphql", "k1", "FansDB", 0),
         StashBox("https://stashdb.org/graphql", "k2", "StashDB", 240)]


def test_default_box_is_stashdb_else_first():
    assert select_stash_box(BOXES).name == "StashDB"
    assert select_stash_box(BOXES[:1]).name == "FansDB"


def test_configured_box_by_endpoint_or_name():
    assert select_stash_box(BOXES, "https://fansdb.cc/graphql/").name == "FansDB"
    assert select_stash_box(BOXES, "fansdb").name == "FansDB"


def test_unknown_or_missing_box_is_a_clear_error():
    with pytest.raises(SettingsError, match="stashBoxEndpoint.*not a stash-box configured"):
        select_stash_box(BOXES, "https://nowhere/graphql")
    with pytest.raises(SettingsError, match="No stash-box is configured"):
        select_stash_box([])


def test_box_repr_hides_the_key():
    assert "k2" not in repr(BOXES[1])


def test_blacklist_literals_and_regexes():
    blacklist = TagBlacklist.parse("Foo, bar baz\n/^4k$/,/a,b/", ["^Exclude.*"])
    assert blacklist.matches("FOO") and blacklist.matches("Bar Baz")
    assert blacklist.matches("4K") and not blacklist.matches("4k video")
    assert blacklist.matches("xa,bx")
    assert blacklist.matches("excluded tag")
    assert not blacklist.matches("foobar")


def test_blacklist_literal_has_no_wildcards():
    blacklist = TagBlacklist.parse("a.c, 50%")
    assert blacklist.matches("A.C") and not blacklist.matches("abc")
    assert not blacklist.matches("50 percent")


def test_invalid_regex_names_the_setting():
    with pytest.raises(SettingsError, match=r"tagBlacklist has an invalid regular expression /\(unclosed/"):
        TagBlacklist.parse("/(unclosed/")
    assert TagBlacklist.parse("", ["[bad"]).stash_patterns.patterns == ()  # Stash's own: skipped, not fatal


names = st.text(alphabet=st.characters(blacklist_characters=",/\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"),
                min_size=1).map(str.strip).filter(bool)


@given(st.lists(names, max_size=8), st.sampled_from([",", "\n", " , "]))
def test_literal_blacklist_round_trips(entries, separator):
    blacklist = TagBlacklist.parse(separator.join(entries))
    assert split_blacklist(separator.join(entries)) == entries
    for entry in entries:
        assert blacklist.matches(entry.upper()) or blacklist.matches(entry)
        assert blacklist.matches(entry)


def test_cache_settings_defaults_and_parsing():
    assert CacheOptions() == CacheOptions.from_settings(Settings())
    assert CacheOptions() == CacheOptions(change_log_days=30, soft_delete=False, soft_delete_days=14)
    settings = Settings.from_plugin_config({"cacheChangeLogDays": 7, "cacheSoftDelete": True,
                                            "cacheSoftDeleteDays": "0", "cacheDbPath": ""})
    assert CacheOptions.from_settings(settings) == CacheOptions(7.0, True, 0.0)
    assert Settings.from_plugin_config({"cacheChangeLogDays": ""}).cache_change_log_days == 30


@pytest.mark.parametrize("key", ["cacheChangeLogDays", "cacheSoftDeleteDays"])
@pytest.mark.parametrize("raw", [-1, "abc", float("nan"), True, "inf"])
def test_bad_day_settings_name_the_setting(key, raw):
    with pytest.raises(SettingsError, match=key):
        Settings.from_plugin_config({key: raw})


def test_full_recheck_settings():
    assert Settings.from_plugin_config({}).tag_sync_full_recheck_days == 30.0
    parsed = Settings.from_plugin_config({"tagSyncFullRecheck": True, "tagSyncFullRecheckDays": "7"})
    assert parsed.tag_sync_full_recheck is True and parsed.tag_sync_full_recheck_days == 7.0
    with pytest.raises(SettingsError, match="tagSyncFullRecheckDays"):
        Settings.from_plugin_config({"tagSyncFullRecheckDays": "-1"})
