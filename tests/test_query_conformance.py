"""Every GraphQL document the plugin can send validates against the real schemas."""

from __future__ import annotations

import importlib

import pytest
from graphql import parse, validate

from tests.reference import real_stash_schema, real_stashbox_schema

STASH_MODULES = ["stash_client", "stashdb_scene_sync", "local_cache", "mirror_signals"]
STASHBOX_MODULES = ["stashdb_api"]


def documents(module_names: list[str]) -> dict[str, str]:
    """Module-level *_QUERY / *_MUTATION string constants of the named runtime modules."""
    found = {}
    for name in module_names:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for attr, value in vars(module).items():
            if attr.endswith(("_QUERY", "_MUTATION")) and isinstance(value, str):
                found[f"{name}.{attr}"] = value
    return found


def all_stash_documents() -> dict[str, str]:
    """Every document sent to Stash, by qualified constant name."""
    return documents(STASH_MODULES)


@pytest.mark.parametrize("name", sorted(all_stash_documents()))
def test_stash_document_is_valid(name):
    document = all_stash_documents()[name]
    errors = validate(real_stash_schema(), parse(document))
    assert not errors, f"{name}: {[e.message for e in errors]}"


@pytest.mark.parametrize("name", sorted(documents(STASHBOX_MODULES)))
def test_stashbox_document_is_valid(name):
    document = documents(STASHBOX_MODULES)[name]
    errors = validate(real_stashbox_schema(), parse(document))
    assert not errors, f"{name}: {[e.message for e in errors]}"


def test_documents_are_named_operations():
    for name, document in {**all_stash_documents(), **documents(STASHBOX_MODULES)}.items():
        definitions = parse(document).definitions
        assert len(definitions) == 1 and definitions[0].name is not None, name


def test_generated_batch_mutation_is_valid():
    from stashdb_scene_sync import add_tags_batch_document, add_tags_input

    document = parse(add_tags_batch_document(3))
    assert not validate(real_stash_schema(), document)
    from graphql.execution.values import get_variable_values

    variables = {f"u{i}": add_tags_input(frozenset({1, 2}), [5, 6]) for i in range(3)}
    coerced = get_variable_values(real_stash_schema(), document.definitions[0].variable_definitions, variables)
    assert not isinstance(coerced, list), coerced
