"""The merge rule: when an id that has not arrived is known never to come (pure logic).

The collector reads several *streams* (input partitions). pvaflow's processors write each
output to the partition number of its input (``--output-partitions``, default: as many as the
input), and the bridge writes each input partition in increasing uniqueId order, so every
stream carries increasing ids (a processor that is restarted repeats a tail of its stream: those
are duplicates, never new ids). A stream that has delivered id ``h`` will therefore only ever
deliver ids above ``h``; one that has delivered nothing yet may deliver anything.

So the lowest id any stream may still deliver, the *frontier*, is the minimum over the live
streams of (highest id seen + 1); a stream that has delivered nothing holds the frontier at
minus infinity (nothing is known yet), and a *drained* stream does not count (it has nothing
more, see :class:`Stream`). An id below the frontier that has not arrived will not come: the
collector gives it up (``missed``) only then, never because a timer ran out or the cache
filled while the id may still be waiting, unread, in a stream.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

# Why a stream no longer holds the frontier back (the ``missed_by`` stats count give-ups so):
PASSED = "passed"    # every live stream had passed the id (it never entered any stream)
DRAINED = "drained"  # a silent stream's upstream partition had been read to its end
DELAY = "delay"      # a silent stream without a known upstream stayed silent --max-delay
CACHE = "cache"      # the cache was full and nothing could be paused (mixed partitions)
END = "end"          # the run ended (--to-time): what was cached left in order

INF = math.inf


@dataclass
class Stream:
    """One input partition as the merge sees it."""

    high: int | None = None  # highest id received (a repeated tail does not lower it)
    # Silent and known to have nothing more: read to its end, and its upstream partition has
    # been processed to its end (``DRAINED``) or, without a known upstream, silent for
    # --max-delay (``DELAY``). New records make it live again.
    drained: str | None = None
    # The upstream partition (``pf.in``) its records come from; a second one makes the stream
    # *mixed* for good: processors that wrote an output topic with fewer partitions than
    # their input spread outputs by hash, so ids in one partition are no longer increasing
    # and its highest id says nothing about the ids still to come (the collector then falls
    # back to the time bound, see :func:`frontier`).
    source: bytes | None = None
    mixed: bool = False

    def saw(self, source: bytes | None) -> None:
        """Note the upstream of one record."""
        if self.source is None:
            self.source = source
        elif source != self.source:
            self.mixed = True


def frontier(streams: Iterable[Stream]) -> tuple[float, str] | None:
    """The lowest id any live stream may still deliver, and why the others do not hold it
    back (``PASSED`` unless a drained stream was left out). ``-inf``: a live stream has
    delivered nothing yet; ``inf``: every stream is drained. ``None``: a stream is mixed,
    nothing can be known from the streams' highest ids, and the reorderer's time bound
    (``--max-delay``) decides, as it does for any plain mixed input."""
    low, why = INF, PASSED
    streams = list(streams)
    if any(s.mixed for s in streams):
        return None
    for s in streams:
        if s.drained is not None:
            if why == PASSED or s.drained == DELAY:  # the weaker reason names a give-up
                why = s.drained
            continue
        if s.high is None:
            return -INF, why
        low = min(low, s.high + 1)
    return low, why


class IntervalSet:
    """Ids given up on, as sorted disjoint inclusive ranges, to tell a late frame (its id was
    given up on) from a duplicate (its id was emitted).

    Bounded: at most ``limit`` ranges. Adjacent ranges join; beyond the limit the two lowest
    ranges are joined with the emitted ids between them, so a duplicate of one of those old
    ids would be counted late, never a late frame as a duplicate.
    """

    def __init__(self, ranges: Iterable[tuple[int, int]] = (), limit: int = 1024) -> None:
        self.limit = max(1, limit)
        self._lo: list[int] = []
        self._hi: list[int] = []
        for lo, hi in sorted(ranges):
            self.add(lo, hi)

    def __len__(self) -> int:
        return len(self._lo)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._lo, self._hi, strict=True))

    def __contains__(self, uid: object) -> bool:
        if not isinstance(uid, int):
            return False
        i = bisect.bisect_right(self._lo, uid) - 1
        return i >= 0 and uid <= self._hi[i]

    def add(self, lo: int, hi: int) -> None:
        """Add ``lo..hi`` (inclusive); the collector adds ranges in increasing order, so this
        is an append or an extension of the last range (any order is handled)."""
        if hi < lo:
            return
        los, his = self._lo, self._hi
        i = bisect.bisect_left(los, lo)
        # join with the range before if it touches
        if i > 0 and his[i - 1] >= lo - 1:
            i -= 1
            lo = los[i]
            hi = max(hi, his[i])
        j = i
        while j < len(los) and los[j] <= hi + 1:
            hi = max(hi, his[j])
            j += 1
        los[i:j] = [lo]
        his[i:j] = [hi]
        while len(los) > self.limit:
            his[0] = his[1]
            del los[1], his[1]
