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
from collections.abc import Callable, Iterable
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
        self._heap: list[int] = []  # cached ids; the minimum is always the next to leave
        self._arrivals: deque[tuple[float, int]] = deque()  # (arrival, id), arrival order

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
        return self._heap[0] if self._heap else None

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
        released now (possibly including this frame)."""
        now = self._clock() if now is None else now
        self.stats.received += 1
        nxt = self.state.next_expected
        if nxt is not None and uid < nxt:
            fate = self.classify_old(uid)
            if fate == "late":
                self.stats.late += 1
            else:
                self.stats.duplicates += 1
            return fate, self.release(now)
        if uid in self._cache:
            self.stats.duplicates += 1
            return "duplicate", self.release(now)
        self._cache[uid] = item
        heapq.heappush(self._heap, uid)
        self._arrivals.append((now, uid))
        depth = len(self._cache)
        if self._heap[0] != nxt and depth <= self.cache_size:
            # Nothing can leave (the usual case: the frame waits for a lower id), so the
            # release() call is skipped on the collector's hottest path.
            if depth > self.stats.peak_cache_depth:
                self.stats.peak_cache_depth = depth
            return "cached", []
        # The time bound is checked by the periodic release(); here only order and size.
        return "cached", self.release(now, check_time=False)

    def release(self, now: float | None = None, check_time: bool = True) -> list[tuple[int, T]]:
        """Everything that may leave now: the next expected run, plus skips forced by the
        cache bound or the time bound. Call it periodically even without input."""
        now = self._clock() if now is None else now
        out: list[tuple[int, T]] = []
        while self._heap:
            lowest = self._heap[0]
            nxt = self.state.next_expected
            if nxt is not None and lowest == nxt:
                out.append(self._pop())
                continue
            if len(self._cache) > self.cache_size or (
                    check_time and self._oldest_wait(now) >= self.max_delay):
                if nxt is None:  # the start-up wait is not a gap: restart every clock
                    self._arrivals = deque((now, uid) for uid in sorted(self._cache))
                self._skip_to(lowest)
                out.append(self._pop())
                continue
            break
        self.stats.peak_cache_depth = max(self.stats.peak_cache_depth, len(self._cache))
        return out

    def flush(self) -> list[tuple[int, T]]:
        """Release every cached frame in order, counting gaps as missed (end of stream)."""
        out: list[tuple[int, T]] = []
        while self._heap:
            self._skip_to(self._heap[0])
            out.append(self._pop())
        return out

    def reset_stats(self) -> None:
        self.stats = ReorderStats()

    # -- internals -------------------------------------------------------------------------

    def _pop(self) -> tuple[int, T]:
        uid = heapq.heappop(self._heap)
        item = self._cache.pop(uid)
        self.state.next_expected = uid + 1
        self.stats.emitted += 1
        return uid, item

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
        arrivals = self._arrivals
        while arrivals and arrivals[0][1] not in self._cache:
            arrivals.popleft()
        if len(arrivals) > 2 * len(self._cache) + 64:  # drop emitted ids queued behind
            self._arrivals = arrivals = deque(a for a in arrivals if a[1] in self._cache)
        return now - arrivals[0][0] if arrivals else 0.0
