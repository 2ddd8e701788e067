"""Loading the real Stash and stash-box schemas from ../shared/reference (never copied here)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
from graphql import GraphQLSchema, build_schema

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
STASH_SCHEMA_DIR = REFERENCE / "stash-graphql"
STASHBOX_SCHEMA_DIR = REFERENCE / "stash-box-graphql" / "graphql" / "schema"


def _read_sdl(folder: Path) -> str:
    """Concatenate a schema folder's .graphql files, skipping the test when they are absent."""
    if not folder.exists():
        pytest.skip(f"reference schema not found at {folder}: ../shared/reference is absent")
    return "\n".join(p.read_text() for p in sorted(folder.rglob("*.graphql")))


@functools.cache
def _build(folder: Path) -> GraphQLSchema:
    """Build a schema, declaring away custom directives that build_schema does not know."""
    # gqlgen accepts Python-style boolean defaults (stash-box has `Boolean = False`); graphql-core does not.
    sdl = re.sub(r"=\s*(True|False)\b", lambda m: "= " + m.group(1).lower(), _read_sdl(folder))
    directives = set(re.findall(r"@(\w+)", sdl)) - {"deprecated", "specifiedBy", "oneOf", "include", "skip"}
    declared = set(re.findall(r"directive\s+@(\w+)", sdl))
    extra = "\n".join(f"directive @{d}(role: String) on FIELD_DEFINITION | OBJECT | INPUT_FIELD_DEFINITION | ARGUMENT_DEFINITION | ENUM_VALUE"
                      for d in sorted(directives - declared))
    return build_schema(sdl + "\n" + extra, assume_valid_sdl=True)


def real_stash_schema() -> GraphQLSchema:
    """The real Stash schema (skips the test when the reference folder is absent)."""
    return _build(STASH_SCHEMA_DIR)


def real_stashbox_schema() -> GraphQLSchema:
    """The real stash-box schema (skips the test when the reference folder is absent)."""
    return _build(STASHBOX_SCHEMA_DIR)
