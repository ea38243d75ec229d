"""uniqueId bookkeeping: holes, restarts and reconnect duplicates are told apart."""

from __future__ import annotations

from pvaflow.bridge.loss import LossTracker, Seen


def test_contiguous_ids_miss_nothing() -> None:
    t = LossTracker()
    assert [t.observe(u) for u in (5, 6, 7)] == [Seen.FIRST, Seen.NEXT, Seen.NEXT]
    assert t.missed == 0


def test_holes_are_counted() -> None:
    t = LossTracker()
    for u in (1, 2, 5, 6, 10):
        t.observe(u)
    assert t.missed == 2 + 3


def test_restart_counts_the_new_runs_missing_start() -> None:
    t = LossTracker()
    for u in (1, 2, 3):
        t.observe(u)
    assert t.observe(4) is Seen.NEXT
    assert t.observe(3) is Seen.RESTART   # new run, we reconnected at id 3: missed 1 and 2
    assert (t.restarts, t.missed, t.gap) == (1, 2, 2)
    assert t.observe(4) is Seen.NEXT
    assert t.missed == 2


def test_reconnect_duplicate_is_not_loss() -> None:
    t = LossTracker()
    t.observe(7)
    assert t.observe(7) is Seen.DUPLICATE
    assert (t.missed, t.duplicates) == (0, 1)
