"""Source-side loss accounting from the uniqueId sequence alone.

Whatever drops a frame before the bridge sees it (server queue overrun, a full client queue, a
disconnect) leaves a hole in the uniqueIds, so holes are the one loss measure that needs no
cooperation from pvAccess. A uniqueId that goes backwards means the source restarted; a
repeated one is the current value re-sent on reconnect.

The first frame is a hole too when the stream's first uniqueId is known (``start_first``,
from ``--distributor-first``): a bridge that sees uniqueId 525 first of a stream that starts
at 1 never saw 1..524. Those count as missed (and as :attr:`LossTracker.missed_at_start`),
so a late start is visible, not silent. Without a known start (``--distributor-first auto``)
nothing before the first frame can be known.
"""

from __future__ import annotations

from enum import Enum


class Seen(Enum):
    NEXT = "next"            # the expected id, or after a hole (``gap`` says how big)
    FIRST = "first"          # the first frame ever
    RESTART = "restart"      # the id went backwards: a new source run
    DUPLICATE = "duplicate"  # the same id as the previous frame


class LossTracker:
    """``observe(uid)`` classifies each id and adds holes to :attr:`missed`.

    After a restart the new run is expected to start at ``restart_first`` (areaDetector and
    the simulator count from 1), so frames the new run published before we reconnected are
    counted as missed too.
    """

    def __init__(self, restart_first: int = 1, start_first: int | None = None) -> None:
        self.restart_first = restart_first
        self.start_first = start_first
        self.last: int | None = None
        self.missed = 0
        self.missed_at_start = 0
        self.restarts = 0
        self.duplicates = 0
        self.gap = 0

    def observe(self, uid: int) -> Seen:
        last = self.last
        if last is None:
            first = self.start_first
            self.gap = uid - first if first is not None and uid > first else 0
            self.missed_at_start = self.gap
            self.missed += self.gap
            self.last = uid
            return Seen.FIRST
        if uid == last + 1:
            self.last, self.gap = uid, 0
            return Seen.NEXT
        if uid == last:
            self.duplicates += 1
            self.gap = 0
            return Seen.DUPLICATE
        if uid < last:
            self.restarts += 1
            self.gap = max(uid - self.restart_first, 0)
            self.missed += self.gap
            self.last = uid
            return Seen.RESTART
        self.gap = uid - last - 1
        self.missed += self.gap
        self.last = uid
        return Seen.NEXT
