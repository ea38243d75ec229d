"""The collector's PVA status and control channels (PvaPy's -sc/-cc), read and written by a
pvapy client as the PvaPy seed's terminal session does: the status record shows the
collector's stats each report period, ``configure`` is applied on the collector's loop
(collectorCacheSize), ``get_stats`` refreshes the status, ``stop`` ends the process with 0."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from .helpers import ids_of, produce_frames, read_records, wait_for

pytestmark = pytest.mark.integration

FRAMES = 30


def test_collector_status_and_control_channels(kafka_bootstrap, make_topic, procs, ctl):  # type: ignore[no-untyped-def]
    import pvaccess as pva

    tag = uuid.uuid4().hex[:8]
    src = make_topic(suffix="processed")
    out = make_topic(suffix="ordered")
    produce_frames(kafka_bootstrap, src, range(1, FRAMES + 1))
    pfx = f"collector{tag}"
    col = procs("collector", "pvaflow-collector", "-it", src, "--output-topic", out,
                "--group", f"g-{tag}", "--collector-id", "3", "-sc", f"{pfx}:*:status",
                "-cc", f"{pfx}:*:control", "--collector-cache-size", "100",
                "-b", kafka_bootstrap, "--report-period", "1", *ctl)
    got = ids_of(read_records(kafka_bootstrap, out, lambda r: len(r) >= FRAMES, 60))
    assert got == list(range(1, FRAMES + 1))

    # $ pvget collector:3:status  ('*' is the collector id)
    status_ch = pva.Channel(f"{pfx}:3:status")
    wait_for(lambda: status_ch.get()["collectorStats"]["nCollected"] == FRAMES, 30,
             "the status channel to show every frame")
    status = status_ch.get()
    assert status["collectorId"] == 3
    assert status["nReceived"] == FRAMES and status["lastUniqueId"] == FRAMES
    assert status["collectorStats"]["nMissed"] == 0
    stats = json.loads(status["statsJson"])  # the status topic's stats, whole
    assert stats["emitted"] == FRAMES and stats["last_emitted_unique_id"] == FRAMES

    # $ pvput collector:3:control '{"command": "configure", "args": "{\"collectorCacheSize\": 7}"}'
    control = pva.Channel(f"{pfx}:3:control")
    request = {"command": pva.STRING, "args": pva.STRING}
    control.put(pva.PvObject(request, {"command": "configure",
                                       "args": '{"collectorCacheSize": 7}'}),
                "field(command,args)")
    wait_for(lambda: control.get()["statusMessage"] == "Configuration successful", 30,
             "configure to finish")
    assert control.get()["collectorId"] == 3
    control.put(pva.PvObject(request, {"command": "get_stats", "args": ""}),
                "field(command,args)")
    wait_for(lambda: control.get()["statusMessage"] == "Stats update successful", 30,
             "get_stats to finish")
    wait_for(lambda: "cache 0/7 " in col.text(), 30, "the new cache size in a report")

    # an unknown command is refused on the record and changes nothing
    control.put(pva.PvObject(request, {"command": "explode", "args": ""}),
                "field(command,args)")
    wait_for(lambda: "Ignoring invalid request" in control.get()["statusMessage"], 30,
             "the refusal")

    # $ pvput collector:3:control '{"command": "stop"}'
    control.put(pva.PvObject(request, {"command": "stop", "args": ""}), "field(command,args)")
    t0 = time.monotonic()
    assert col.wait(60) == 0
    assert time.monotonic() - t0 < 60
    final = [ln for ln in col.text().splitlines() if "final stats:" in ln][-1]
    assert json.loads(final.split("final stats: ", 1)[1])["emitted"] == FRAMES
