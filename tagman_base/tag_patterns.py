"""Stash's excluded tag patterns (Settings › Scraping), applied exactly as Stash applies them.

Stash lowercases each pattern and compiles it with Go's ``regexp`` package (RE2 syntax, Go 1.24 as
Stash ships it), skipping an invalid pattern with a log line; a scraped tag is excluded when the
lowercased tag name matches (``pkg/scraper/tag.go``). Go's syntax is not Python's, so each pattern is
translated here from Go's grammar into an equivalent Python pattern:

- lowercasing happens first, so ``\\D \\W \\S \\B`` become ``\\d \\w \\s \\b``, ``\\A`` becomes the bell
  ``\\a``, ``\\Z`` becomes Go's end of text ``\\z``, and ``(?U)`` becomes the invalid ``(?u)``;
- ``\\p{Lu}``, ``\\pL``, ``\\p{Greek}`` become ``\\p{lu}``, ``\\pl``, ``\\p{greek}``: Go 1.24 looks
  Unicode class names up case-sensitively, so Stash rejects every ``\\p`` / ``\\P`` class after
  lowercasing, and so do we (skipped with a warning);
- ``\\d \\s \\w \\b`` are ASCII-only in Go; ``$`` is the end of the text (not before a final
  newline) unless ``(?m)``; ``x{,n}`` and any ``{`` that is not a repeat are literal; a repeat
  count above 1000, stacked repetitions (``a**``, possessive ``a*+``), lookarounds and
  back-references are errors; ``(?i)`` in mid-pattern applies to the rest of its group.

A pattern Go rejects is skipped with a warning, as Stash does; a pattern Go accepts that has no
Python equivalent here (e.g. ``[[:^alpha:]]``) is also skipped with a warning, never a crash.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAX_REPEAT = 1000
ASCII_WORD = "0-9A-Za-z_"
PERL_CLASSES = {"d": "0-9", "s": "\\t\\n\\f\\r ", "w": ASCII_WORD}
SIMPLE_ESCAPES = {"a": "\\x07", "f": "\\f", "n": "\\n", "r": "\\r", "t": "\\t", "v": "\\v"}
WORD_BOUNDARY = f"(?:(?<=[{ASCII_WORD}])(?![{ASCII_WORD}])|(?<![{ASCII_WORD}])(?=[{ASCII_WORD}]))"
POSIX_CLASSES = {
    "alnum": "0-9A-Za-z", "alpha": "A-Za-z", "ascii": "\\x00-\\x7f", "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f", "digit": "0-9", "graph": "!-~", "lower": "a-z", "print": " -~",
    "punct": "!-/:-@\\[-`{-~", "space": "\\t\\n\\v\\f\\r ", "upper": "A-Z", "word": ASCII_WORD,
    "xdigit": "0-9A-Fa-f",
}
REPEAT = re.compile(r"\{(\d+)(,(\d*))?\}")
GROUP_NAME = re.compile(r"[0-9A-Za-z_]+")


class InvalidPattern(ValueError):
    """Go's regexp rejects the pattern (Stash skips it too)."""


class UntranslatablePattern(ValueError):
    """Go accepts the pattern, but it has no Python equivalent here."""


def go_lower(text: str) -> str:
    """Lowercase rune by rune like Go's ``strings.ToLower`` (one rune in, one rune out)."""
    return "".join(low if len(low := ch.lower()) == 1 else low[0] for ch in text)


