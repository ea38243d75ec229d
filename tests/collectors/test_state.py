"""The collector's offset tracker (pure logic): what may be committed, what is still cached."""

from pvaflow.collectors.state import OffsetTracker

TP0, TP1 = ("t", 0), ("t", 1)


def test_commit_stops_at_the_oldest_cached_record_and_counts_what_is_cached():
    t = OffsetTracker()
    for off in range(5):
        t.consumed(TP0, off, held=True)
    t.consumed(TP1, 0, held=False)  # a replay: never cached
    assert (t.cached(TP0), t.cached(TP1)) == (5, 0)
    t.released(TP0, 2)  # released out of offset order (uniqueId order)
    t.released(TP0, 1)
    assert t.positions() == {TP0: 0, TP1: 1}
    assert t.cached(TP0) == 3
    t.released(TP0, 0)  # the front leaves: 1 and 2 retire with it
    assert t.positions()[TP0] == 3
    assert t.cached(TP0) == 2
    t.released(TP0, 4)
    t.released(TP0, 3)
    assert t.positions()[TP0] == 5
    assert t.cached(TP0) == 0


def test_forgotten_partitions_hold_nothing():
    t = OffsetTracker()
    t.consumed(TP0, 7, held=True)
    t.forget([TP0])
    assert t.cached(TP0) == 0
    assert t.positions() == {}
