"""Demo and benchmarks that run the plugin against the fake Stash and fake StashDB."""
