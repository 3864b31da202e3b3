"""A prediction cache: least recently used predictions, keyed by model version and input row.

Clipper caches predictions in front of its models because online traffic repeats (the
same comment pasted under many videos, a client that retries): a hit skips the queue and
the model. The model version is part of the key, so a promotion never answers with the
previous model's predictions, and the old version's entries simply age out.

Usage::

    cache = PredictionCache(entries=10_000)
    record = cache.get("3", ("check out my channel",))   # None: a miss
    cache.put("3", ("check out my channel",), {"label": "spam", ...})
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

__all__ = ["PredictionCache", "Record"]

Record = dict[str, Any]
"""One row's prediction: output column -> value."""


class PredictionCache:
    """An LRU of at most ``entries`` predictions (0: no caching), with hit and miss counts.

    Rows that cannot be hashed (a list inside a value) are never cached and count as
    misses. A lock makes it safe from any thread; it is held for a dict operation only.
    """

    def __init__(self, entries: int) -> None:
        if isinstance(entries, bool) or not isinstance(entries, int) or entries < 0:
            raise ValueError(f"cache entries must be an int >= 0, got {entries!r}")
        self.entries = entries
        self.hits = 0
        self.misses = 0
        self._data: OrderedDict[tuple[str, Hashable], Record] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.entries > 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, version: str, row: Hashable) -> Record | None:
        """The cached prediction of ``row`` by model ``version``, or None (a miss)."""
        with self._lock:
            try:
                record = self._data.get((version, row))
            except TypeError:
                record = None
            if record is None:
                self.misses += 1
                return None
            self._data.move_to_end((version, row))
            self.hits += 1
            return record

    def put(self, version: str, row: Hashable, record: Record) -> None:
        """Remember ``record`` as the prediction of ``row`` by ``version``; the least
        recently used entry goes when the cache is full."""
        if not self.enabled:
            return
        key = (version, row)
        with self._lock:
            try:
                self._data[key] = record
            except TypeError:
                return
            self._data.move_to_end(key)
            if len(self._data) > self.entries:
                self._data.popitem(last=False)
