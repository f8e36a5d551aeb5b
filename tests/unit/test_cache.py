"""cache.py: the one bounded, expiring map (QIDO's page boundaries, the guard's client records)."""

from __future__ import annotations

from dicomweb_server.cache import MISSING, TTLCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_missing_is_not_none() -> None:
    cache: TTLCache[str, int | None] = TTLCache()
    assert cache.get("a") is MISSING
    cache.put("a", None)  # a cached "no such client" is an answer too
    assert cache.get("a") is None


def test_least_recently_used_goes_first() -> None:
    cache: TTLCache[str, int] = TTLCache(size=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is MISSING
    assert (cache.get("a"), cache.get("c"), len(cache)) == (1, 3, 2)
    cache.put("a", 4)  # replacing refreshes
    cache.put("d", 5)
    assert (cache.get("a"), cache.get("c")) == (4, MISSING)


def test_max_age_is_per_lookup() -> None:
    clock = Clock()
    cache: TTLCache[str, bool] = TTLCache(clock=clock)
    cache.put("t", True)
    clock.now += 4.9
    assert cache.get("t", 5.0) is True
    assert cache.get("t") is True  # no age limit: still there
    clock.now += 0.1
    assert cache.get("t", 5.0) is MISSING  # expired entries are dropped
    assert cache.get("t") is MISSING
    cache.put("t", False)
    assert cache.get("t", 0) is MISSING  # an age limit of 0 turns caching off


def test_clear() -> None:
    cache: TTLCache[int, int] = TTLCache()
    cache.put(1, 1)
    cache.clear()
    assert cache.get(1) is MISSING and len(cache) == 0
