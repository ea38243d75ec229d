"""``--codec``: an uncompressed 1024x1024 uint16 source goes into Kafka as bslz4 records that
decode bit-identically to what a direct PVA client receives, in order, with exact sequence
numbers, and with the CPU the compression took in the bridge's statistics."""

from __future__ import annotations

import pickle
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pvaflow.codec import decode
from pvaflow.process import free_port

from .conftest import BridgeProcess, by_partition, read_topic, release_when_subscribed, start_client

pytestmark = pytest.mark.integration

FRAMES = 12
BIG = {"max.message.bytes": str(8 << 20)}


def test_codec_bslz4_records_decode_to_the_direct_clients_pixels(
    sim_server: Callable[..., Any], bridge_process: Callable[..., BridgeProcess],
    make_topic: Callable[..., str], kafka_bootstrap: str, tmp_path: Path,
) -> None:
    sim = sim_server(nx=1024, ny=1024, datatype="uint16", fps=10, total_frames=FRAMES,
                     gated=True)
    topic = make_topic(2, config=BIG)
    metrics_port = free_port()
    bridge = bridge_process("--input-channel", sim.channel, "--topic", topic,
                            "--partitions", "2", "--codec", "bslz4", "--codec-threads", "2",
                            "-X", f"message.max.bytes={8 << 20}",
                            "--metrics-port", str(metrics_port))
    out = tmp_path / "direct.pkl"
    client = start_client(tmp_path, out, FRAMES, 120, sim.channel)
    release_when_subscribed(sim, bridge, client, tmp_path)
    assert client.wait(150) == 0
    direct: dict[int, Any] = pickle.loads(out.read_bytes())[sim.channel]
    bridge.wait_stats("delivered", FRAMES, timeout=60)
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        scraped = {smp.name: smp.value
                   for fam in text_string_to_metric_families(r.read().decode())
                   for smp in fam.samples}
    s = bridge.final()
    assert (s["received"], s["delivered"], s["missed"], s["dropped"]) == (FRAMES, FRAMES, 0, 0)
    assert s["codec_frames"] == FRAMES and s["compressing"] == 0
    assert 0 < s["codec_seconds"] < FRAMES * 1.0, s
    assert scraped["pvaflow_bridge_codec_frames_total"] == FRAMES
    assert scraped["pvaflow_bridge_codec_seconds_total"] > 0

    records = read_topic(kafka_bootstrap, topic, expect=FRAMES)
    assert len(records) == FRAMES
    # order and exact sequence numbers per partition, as without a codec
    parts = by_partition(records)
    assert parts == {0: list(range(1, FRAMES + 1, 2)), 1: list(range(2, FRAMES + 1, 2))}
    for p in (0, 1):
        mine = sorted((r for r in records if r.partition == p), key=lambda r: r.offset)
        assert [int(r.header("pf.seq") or b"-1") for r in mine] == list(range(len(mine)))
    assert sorted(direct) == list(range(1, FRAMES + 1))
    for r in records:
        f = decode(r.key, r.value, r.headers)
        assert f.codec is not None and f.codec.name == "bslz4"
        assert f.codec.dtype == np.dtype("uint16") and f.shape == (1024, 1024)
        want = direct[f.unique_id]
        assert f.image.dtype == want.array.dtype and f.image.shape == want.array.shape
        assert f.image.tobytes() == want.array.tobytes(), f"uniqueId {f.unique_id} differs"
        assert (f.timestamp, f.data_timestamp) == (want.timestamp, want.data_timestamp)
        assert f.attributes == want.attributes and f.dims() == want.dims()
