"""The collector's status schema against its real stats (no broker: stats need no start)."""

from __future__ import annotations

import pytest
from pvaflow.collectors.runner import Collector, CollectorConfig
from pvaflow.collectors.stats import STATUS_SCHEMA

from pvaflow.errors import SchemaError


def snapshot() -> dict[str, object]:
    col = Collector(CollectorConfig(["in"], group="g", collector_id="7"))
    col.reorder.push_many([2, 1, 1], ["b", "a", "dup"])  # type: ignore[list-item]
    return col.stats()


def test_the_collector_exposes_its_schema() -> None:
    col = Collector(CollectorConfig(["in"]))
    assert col.schema is STATUS_SCHEMA and STATUS_SCHEMA.kind == col.identity.kind
    assert (STATUS_SCHEMA.frames_in, STATUS_SCHEMA.frames_out) == ("received", "emitted")
    assert dict(STATUS_SCHEMA.lost) == {"missed": "missed", "late": "late", "dlq": "dlq"}


def test_real_stats_pass_the_schema() -> None:
    stats = snapshot()
    STATUS_SCHEMA.check(stats)
    assert stats["received"] == 3 and stats["duplicates"] == 1


@pytest.mark.parametrize("key", sorted(STATUS_SCHEMA.keys()))
def test_a_renamed_stats_key_fails_the_schema(key: str) -> None:
    stats = snapshot()
    stats[f"{key}_renamed"] = stats.pop(key)
    with pytest.raises(SchemaError, match=key):
        STATUS_SCHEMA.check(stats)


def test_a_second_reader_does_not_shorten_the_rate_window(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Status, PVA channel and control each call stats(); the rate is over a second or more
    whoever asks, not over the time since the last reader."""
    clock = [100.0]
    monkeypatch.setattr("pvaflow.metrics.time.monotonic", lambda: clock[0])
    col = Collector(CollectorConfig(["in"]))
    col.reorder.state.next_expected = 1  # resumed: frames leave as they arrive
    col.reorder.push_many(list(range(1, 101)), ["f"] * 100)  # type: ignore[list-item]
    clock[0] = 102.0
    assert col.stats()["rate"] == 50.0  # 100 emitted in 2 s
    col.reorder.push_many([101], ["f"])  # type: ignore[list-item]
    clock[0] = 102.01
    assert col.stats()["rate"] == 50.0  # another reader 10 ms later: the same window