class _Translator:
    """Walks one (already lowercased) Go pattern and emits the Python equivalent."""

    def __init__(self, pattern: str) -> None:
        self.p = pattern
        self.i = 0
        self.out: list[str] = []
        self.root: dict = {"scopes": [], "flags": set()}
        self.groups: list[dict] = []  # per open group: inline flag scopes opened in it, flags at open
        self.flags: set[str] = set()
        self.can_repeat = False  # an atom precedes
        self.after_repeat = False

    def run(self) -> str:
        """The translated pattern."""
        while self.i < len(self.p):
            self.step()
        if self.groups:
            raise InvalidPattern("missing closing )")
        return "".join(self.out) + ")" * len(self.root["scopes"])

    def level(self) -> dict:
        """The innermost open group (or the whole pattern)."""
        return self.groups[-1] if self.groups else self.root

    def atom(self, text: str) -> None:
        self.out.append(text)
        self.can_repeat, self.after_repeat = True, False

    def step(self) -> None:
        c = self.p[self.i]
        if c == "\\":
            self.atom(self.escape())
        elif c == "[":
            self.atom(self.char_class())
        elif c == "(":
            self.open_group()
        elif c == ")":
            self.close_group()
        elif c in "*+?":
            self.i += 1
            self.repetition(c)
        elif c == "{" and (m := REPEAT.match(self.p, self.i)):
            low, high = int(m.group(1)), m.group(3)
            if low > MAX_REPEAT or (high and int(high) > MAX_REPEAT):
                raise InvalidPattern(f"invalid repeat count {m.group(0)}")
            if high and int(high) < low:
                raise InvalidPattern(f"invalid repeat count {m.group(0)}")
            self.i = m.end()
            self.repetition(m.group(0))
        elif c == "|":
            # Go's inline flags last to the end of the group, across alternatives: close the
            # Python scopes before the bar and reopen them after it.
            self.i += 1
            scopes = self.level()["scopes"]
            self.out.append(")" * len(scopes) + "|" + "".join(f"(?{spec}:" for spec in scopes))
            self.can_repeat = self.after_repeat = False
        elif c == "^":
            self.i += 1
            self.atom("^")
        elif c == "$":
            self.i += 1
            self.atom("$" if "m" in self.flags else "\\Z")
        elif c == ".":
            self.i += 1
            self.atom(".")
        else:
            self.i += 1
            self.atom(re.escape(c))

    def repetition(self, op: str) -> None:
        """A repetition operator, with Go's rules for missing and stacked operators."""
        if self.after_repeat:
            raise InvalidPattern(f"invalid nested repetition operator {op}")
        if not self.can_repeat:
            raise InvalidPattern(f"missing argument to repetition operator {op}")
        if self.p.startswith("?", self.i):  # non-greedy
            op += "?"
            self.i += 1
        self.out.append(op)
        self.after_repeat = True

    def open_group(self) -> None:
        """``(``, ``(?:``, ``(?P<name>``, ``(?<name>``, ``(?flags)`` and ``(?flags:``."""
        rest = self.p[self.i:]
        self.groups.append({"scopes": [], "flags": set(self.flags)})
        self.can_repeat = self.after_repeat = False
        if not rest.startswith("(?"):
            self.i += 1
            self.out.append("(")
            return
        for prefix in ("(?P<", "(?p<", "(?<"):
            if rest.startswith(prefix) and not rest.startswith(("(?<=", "(?<!")):
                end = rest.find(">")
                name = rest[len(prefix):end] if end > 0 else ""
                if not GROUP_NAME.fullmatch(name):
                    raise InvalidPattern(f"invalid named capture {rest[:end + 1] or rest}")
                self.i += end + 1
                self.out.append(f"(?P<{name}>")
                return
        self.flag_group(rest)

    def flag_group(self, rest: str) -> None:
        """``(?flags)`` (rest of the enclosing group) or ``(?flags:re)``; Go knows i, m, s and U."""
        m = re.match(r"\(\?([a-zA-Z]*)(?:-([a-zA-Z]*))?([:)])", rest)
        if not m or any(f not in "imsU" for f in (m.group(1) + (m.group(2) or ""))):
            raise InvalidPattern(f"invalid or unsupported Perl syntax {rest[:4]}")
        on, off, end = m.group(1), m.group(2), m.group(3)
        if off == "" or (end == ")" and not on and off is None):
            raise InvalidPattern(f"invalid or unsupported Perl syntax {m.group(0)}")
        spec = on + (f"-{off}" if off else "")
        self.i += m.end()
        if end == ":":
            self.flags = (self.flags | set(on)) - set(off or "")
            self.out.append(f"(?{spec}:" if spec else "(?:")
            return
        self.groups.pop()  # not a group: the flags apply to the rest of the enclosing group
        self.flags = (self.flags | set(on)) - set(off or "")
        self.out.append(f"(?{spec}:")
        self.level()["scopes"].append(spec)
        self.can_repeat = self.after_repeat = False

    def close_group(self) -> None:
        if not self.groups:
            raise InvalidPattern("unexpected )")
        group = self.groups.pop()
        self.i += 1
        self.flags = group["flags"]
        self.atom(")" * (len(group["scopes"]) + 1))

    def escape(self, in_class: bool = False) -> str:
        """One backslash escape, as Go reads it (outside or inside a class)."""
        if self.i + 1 >= len(self.p):
            raise InvalidPattern("trailing backslash at end of expression")
        c = self.p[self.i + 1]
        self.i += 2
        if c in PERL_CLASSES:
            return PERL_CLASSES[c] if in_class else f"[{PERL_CLASSES[c]}]"
        if c == "b" and not in_class:
            return WORD_BOUNDARY
        if c == "z" and not in_class:
            return "\\Z"
        if c in "pP":
            raise InvalidPattern(f"invalid character class range \\{c}… (Go 1.24 has no lower-case Unicode class names)")
        if c in SIMPLE_ESCAPES:
            return SIMPLE_ESCAPES[c]
        if c == "x":
            return self.hex_escape()
        if c in "01234567":
            return self.octal_escape(c)
        if c < "\x80" and not c.isalnum():
            return re.escape(c) if c != " " else " "
        raise InvalidPattern(f"invalid escape sequence \\{c}")

    def hex_escape(self) -> str:
        m = re.match(r"\{([0-9a-fA-F]{1,8})\}|([0-9a-fA-F]{2})", self.p[self.i:])
        if not m or int(m.group(1) or m.group(2), 16) > 0x10FFFF:
            raise InvalidPattern("invalid escape sequence \\x")
        self.i += m.end()
        return f"\\U{int(m.group(1) or m.group(2), 16):08x}"

    def octal_escape(self, first: str) -> str:
        digits = first
        if first != "0" and not (self.i < len(self.p) and self.p[self.i] in "01234567"):
            raise InvalidPattern(f"invalid escape sequence \\{first} (back-references are not supported)")
        while len(digits) < 3 and self.i < len(self.p) and self.p[self.i] in "01234567":
            digits += self.p[self.i]
            self.i += 1
        return f"\\U{int(digits, 8):08x}"

    def char_class(self) -> str:
        """``[...]`` with Go's rules: ``]`` first is literal, ``[:name:]`` POSIX classes, ranges."""
        self.i += 1
        negated = self.p.startswith("^", self.i)
        self.i += negated
        items: list[str] = []
        first = True
        while True:
            if self.i >= len(self.p):
                raise InvalidPattern("missing closing ]")
            c = self.p[self.i]
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            if c == "[" and self.p.startswith("[:", self.i):
                end = self.p.find(":]", self.i + 2)
                if end >= 0:
                    items.append(self.posix_class(self.p[self.i + 2:end]))
                    self.i = end + 2
                    continue
            lo, is_set = self.class_char()
            if not is_set and self.p.startswith("-", self.i) and self.i + 1 < len(self.p) \
                    and self.p[self.i + 1] != "]":
                self.i += 1
                hi, hi_is_set = self.class_char()
                if hi_is_set or ord(_unescape(hi)) < ord(_unescape(lo)):
                    raise InvalidPattern("invalid character class range")
                items.append(f"{lo}-{hi}")
            else:
                items.append(lo)
        return f"[{'^' if negated else ''}{''.join(items)}]"

    def class_char(self) -> tuple[str, bool]:
        """One class item escaped for Python, and whether it is a set (``\\d``: never a range end)."""
        c = self.p[self.i]
        if c == "\\":
            is_set = self.i + 1 < len(self.p) and self.p[self.i + 1] in PERL_CLASSES
            return self.escape(in_class=True), is_set
        self.i += 1
        return ("\\" + c if c < "\x80" and not c.isalnum() else c), False

    def posix_class(self, name: str) -> str:
        if name.startswith("^"):
            if name[1:] in POSIX_CLASSES:
                raise UntranslatablePattern(f"negated POSIX class [:{name}:] inside a class")
            raise InvalidPattern(f"invalid character class range [:{name}:]")
        if name not in POSIX_CLASSES:
            raise InvalidPattern(f"invalid character class range [:{name}:]")
        return POSIX_CLASSES[name]


