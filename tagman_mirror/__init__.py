"""The sidecar SQLite mirror of Stash: entity model, queries, schema, store, sync engine and live modes."""
