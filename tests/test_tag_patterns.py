"""Stash's excludeTagPatterns are applied as Stash applies them: lowercased, Go RE2, bad ones skipped."""

from __future__ import annotations

import logging
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tagman_base.settings import TagBlacklist
from tagman_base.tag_patterns import ExcludePatterns, InvalidPattern, UntranslatablePattern, go_lower, translate
from tests.conftest import run_plugin


@pytest.mark.parametrize("pattern, excluded, kept", [
    (r"^4K$", ["4k", "4K"], ["4k video", "4k\n"]),          # $ is the end of the text in Go
    (r"\D+", ["123"], ["abc"]),                             # lowercased: \D is \d
    (r"^\W+$", ["abc_1"], ["a-b"]),                         # \W is \w, ASCII only
    (r"\S", [" "], ["ab"]),                                  # \S is \s
    (r"\bsolo\b", ["Solo Girl", "ésolo"], ["solos"]),        # ASCII word boundary (é is no word char in Go)
    (r"^\d", ["1st"], ["١st"]),                              # \d is ASCII only
    (r"[[:upper:]]", [], ["ABC", "abc"]),                    # the name is lowercased before matching
    (r"x{,3}", ["x{,3}"], ["xxx"]),                          # not a repeat in Go: literal
    (r"a(?i)b|c", ["AB", "c"], ["a", "b"]),                      # flags run to the end of the group
    (r"(?<year>\d{4})", ["2024"], ["202"]),                  # Go 1.22+ named group syntax
    (r"^$", [""], ["a"]),
    (r"[\d-z]", ["-", "5", "z"], ["m"]),                     # a Perl class is no range start
    (r"\A", ["\x07"], ["a"]),                                # lowercased \A is the bell \a
])
def test_patterns_match_as_stash_applies_them(pattern, excluded, kept):
    compiled = ExcludePatterns.compile([pattern])
    assert [compiled.matches(n) for n in excluded] == [True] * len(excluded)
    assert [compiled.matches(n) for n in kept] == [False] * len(kept)


@pytest.mark.parametrize("pattern", [
    r"\p{Lu}", r"\pL", r"\P{Greek}", r"[\p{L}]",           # Go 1.24 has no lower-case class names
    r"\Qa.b\E", r"(?U)a+", r"(?=x)", r"(?<!x)a", r"(a)\1",  # \q, (?u), lookarounds, back-references
    r"a**", r"a*+", r"a{1001}", r"a{2,1}", r"[z-a]", r"[bad", r"(", r")", r"*a", r"[[:nope:]]", "\\",
])
def test_patterns_go_rejects_are_skipped_with_a_warning(pattern, caplog):
    with pytest.raises(InvalidPattern):
        translate(pattern)
    with caplog.at_level(logging.WARNING, logger="tag_patterns"):
        compiled = ExcludePatterns.compile([pattern, "^keep$"])
    assert len(compiled.patterns) == 1 and compiled.matches("Keep")
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert pattern in caplog.records[0].getMessage() and "Stash skips it too" in caplog.records[0].getMessage()


def test_go_valid_pattern_without_python_equivalent_is_skipped_with_a_warning(caplog):
    with pytest.raises(UntranslatablePattern):
        translate(r"[[:^alpha:]]")
    with caplog.at_level(logging.WARNING, logger="tag_patterns"):
        assert ExcludePatterns.compile([r"[[:^alpha:]]"]).patterns == ()
    assert "no equivalent" in caplog.text


def go_quote_meta(text: str) -> str:
    """Go's regexp.QuoteMeta."""
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", text)


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20))
def test_a_quoted_name_excludes_exactly_that_name_in_any_case(name):
    compiled = ExcludePatterns.compile(["^" + go_quote_meta(name) + "$"])
    assert compiled.matches(name) and compiled.matches(name.upper() if len(go_lower(name.upper())) == len(name)
                                                       and go_lower(name.upper()) == go_lower(name) else name)
    assert not compiled.matches(name + "x")


def test_blacklist_combines_the_setting_and_stash_patterns():
    blacklist = TagBlacklist.parse("/^own$/", [r"\p{Lu}", r"^stash\d$"])
    assert blacklist.matches("Own") and blacklist.matches("STASH1") and not blacklist.matches("Other")


def test_tag_sync_skips_bad_stash_patterns_with_warnings(servers, tmp_path):
    servers.library.world.exclude_tag_patterns = ["[bad", r"\p{Lu}", r"^zzz-never$"]
    run = run_plugin({"server_connection": servers.server_connection(tmp_path),
                      "args": {"mode": "sync_scene_tags", "dry_run": "true"}})
    assert run.returncode == 0, run.stderr
    warnings = run.log_lines("w")
    assert any("/[bad/" in w for w in warnings) and any("/\\p{Lu}/" in w for w in warnings)
    assert run.document["output"]["scenes_seen"] > 0
