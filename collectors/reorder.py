"""Reordering by uniqueId with a bounded cache and a time bound (pure logic, no Kafka).

Frames arrive from several partitions in any order; the output must be strictly increasing.
A frame is released as soon as it is the next expected id. When the cache holds more than
``cache_size`` frames, or the oldest waiting frame has waited ``max_delay`` seconds, the
reorderer gives up on the gap: it skips ahead to the lowest cached id and counts the skipped
ids as missed. Anything below the next expected id is either *late* (it was skipped) or a
*duplicate* (it was already emitted, e.g. redelivered by an at-least-once processor).

On a fresh start the first id is unknown, so nothing is released until the cache or the time
bound forces it (then the lowest cached id starts the stream, and the frames waiting behind it
get a fresh ``max_delay``: waiting for the start is not waiting for a gap); after a restart the
saved :class:`ReorderState` says where to continue.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

# Skipped ranges remembered to tell a late frame from a duplicate (and persisted on restart).
MAX_MISSED_RANGES = 64


@dataclass
class ReorderState:
    """What must survive a restart: where to continue and which ids were given up on."""

    next_expected: int | None = None
    missed_ranges: list[tuple[int, int]] = field(default_factory=list)  # inclusive (lo, hi)
    fresh_start: int | None = None  # first id of a stream started without history

    @property
    def last_emitted(self) -> int | None:
        return None if self.next_expected is None else self.next_expected - 1

    def to_json(self) -> dict[str, object]:
        return {"next": self.next_expected, "missed": [list(r) for r in self.missed_ranges],
                "start": self.fresh_start}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ReorderState:
        nxt, start, missed = data.get("next"), data.get("start"), data.get("missed") or []
        return cls(
            next_expected=None if nxt is None else int(nxt),  # type: ignore[call-overload]
            missed_ranges=[(int(lo), int(hi)) for lo, hi in missed],  # type: ignore[attr-defined]
            fresh_start=None if start is None else int(start),  # type: ignore[call-overload]
        )


@dataclass
class ReorderStats:
    received: int = 0
    emitted: int = 0
    missed: int = 0
    late: int = 0
    duplicates: int = 0
    peak_cache_depth: int = 0


class Reorderer(Generic[T]):
    """Strictly increasing release of ``(unique_id, item)`` pairs.

    ``clock`` is injectable so the time bound is testable; every call also accepts ``now``.
    """

    def __init__(
        self,
        cache_size: int,
        max_delay: float,
        *,
        state: ReorderState | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if cache_size < 1:
            raise ValueError("cache size must be at least 1")
        if max_delay < 0:
            raise ValueError("max delay must not be negative")
        self.cache_size = cache_size
        self.max_delay = max_delay
        self.state = state or ReorderState()
        self.stats = ReorderStats()
        self._clock = clock or time.monotonic
        self._cache: dict[int, T] = {}
        # Cached ids as a heap, needed only to skip a gap (the in-order run leaves through
        # dict lookups): rebuilt when ids were cached since; released ids leave its top lazily.
        self._heap: list[int] = []
        self._heap_stale = False
        # (arrival, highest id cached then) per push. Every cached id is >= the next expected,
        # so an entry whose highest id is below it holds nothing cached any more.
        self._arrivals: deque[tuple[float, int]] = deque()

    # -- queries ---------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        return len(self._cache)

    @property
    def last_emitted(self) -> int | None:
        return self.state.last_emitted

    @property
    def lowest(self) -> int | None:
        """Lowest cached id (the next to leave)."""
        return self._lowest() if self._cache else None

    def pending(self) -> Iterable[tuple[int, T]]:
        return self._cache.items()

    def classify_old(self, uid: int) -> str:
        """``late`` or ``duplicate`` for an id below the next expected one."""
        if any(lo <= uid <= hi for lo, hi in self.state.missed_ranges):
            return "late"
        start = self.state.fresh_start
        if start is not None and uid < start:
            return "late"
        return "duplicate"

    # -- input -----------------------------------------------------------------------------

    def push(self, uid: int, item: T, now: float | None = None) -> tuple[str, list[tuple[int, T]]]:
        """Offer one frame; returns its fate (``cached``, ``late``, ``duplicate``) and what is
        released now (possibly including this frame; the time bound is left to
        :meth:`release`)."""
        rejected, out = self.push_many([uid], [item], now)
        return (rejected[0][0] if rejected else "cached"), out

    def push_many(
        self, uids: Sequence[int], items: Sequence[T], now: float | None = None
    ) -> tuple[list[tuple[str, int, T]], list[tuple[int, T]]]:
        """Offer one poll's frames at once (the collector's hot path).

        Returns the frames not cached, with their fate (``late`` or ``duplicate``), and what
        is released now, in order. The whole poll is cached before anything is released, so a
        gap filled later in the same poll is not skipped; the cache bound holds after the
        call. The time bound is left to :meth:`release`.
        """
        now = self._clock() if now is None else now
        cache, stats = self._cache, self.stats
        stats.received += len(uids)
        nxt = self.state.next_expected
        rejected: list[tuple[str, int, T]] = []
        new = dict(zip(uids, items, strict=True))
        if not new:
            return rejected, []
        if len(new) != len(uids) or (nxt is not None and min(new) < nxt) \
                or not cache.keys().isdisjoint(new):
            new = {}  # the rare case, one frame at a time: a copy or an id already passed
            for uid, item in zip(uids, items, strict=True):
                if uid in new or uid in cache:
                    fate = "duplicate"
                elif nxt is not None and uid < nxt:
                    fate = self.classify_old(uid)
                else:
                    new[uid] = item
                    continue
                if fate == "late":
                    stats.late += 1
                else:
                    stats.duplicates += 1
                rejected.append((fate, uid, item))
        if new:
            cache.update(new)
            self._arrivals.append((now, max(new)))
            self._heap_stale = True
        if len(cache) > self.cache_size or nxt in cache:
            return rejected, self.release(now, check_time=False)
        stats.peak_cache_depth = max(stats.peak_cache_depth, len(cache))
        return rejected, []

    def release(self, now: float | None = None, check_time: bool = True) -> list[tuple[int, T]]:
        """Everything that may leave now: the next expected run, plus skips forced by the
        cache bound or the time bound. Call it periodically even without input."""
        now = self._clock() if now is None else now
        cache, state = self._cache, self.state
        out: list[tuple[int, T]] = []
        nxt = state.next_expected
        while cache:
            if nxt is not None and nxt in cache:
                while nxt in cache:
                    out.append((nxt, cache.pop(nxt)))
                    nxt += 1
                state.next_expected = nxt
                continue
            if len(cache) > self.cache_size or (
                    check_time and self._oldest_wait(now) >= self.max_delay):
                nxt = self._lowest()
                if state.next_expected is None:  # the start-up wait is not a gap: restart
                    self._arrivals = deque([(now, max(cache))])  # every clock
                self._skip_to(nxt)
                continue
            break
        self.stats.emitted += len(out)
        self.stats.peak_cache_depth = max(self.stats.peak_cache_depth, len(cache))
        return out

    def flush(self) -> list[tuple[int, T]]:
        """Release every cached frame in order, counting gaps as missed (end of stream)."""
        out: list[tuple[int, T]] = []
        while self._cache:
            self._skip_to(self._lowest())
            out += self.release(check_time=False)
        return out

    def reset_stats(self) -> None:
        self.stats = ReorderStats()

    # -- internals -------------------------------------------------------------------------

    def _lowest(self) -> int:
        heap, cache = self._heap, self._cache
        if self._heap_stale or len(heap) > 2 * len(cache) + 64:
            heap[:] = cache
            heapq.heapify(heap)
            self._heap_stale = False
        while heap[0] not in cache:
            heapq.heappop(heap)
        return heap[0]

    def _skip_to(self, uid: int) -> None:
        nxt = self.state.next_expected
        if nxt is None:
            self.state.fresh_start = uid
        elif uid > nxt:
            self.stats.missed += uid - nxt
            ranges = self.state.missed_ranges
            ranges.append((nxt, uid - 1))
            del ranges[:-MAX_MISSED_RANGES]
        self.state.next_expected = uid

    def _oldest_wait(self, now: float) -> float:
        arrivals, nxt = self._arrivals, self.state.next_expected
        if nxt is not None:
            while arrivals and arrivals[0][1] < nxt:
                arrivals.popleft()
            if len(arrivals) > 2 * len(self._cache) + 64:  # drop emptied entries queued behind
                self._arrivals = arrivals = deque(a for a in arrivals if a[1] >= nxt)
        return now - arrivals[0][0] if arrivals else 0.0
