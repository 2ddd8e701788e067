"""PagePrefetch: pages in order, bounded read-ahead, errors raised in the caller, a clean stop."""

from __future__ import annotations

import threading

import pytest

from tagman_base.prefetch import PagePrefetch

WAIT_S = 20.0


class Pages:
    """A fetch function over ``count`` pages that records what was fetched while the caller held what."""

    def __init__(self, count: int, fail_at: int | None = None) -> None:
        self.count = count
        self.fail_at = fail_at
        self.taken: list[int] = []
        self.started: list[int] = []
        self.ahead_seen: list[int] = []          # pages fetched and not taken when a fetch starts
        self.fetch_started = {n: threading.Event() for n in range(1, count + 2)}

    def fetch(self, number: int) -> dict:
        """The page ``number``: its items, or the planted failure."""
        self.ahead_seen.append(number - 1 - len(self.taken))
        self.started.append(number)
        self.fetch_started[number].set()
        if number == self.fail_at:
            raise ConnectionError(f"page {number} lost")
        return {"number": number, "items": [number] * 3}

    def more(self, number: int, _page: dict) -> bool:
        """Whether a page follows."""
        return number < self.count


@pytest.mark.parametrize("ahead", [1, 2])
def test_prefetch_yields_every_page_in_order_and_reads_ahead_within_the_bound(ahead):
    pages = Pages(6)
    with PagePrefetch(pages.fetch, first=1, more=pages.more, ahead=ahead) as prefetch:
        for number, page in prefetch:
            pages.taken.append(number)
            assert page["number"] == number
            if number < pages.count:  # the next page is fetched while this one is worked on
                assert pages.fetch_started[number + 1].wait(WAIT_S)
    assert pages.taken == [1, 2, 3, 4, 5, 6]
    assert pages.started == [1, 2, 3, 4, 5, 6]  # nothing past the last page
    assert max(pages.ahead_seen) <= ahead


def test_prefetch_starts_at_the_given_page():
    pages = Pages(4)
    with PagePrefetch(pages.fetch, first=3, more=pages.more) as prefetch:
        assert [number for number, _ in prefetch] == [3, 4]


def test_prefetch_raises_a_fetch_error_in_the_caller_after_the_pages_before_it():
    pages = Pages(6, fail_at=3)
    got = []
    with pytest.raises(ConnectionError, match="page 3 lost"):
        with PagePrefetch(pages.fetch, first=1, more=pages.more) as prefetch:
            for number, _page in prefetch:
                got.append(number)
    assert got == [1, 2]
    assert pages.started == [1, 2, 3]  # nothing fetched after the failure


def test_prefetch_raises_an_error_of_more_in_the_caller():
    def more(_number, _page):
        raise KeyError("count")

    with pytest.raises(KeyError):
        with PagePrefetch(lambda n: n, first=1, more=more) as prefetch:
            list(prefetch)


def test_prefetch_stops_when_the_caller_stops_early():
    pages = Pages(100)
    with PagePrefetch(pages.fetch, first=1, more=pages.more, ahead=2) as prefetch:
        for number, _page in prefetch:
            pages.taken.append(number)
            if number == 3:
                break
        thread = prefetch._thread
    assert not thread.is_alive()
    assert max(pages.started) <= 3 + 2  # the bound holds; the thread fetched nothing after the stop


def test_prefetch_stops_when_the_caller_fails():
    pages = Pages(100)
    with pytest.raises(RuntimeError):
        with PagePrefetch(pages.fetch, first=1, more=pages.more) as prefetch:
            for number, _page in prefetch:
                if number == 2:
                    raise RuntimeError("disk full")
    assert not prefetch._thread.is_alive()
    assert max(pages.started) <= 3


def test_prefetch_close_waits_for_the_request_in_flight():
    release = threading.Event()
    in_flight = threading.Event()

    def fetch(number):
        if number == 2:
            in_flight.set()
            assert release.wait(WAIT_S)
        return number

    prefetch = PagePrefetch(fetch, first=1, more=lambda n, _p: True)
    with prefetch:
        iterator = iter(prefetch)
        assert next(iterator) == (1, 1)
        assert in_flight.wait(WAIT_S)
        closer = threading.Thread(target=prefetch.close)
        closer.start()
        assert prefetch._thread.is_alive()  # page 2 is still being fetched
        release.set()
        closer.join(WAIT_S)
    assert not prefetch._thread.is_alive()