def _unescape(text: str) -> str:
    """The character an escaped class item stands for (for range order checks)."""
    if text.startswith("\\U"):
        return chr(int(text[2:], 16))
    if text.startswith("\\x"):
        return chr(int(text[2:], 16))
    if len(text) == 2 and text[0] == "\\":
        return {"t": "\t", "n": "\n", "r": "\r", "f": "\f", "v": "\v"}.get(text[1], text[1])
    return text[-1]


def translate(pattern: str) -> str:
    """The Python equivalent of the Go pattern Stash compiles for ``pattern`` (lowercased first)."""
    python = _Translator(go_lower(pattern)).run()
    try:
        re.compile(python)
    except re.error as exc:
        raise UntranslatablePattern(str(exc)) from None
    return python


@dataclass(frozen=True)
class ExcludePatterns:
    """Compiled exclusion patterns; ``matches`` lowercases the name as Stash does."""

    patterns: tuple[re.Pattern[str], ...] = ()

    def matches(self, name: str) -> bool:
        """True when Stash would exclude a tag of this name."""
        lowered = go_lower(name)
        return any(p.search(lowered) for p in self.patterns)

    @classmethod
    def compile(cls, patterns: Iterable[str]) -> ExcludePatterns:
        """Compile every usable pattern; each skipped one gets one warning naming it and why."""
        compiled = []
        for pattern in patterns:
            if not pattern:
                log.warning("An excluded tag pattern (Settings › Scraping) is empty: like Stash, every tag matches it.")
            try:
                compiled.append(re.compile(translate(pattern)))
            except InvalidPattern as exc:
                log.warning(f"Excluded tag pattern /{pattern}/ (Settings › Scraping) is skipped: Go's regexp "
                            f"rejects it once lowercased ({exc}); Stash skips it too.")
            except UntranslatablePattern as exc:
                log.warning(f"Excluded tag pattern /{pattern}/ (Settings › Scraping) is skipped: Stash applies it, "
                            f"but it has no equivalent here ({exc}). Rewrite it without that construct.")
        return cls(tuple(compiled))
