"""The fake Stash serves reads side by side (as Stash does) and runs a mutation alone."""

from __future__ import annotations

import threading

import pytest
import requests

from tests.fakes.fake_stash import FakeStash, World
from tests.fakes.library import generate_library

WAIT_S = 20.0
FIND_SCENES = "query BenchFind { findScenes(filter: {per_page: 5}) { count scenes { id } } }"
EDIT_SCENE = 'mutation BenchEdit { sceneUpdate(input: {id: "1", details: "edited"}) { id } }'


def post(fake: FakeStash, query: str) -> dict:
    """Send one request and return its JSON answer."""
    return requests.post(fake.url + "/graphql", json={"query": query}, timeout=WAIT_S).json()


def in_thread(target) -> threading.Thread:
    """Run ``target`` in a started thread."""
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def library():
    return generate_library(seed=3, scenes=20, tags=10, performers=5, studios=3, groups=2, galleries=2, images=5)


def test_fake_serves_concurrent_reads(library, monkeypatch):
    # each read waits inside its execution until the other one is inside too: served one after
    # the other, the first would wait alone and the barrier would break
    both_inside = threading.Barrier(2, timeout=WAIT_S)
    real_find = World.find

    def find_after_the_other(self, *args, **kwargs):
        both_inside.wait()
        return real_find(self, *args, **kwargs)

    monkeypatch.setattr(World, "find", find_after_the_other)
    answers: list[dict] = []
    with FakeStash(library.world) as fake:
        threads = [in_thread(lambda: answers.append(post(fake, FIND_SCENES))) for _ in range(2)]
        for thread in threads:
            thread.join(WAIT_S)
    assert len(answers) == 2
    assert all("errors" not in a and a["data"]["findScenes"]["count"] == 20 for a in answers)


def test_fake_runs_a_mutation_alone(library, monkeypatch):
    reading = threading.Event()
    finish_read = threading.Event()
    real_find = World.find

    def slow_find(self, *args, **kwargs):
        reading.set()
        assert finish_read.wait(WAIT_S)
        return real_find(self, *args, **kwargs)

    monkeypatch.setattr(World, "find", slow_find)
    world = library.world
    before = world.get("scene", 1)["details"]
    with FakeStash(world) as fake:
        reader = in_thread(lambda: post(fake, FIND_SCENES))
        assert reading.wait(WAIT_S)
        writer = in_thread(lambda: post(fake, EDIT_SCENE))
        assert _await(lambda: world.lock._writers_waiting == 1)  # the edit waits for the read
        assert world.get("scene", 1)["details"] == before
        finish_read.set()
        reader.join(WAIT_S)
        writer.join(WAIT_S)
    assert world.get("scene", 1)["details"] == "edited"
    assert world.lock.readers == 0


def _await(condition) -> bool:
    """Wait (bounded) until ``condition()`` holds."""
    done = threading.Event()
    for _ in range(int(WAIT_S / 0.01)):
        if condition():
            return True
        done.wait(0.01)
    return bool(condition())
