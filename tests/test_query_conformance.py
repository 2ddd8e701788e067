"""Every GraphQL document the plugin can send validates against the real schemas."""

from __future__ import annotations

import importlib

import pytest
from graphql import parse, validate

from tagman_mirror.entities import SPECS
from tagman_mirror.queries import REGISTRY, status_counts_query, status_listing_query
from tests.fakes.fake_stash import fake_schema
from tests.reference import real_stash_schema, real_stashbox_schema


STASH_MODULES = ["tagman_base.stash_client", "tagman_tagsync.matcher", "tagman_tagsync.stash_scenes",
                 "tagman_tagsync.writes", "stashdb_tag_links", "tagman_base.stash_auth", "tagman_base.hook_switch"]
STASHBOX_MODULES = ["stashdb_api"]


def documents(module_names: list[str]) -> dict[str, str]:
    """Module-level *_QUERY / *_MUTATION string constants of the named runtime modules."""
    found = {}
    for name in module_names:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if attr.endswith(("_QUERY", "_MUTATION")) and isinstance(value, str):
                found[f"{name}.{attr}"] = value
    return found


def all_stash_documents() -> dict[str, str]:
    """Every document sent to Stash: the clients' constants and the cache's registry, by name."""
    from tagman_mirror.queries import REGISTRY

    return {**documents(STASH_MODULES), **{f"tagman_mirror.queries.{name}": doc for name, doc in REGISTRY.items()}}


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
    from tagman_tagsync.writes import add_tags_batch_document, add_tags_input

    document = parse(add_tags_batch_document(3))
    assert not validate(real_stash_schema(), document)
    from graphql.execution.values import get_variable_values

    variables = {f"u{i}": add_tags_input(frozenset({1, 2}), [5, 6]) for i in range(3)}
    coerced = get_variable_values(real_stash_schema(), document.definitions[0].variable_definitions, variables)
    assert not isinstance(coerced, list), coerced


def test_every_query_is_a_named_operation_valid_against_the_real_and_fake_schema():
    from tests.reference import real_stash_schema  # skips when ../shared/reference is absent

    real = real_stash_schema()
    for query in REGISTRY.values():
        document = parse(query)
        assert len(document.definitions) == 1 and document.definitions[0].name is not None
        assert not validate(real, document), query
        assert not validate(fake_schema(), document), query


def test_status_queries_are_valid():
    schemas = [fake_schema()]
    try:
        from tests.reference import real_stash_schema

        schemas.append(real_stash_schema())
    except pytest.skip.Exception:
        pass
    for query in (status_counts_query(SPECS), status_listing_query(SPECS[:1])):
        document = parse(query)
        assert len(document.definitions) == 1 and document.definitions[0].name is not None
        for schema in schemas:
            assert not validate(schema, document), query
