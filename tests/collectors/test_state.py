"""What the collector may commit (pure logic)."""

from pvaflow.collectors.state import committable

TP0, TP1 = ("t", 0), ("t", 1)


def test_commit_stops_at_the_oldest_cached_record():
    consumed = {TP0: 5, TP1: 1}
    # Records leave the cache in uniqueId order, so the cached offsets have holes.
    assert committable(consumed, [(TP0, 4), (TP0, 0), (TP0, 3)]) == {TP0: 0, TP1: 1}
    assert committable(consumed, [(TP0, 4), (TP0, 3)]) == {TP0: 3, TP1: 1}
    assert committable(consumed, []) == consumed


def test_partitions_without_a_consumed_position_are_not_committed():
    # A revoked partition's records may still wait in the cache; it is not ours to commit.
    assert committable({TP1: 2}, [(TP0, 7)]) == {TP1: 2}
