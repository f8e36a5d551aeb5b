"""The one in-process cache: a bounded map with least-recently-used eviction and an optional age limit.

Two parts of the server keep small answers in memory: QIDO-RS remembers where earlier pages
of a result list ended (``db.search.PageCache``: no age limit, an entry is a fact about the
index until a delete clears the cache), and the access guard keeps client and tenant records
for a few seconds (so a disabled client is refused within that time).  Both are this class:
one eviction rule, one clock.  Each cache belongs to what builds it in the lifespan; nothing
here is module state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from enum import Enum
from typing import Generic, Literal, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Missing(Enum):
    """What ``get`` answers for a key it does not hold (``None`` may be a cached value)."""

    MISSING = 0


MISSING = Missing.MISSING


class TTLCache(Generic[K, V]):
    """At most ``size`` entries, the least recently used evicted first; ``get`` with a
    ``max_age`` (seconds) treats an older entry as missing.  Not thread-safe: one event loop."""

    def __init__(self, size: int = 10_000, *, clock: Callable[[], float] = time.monotonic):
        self.size = size
        self._clock = clock
        self._entries: dict[K, tuple[float, V]] = {}  # insertion order is recency order

    def get(self, key: K, max_age: float | None = None) -> V | Literal[Missing.MISSING]:
        entry = self._entries.pop(key, None)
        if entry is None:
            return MISSING
        stamp, value = entry
        if max_age is not None and self._clock() - stamp >= max_age:
            return MISSING  # expired: dropped
        self._entries[key] = entry  # most recently used last
        return value

    def put(self, key: K, value: V) -> None:
        self._entries.pop(key, None)
        self._entries[key] = (self._clock(), value)
        while len(self._entries) > self.size:
            del self._entries[next(iter(self._entries))]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
