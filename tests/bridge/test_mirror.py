"""pvaflow-mirror serves a topic over PVA; a PVA client gets exactly the source's frames."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pvaflow.process import free_port

from .conftest import BridgeProcess, release_when_subscribed, start_client

pytestmark = pytest.mark.integration
FRAMES = 10


def test_mirror_serves_the_source_frames(
    sim_server: Callable[..., Any], bridge_process: Callable[..., BridgeProcess],
    make_topic: Callable[..., str], kafka_bootstrap: str, tmp_path: Path,
) -> None:
    sim = sim_server(nx=32, ny=16, datatype="uint16", fps=20, total_frames=FRAMES,
                     gated=True)
    topic = make_topic(2)
    channel = f"mirror:{uuid.uuid4().hex[:8]}"
    port, metrics_port = free_port(), free_port()
    env = {**os.environ, "EPICS_PVAS_SERVER_PORT": str(port), "EPICS_PVA_SERVER_PORT": str(port)}
    mirror_out = tmp_path / "mirror.out"
    with open(mirror_out, "wb") as out:
        mirror = subprocess.Popen(
            [sys.executable, "-m", "pvaflow.bridge.mirror_cli", "--topic", topic,
             "--output-channel", channel, "--offset", "earliest", "--report-period", "1",
             "--bootstrap-servers", kafka_bootstrap, "--metrics-port", str(metrics_port)],
            stdout=out, stderr=subprocess.STDOUT,
            env=env, start_new_session=True)
    try:
        bridge = bridge_process("--input-channel", sim.channel, "--topic", topic,
                                "--partitions", "2")
        result = tmp_path / "frames.pkl"
        client = start_client(tmp_path, result, FRAMES, 120, sim.channel, channel)
        release_when_subscribed(sim, bridge, client, tmp_path)
        assert client.wait(150) == 0
        bridge.final()
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            scraped = r.read().decode()
        served_metric = [
            smp for fam in text_string_to_metric_families(scraped) for smp in fam.samples
            if smp.name == "pvaflow_mirror_frames_served_total"
        ]
        assert [(smp.labels, smp.value) for smp in served_metric] == [
            ({"component": "mirror", "topic": topic, "channel": channel}, FRAMES)]
    finally:
        mirror.send_signal(signal.SIGINT)
        code = mirror.wait(30)
    assert code == 0, mirror_out.read_text()
    got: dict[str, dict[int, Any]] = pickle.loads(result.read_bytes())
    source, served = got[sim.channel], got[channel]
    assert sorted(source) == list(range(1, FRAMES + 1))
    assert sorted(served) == sorted(source), mirror_out.read_text()[-2000:]
    for uid, a in source.items():
        b = served[uid]
        assert b.array.dtype == a.array.dtype and b.array.shape == a.array.shape
        assert b.array.tobytes() == a.array.tobytes()
        assert (b.timestamp, b.data_timestamp) == (a.timestamp, a.data_timestamp)
        assert b.attributes == a.attributes and b.dims() == a.dims()
    assert f'"served": {FRAMES}' in mirror_out.read_text()
