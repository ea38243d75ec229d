"""The seed's four PvaPy streaming-framework examples, end to end: real pvapy-ad-sim-server,
the real pvaflow-bridge, real consumers running the seed's rotate plugin (written against
PvaPy's API), a real broker. Frame sets must come out exactly as the seed states them.

Each test starts the consumers first and waits until their group is stable with every
partition assigned (the distributor plugin's clients are connected before the source starts,
too), then starts the simulator with a short start delay and the bridge.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from confluent_kafka.admin import AdminClient

from pvaflow.codec import decode

from .conftest import HERE, Proc, Record, read_topic, wait_for

pytestmark = pytest.mark.integration

SEED_PLUGIN = ("--processor-file", str(HERE / "pvapy_rotate_plugin.py"),
               "--processor-class", "HpcAdImageProcessor")
NX, NY = 24, 16
FRAMES = 48


def _group_ready(admin: AdminClient, group: str, members: int, partitions: int) -> bool:
    try:
        desc = admin.describe_consumer_groups([group])[group].result(10)
    except Exception:
        return False
    if len(desc.members) != members or str(desc.state).split(".")[-1] != "STABLE":
        return False
    owned = [m.assignment.topic_partitions for m in desc.members]
    return all(owned) and sum(len(o) for o in owned) == partitions


def _start_source(sim_server: Callable[..., Any], run_proc: Callable[..., Proc], topic: str,
                  partitions: int, updates: int, sets: str | None = None) -> Proc:
    sim = sim_server(nx=NX, ny=NY, datatype="uint8", fps=20, total_frames=FRAMES, gated=True)
    args = ["--input-channel", sim.channel, "--topic", topic, "--partitions", str(partitions),
            "--distributor-updates", str(updates), "--runtime", "180", "--report-period", "5"]
    if sets:
        args += ["--distributor-sets", sets]
    bridge = run_proc("pvaflow.bridge.cli", *args, name="bridge")
    wait_for(lambda: f"channel {sim.channel} connected" in bridge.text(), 90,
             "the bridge to connect", logs=[bridge])
    sim.release()  # every frame from uniqueId 1, as the seed's consumers expect
    return bridge


def _outputs(kafka_bootstrap: str, out: str, expected: int) -> dict[str, list[Record]]:
    recs = read_topic(kafka_bootstrap, out, count=expected, timeout=90, settle=2)
    by_proc: dict[str, list[Record]] = defaultdict(list)
    for r in recs:
        by_proc[r.proc].append(r)
    for r in recs[:3]:  # the seed plugin rotated the image
        image = decode(r.uid.to_bytes(8, "big"), r.value, list(r.headers.items())).array
        assert image.shape == (NX, NY)
    return by_proc


def _uids(recs: list[Record]) -> list[int]:
    return sorted(r.uid for r in recs)


def _setup(make_topic: Callable[..., str], partitions: int, sets: tuple[str, ...] = ()
           ) -> tuple[str, str]:
    base = f"seed-{uuid.uuid4().hex[:8]}"
    if sets:
        for s in sets:
            make_topic(partitions, name=f"{base}.{s}")
    else:
        make_topic(partitions, name=base)
    return base, make_topic(4, suffix="out")


def test_seed_multiple_consumers_each_see_every_frame(
        kafka_bootstrap: str, kafka_admin: AdminClient, make_topic: Callable[..., str],
        consumer: Callable[..., Proc], run_proc: Callable[..., Proc],
        sim_server: Callable[..., Any]) -> None:
    """Seed 'Multiple Consumers': two consumers in separate groups both see 1,2,3,4,..."""
    topic, out = _setup(make_topic, 1)
    groups = [f"bcast-{i}-{uuid.uuid4().hex[:4]}" for i in (1, 2)]
    for i, g in enumerate(groups, 1):
        consumer("--input-topic", topic, "--output-topic", out, "--group", g,
                 "--consumer-id", str(i), *SEED_PLUGIN, "--report-period", "5",
                 name=f"consumer{i}")
    for g in groups:
        wait_for(lambda g=g: _group_ready(kafka_admin, g, 1, 1), 60, f"group {g}")
    _start_source(sim_server, run_proc, topic, 1, 1)
    by_proc = _outputs(kafka_bootstrap, out, 2 * FRAMES)
    assert _uids(by_proc[f"{groups[0]}/1"]) == list(range(1, FRAMES + 1))
    assert _uids(by_proc[f"{groups[1]}/2"]) == list(range(1, FRAMES + 1))


def test_seed_multiple_consumers_with_data_distribution(
        kafka_bootstrap: str, kafka_admin: AdminClient, make_topic: Callable[..., str],
        consumer: Callable[..., Proc], run_proc: Callable[..., Proc],
        sim_server: Callable[..., Any]) -> None:
    """Seed 'Multiple Consumers with Data Distribution': --n-consumers 2, N=1 -> one consumer
    sees 1,3,5,... and the other 2,4,6,..."""
    topic, out = _setup(make_topic, 2)
    group = f"dist-{uuid.uuid4().hex[:6]}"
    consumer("--input-topic", topic, "--output-topic", out, "--group", group,
             "--n-consumers", "2", "--distributor-updates", "1", *SEED_PLUGIN,
             "--report-period", "5")
    wait_for(lambda: _group_ready(kafka_admin, group, 2, 2), 60, "two members, one partition "
             "each")
    _start_source(sim_server, run_proc, topic, 2, 1)
    by_proc = _outputs(kafka_bootstrap, out, FRAMES)
    seen = sorted([_uids(by_proc[f"{group}/1"]), _uids(by_proc[f"{group}/2"])])
    assert seen == [list(range(1, FRAMES + 1, 2)), list(range(2, FRAMES + 1, 2))]


def test_seed_multiple_consumer_sets_with_data_distribution(
        kafka_bootstrap: str, kafka_admin: AdminClient, make_topic: Callable[..., str],
        consumer: Callable[..., Proc], run_proc: Callable[..., Proc],
        sim_server: Callable[..., Any]) -> None:
    """Seed 'Multiple Consumer Sets': sets A (ids 1,2) and B (ids 3,4), N=3 -> set A sees
    1,2,3,7,8,9,13,... and set B 4,5,6,10,11,12,16,..."""
    topic, out = _setup(make_topic, 2, ("A", "B"))
    for first, s in (("1", "A"), ("3", "B")):
        consumer("--input-topic", topic, "--output-topic", out, "--n-consumers", "2",
                 "--distributor-updates", "3", "--consumer-id", first,
                 "--n-distributor-sets", "2", "--distributor-set", s, *SEED_PLUGIN,
                 "--report-period", "5", name=f"set{s}")
    for s in ("A", "B"):
        wait_for(lambda s=s: _group_ready(kafka_admin, f"pvaflow.{topic}.{s}", 2, 2), 60,
                 f"set {s} group")
    _start_source(sim_server, run_proc, topic, 2, 3, "A,B")
    by_proc = _outputs(kafka_bootstrap, out, FRAMES)
    set_a = [u for p in (f"pvaflow.{topic}.A/1", f"pvaflow.{topic}.A/2")
             for u in _uids(by_proc[p])]
    set_b = [u for p in (f"pvaflow.{topic}.B/3", f"pvaflow.{topic}.B/4")
             for u in _uids(by_proc[p])]
    assert sorted(set_a) == [u for u in range(1, FRAMES + 1) if ((u - 1) // 3) % 2 == 0]
    assert sorted(set_b) == [u for u in range(1, FRAMES + 1) if ((u - 1) // 3) % 2 == 1]
    assert sorted(set_a)[:9] == [1, 2, 3, 7, 8, 9, 13, 14, 15]
    assert sorted(set_b)[:9] == [4, 5, 6, 10, 11, 12, 16, 17, 18]
    for p, recs in by_proc.items():  # within a set each consumer gets whole blocks of 3
        blocks = defaultdict(int)
        for u in _uids(recs):
            blocks[(u - 1) // 3] += 1
        assert set(blocks.values()) == {3}, p


def test_seed_single_consumer_control_session(
        kafka_bootstrap: str, kafka_admin: AdminClient, make_topic: Callable[..., str],
        consumer: Callable[..., Proc], run_proc: Callable[..., Proc],
        sim_server: Callable[..., Any]) -> None:
    """Seed 'Single Consumer' and its terminal-3 session, as pvapy client calls:
    pvget output, pvget status, pvput configure {"x":100}, pvget control, pvput stop."""
    import pvaccess as pva

    topic, out = _setup(make_topic, 1)
    pfx = f"consumer{uuid.uuid4().hex[:6]}"
    group = f"single-{uuid.uuid4().hex[:6]}"
    c = consumer("--input-topic", topic, "--output-topic", out, "--group", group,
                 "--control-channel", f"{pfx}:*:control", "--status-channel",
                 f"{pfx}:*:status", "--output-channel", f"{pfx}:*:output", *SEED_PLUGIN,
                 "--report-period", "2", "--log-level", "debug")
    wait_for(lambda: _group_ready(kafka_admin, group, 1, 1), 60, "consumer group")
    _start_source(sim_server, run_proc, topic, 1, 1)
    recs = read_topic(kafka_bootstrap, out, count=FRAMES, timeout=90)
    assert sorted(r.uid for r in recs) == list(range(1, FRAMES + 1))  # every frame

    # $ pvget -r uniqueId consumer:1:output  -> the processed (rotated) image
    image = pva.Channel(f"{pfx}:1:output").get("field()")
    assert image["uniqueId"] == FRAMES
    assert [d["size"] for d in image["dimension"]] == [NY, NX]  # x and y swapped

    # $ pvget consumer:1:status
    status_ch = pva.Channel(f"{pfx}:1:status")
    wait_for(lambda: status_ch.get()["nProcessed"] == FRAMES, 15, "status to show all frames")
    status = status_ch.get()
    assert status["consumerId"] == 1 and status["nMissed"] == 0
    assert status["lastUniqueId"] == FRAMES and status["userStats"]["nProcessed"] == FRAMES

    # $ pvput consumer:1:control '{"command" : "configure", "args" : "{\"x\":100}"}'
    control = pva.Channel(f"{pfx}:1:control")
    request = {"command": pva.STRING, "args": pva.STRING}
    control.put(pva.PvObject(request, {"command": "configure", "args": '{"x":100}'}),
                "field(command,args)")
    # $ pvget consumer:1:control  -> last command status
    wait_for(lambda: control.get()["statusMessage"] == "Configuration successful", 15,
             "configure to finish")
    control.put(pva.PvObject(request, {"command": "get_stats", "args": ""}),
                "field(command,args)")
    wait_for(lambda: status_ch.get()["userStats"]["lastConfigX"] == 100, 15,
             "the plugin to report x=100")
    assert "Configuration update: {'x': 100}" in c.text()  # the plugin's own debug log

    # $ pvput consumer:1:control '{"command" : "stop"}'
    control.put(pva.PvObject(request, {"command": "stop", "args": ""}), "field(command,args)")
    t0 = time.monotonic()
    assert c.wait(30) == 0
    assert time.monotonic() - t0 < 30
    np.testing.assert_equal(len(recs), FRAMES)
