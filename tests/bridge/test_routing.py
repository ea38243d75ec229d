"""The seed's distributor examples, through a real sim server, bridge and broker."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from pvaflow.bridge.plan import Plan

from .conftest import BridgeProcess, by_partition, read_topic

pytestmark = pytest.mark.integration

FRAMES = 30


def stream(sim_server: Callable[..., Any], bridge_process: Callable[..., BridgeProcess],
           *args: str) -> dict[str, Any]:
    """FRAMES frames, published after the bridge has connected (so uniqueIds start at 1)."""
    sim = sim_server(nx=16, ny=8, fps=50, total_frames=FRAMES, gated=True)
    bridge = bridge_process("--input-channel", sim.channel, *args)
    bridge.wait_for(f"channel {sim.channel} connected", timeout=90)
    sim.release()
    bridge.wait_stats("delivered", FRAMES)
    s = bridge.final()
    assert (s["received"], s["delivered"], s["missed"], s["dropped"]) == (FRAMES, FRAMES, 0, 0)
    assert s["first_id"] == 1
    return s


def test_one_update_over_two_partitions_alternates(
    sim_server: Callable[..., Any], bridge_process: Callable[..., BridgeProcess],
    make_topic: Callable[..., str], kafka_bootstrap: str,
) -> None:
    topic = make_topic(2)
    stream(sim_server, bridge_process, "--topic", topic, "--partitions", "2",
           "--distributor-updates", "1")
    parts = by_partition(read_topic(kafka_bootstrap, topic, expect=FRAMES))
    assert parts[0] == list(range(1, FRAMES + 1, 2))   # 1, 3, 5, ...
    assert parts[1] == list(range(2, FRAMES + 1, 2))   # 2, 4, 6, ...


def test_sets_a_b_with_three_updates(
    sim_server: Callable[..., Any], bridge_process: Callable[..., BridgeProcess],
    make_topic: Callable[..., str], kafka_bootstrap: str,
) -> None:
    base = f"t-sets-{uuid.uuid4().hex[:8]}"
    for s in "AB":
        make_topic(1, name=f"{base}.{s}")
    stream(sim_server, bridge_process, "--topic", base, "--distributor-updates", "3",
           "--distributor-sets", "A,B")
    a = by_partition(read_topic(kafka_bootstrap, f"{base}.A", expect=FRAMES // 2))[0]
    b = by_partition(read_topic(kafka_bootstrap, f"{base}.B", expect=FRAMES // 2))[0]
    assert a[:7] == [1, 2, 3, 7, 8, 9, 13]
    assert b[:7] == [4, 5, 6, 10, 11, 12, 16]
    assert sorted(a + b) == list(range(1, FRAMES + 1))


def test_two_updates_three_partitions_three_sets(
    sim_server: Callable[..., Any], bridge_process: Callable[..., BridgeProcess],
    make_topic: Callable[..., str], kafka_bootstrap: str,
) -> None:
    base = f"t-sets3-{uuid.uuid4().hex[:8]}"
    for s in "ABC":
        make_topic(3, name=f"{base}.{s}")
    stream(sim_server, bridge_process, "--topic", base, "--partitions", "3",
           "--distributor-updates", "2", "--distributor-sets", "A,B,C")
    plan = Plan(base, 3, 2, ("A", "B", "C"))
    seen: list[int] = []
    for s in "ABC":
        records = read_topic(kafka_bootstrap, f"{base}.{s}", expect=FRAMES // 3)
        parts = by_partition(records)
        for p, ids in parts.items():
            assert all(plan.route(u).topic == f"{base}.{s}" for u in ids)
            assert all(plan.route(u).partition == p for u in ids)
            # per-partition sequence numbers are contiguous from 0: nothing missing
            seqs = [int(r.header("pf.seq") or -1)
                    for r in sorted(records, key=lambda r: r.offset) if r.partition == p]
            assert seqs == list(range(len(ids)))
            assert all(Plan.parse(r.header("pf.plan") or b"") == plan
                       for r in records if r.partition == p)
        seen += [u for ids in parts.values() for u in ids]
    assert sorted(seen) == list(range(1, FRAMES + 1))
    a = by_partition(read_topic(kafka_bootstrap, f"{base}.A", expect=FRAMES // 3))
    # blocks of 2, sets in turn, each set's blocks round the partitions
    assert a[0][:2] == [1, 2] and a[1][:2] == [7, 8] and a[2][:2] == [13, 14]
    assert a[0][2:4] == [19, 20]
