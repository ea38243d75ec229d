"""Reordering by uniqueId with a bounded cache (pure logic, no Kafka).

Frames arrive from several partitions in any order; the output must be strictly increasing.
A frame is released as soon as it is the next expected id. Ids that have not arrived are given
up on by one of two rules:

* the merge rule (the collector's): the caller sets the *frontier* (:mod:`.merge`), the lowest
  id any stream may still deliver; a gap below it will never be filled, so the reorderer skips
  to the lowest cached id, counting the skipped ids as missed, and never otherwise, except
  when the cache holds more than ``cache_size`` frames (then the gap is given up, counted
  under ``cache``: with one stream per partition the collector pauses partitions that run
  ahead long before that);
* without a frontier (a plain reorder of one mixed stream), the cache bound and the time
  bound: a gap is given up when the oldest waiting frame has waited ``max_delay``.

Anything below the next expected id is either *late* (it was given up on) or a *duplicate*
(it was already emitted, e.g. redelivered by an at-least-once processor); the ids given up on
are remembered as ranges (:class:`~.merge.IntervalSet`, bounded) to tell the two apart.

On a fresh start the first id is unknown. With a frontier the stream starts as soon as every
live stream has delivered something (then the lowest cached id is the first); without one,
nothing is released until the cache or the time bound forces it (then frames waiting behind
the start get a fresh ``max_delay``). After a restart the saved :class:`ReorderState` says
where to continue.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .merge import CACHE, DELAY, END, INF, IntervalSet

T = TypeVar("T")

# Ranges of given-up ids remembered to tell a late frame from a duplicate (persisted in the
# state record: at most ~20 bytes each). Beyond it the lowest ranges are joined, so a
# duplicate of an old id may be counted late; a late frame is never counted as a duplicate.
MAX_MISSED_RANGES = 1024


@dataclass
class ReorderState:
    """What must survive a restart: where to continue and which ids were given up on."""

    next_expected: int | None = None
    # ids given up on, inclusive ranges
    missed: IntervalSet = field(default_factory=lambda: IntervalSet(limit=MAX_MISSED_RANGES))
    fresh_start: int | None = None  # first id of a stream started without history

    @property
    def last_emitted(self) -> int | None:
        return None if self.next_expected is None else self.next_expected - 1

    def to_json(self) -> dict[str, object]:
        return {"next": self.next_expected, "missed": [list(r) for r in self.missed],
                "start": self.fresh_start}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ReorderState:
        nxt, start, missed = data.get("next"), data.get("start"), data.get("missed") or []
        return cls(
            next_expected=None if nxt is None else int(nxt),  # type: ignore[call-overload]
            missed=IntervalSet([(int(lo), int(hi)) for lo, hi in missed],  # type: ignore[attr-defined]
                               limit=MAX_MISSED_RANGES),
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
    # missed ids by why they were given up (merge.PASSED, DRAINED, DELAY, CACHE, END)
    missed_by: dict[str, int] = field(default_factory=dict)


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
        # The merge rule's frontier and why (see set_frontier); None: the time bound.
        self._frontier: tuple[float, str] | None = None

    def set_frontier(self, frontier: tuple[float, str] | None) -> None:
        """Use the merge rule: ids below ``low`` of ``(low, why)`` that have not arrived will
        not come (``-inf``: nothing is known yet; ``inf``: no stream will deliver anything
        more); ``why`` names the give-ups it causes in ``stats.missed_by``. ``None``: the
        time bound instead."""
        self._frontier = frontier

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
        if uid in self.state.missed:
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
        merge = self._frontier
        while cache:
            if nxt is not None and nxt in cache:
                while nxt in cache:
                    out.append((nxt, cache.pop(nxt)))
                    nxt += 1
                state.next_expected = nxt
                continue
            if len(cache) > self.cache_size:
                nxt = self._lowest()
                self._skip_to(nxt, CACHE)
                continue
            if merge is not None:
                low, why = merge
                if low == -INF:
                    break  # a stream has delivered nothing yet: anything may come
                nxt = self._lowest()
                if state.next_expected is not None and nxt > low:
                    break  # the gap may still be filled by a stream below the frontier
                self._skip_to(nxt, why)
                continue
            if check_time and self._oldest_wait(now) >= self.max_delay:
                nxt = self._lowest()
                if state.next_expected is None:  # the start-up wait is not a gap: restart
                    self._arrivals = deque([(now, max(cache))])  # every clock
                self._skip_to(nxt, DELAY)
                continue
            break
        self.stats.emitted += len(out)
        self.stats.peak_cache_depth = max(self.stats.peak_cache_depth, len(cache))
        self._trim_arrivals()
        return out

    def flush(self) -> list[tuple[int, T]]:
        """Release every cached frame in order, counting gaps as missed (end of stream)."""
        out: list[tuple[int, T]] = []
        while self._cache:
            self._skip_to(self._lowest(), END)
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

    def _skip_to(self, uid: int, why: str) -> None:
        nxt = self.state.next_expected
        if nxt is None:
            self.state.fresh_start = uid
        elif uid > nxt:
            self.stats.missed += uid - nxt
            by = self.stats.missed_by
            by[why] = by.get(why, 0) + uid - nxt
            self.state.missed.add(nxt, uid - 1)
        self.state.next_expected = uid

    def _trim_arrivals(self) -> None:
        """Forget arrivals whose frames have all left (after every release, whichever rule
        gives gaps up: under the merge rule nothing else would, and the queue grew by one
        entry per poll, ~1.4 MiB a minute at 500 fps in the soak benchmark)."""
        arrivals, nxt = self._arrivals, self.state.next_expected
        if nxt is not None:
            while arrivals and arrivals[0][1] < nxt:
                arrivals.popleft()
            if len(arrivals) > 2 * len(self._cache) + 64:  # drop emptied entries queued behind
                self._arrivals = deque(a for a in arrivals if a[1] >= nxt)

    def _oldest_wait(self, now: float) -> float:
        self._trim_arrivals()
        arrivals = self._arrivals
        return now - arrivals[0][0] if arrivals else 0.0
