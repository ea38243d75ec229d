"""Every sim-server dtype arrives in Kafka bit-identical to what a direct PVA client gets."""

from __future__ import annotations

import pickle
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition

from pvaflow.codec import decode

from .conftest import BridgeProcess, start_client

pytestmark = pytest.mark.integration

DTYPES = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
          "float32", "float64")
FRAMES = 8


def test_every_dtype_is_bit_identical_to_a_direct_client(
    sim_server: Callable[..., Any], bridge_process: Callable[..., BridgeProcess],
    kafka_bootstrap: str, tmp_path: Path,
) -> None:
    # The servers publish until the test ends, and the direct client starts only once the
    # bridge has every channel: so every frame the client sees, the bridge saw too, however
    # slowly the processes start on a loaded machine (servers that published a fixed count
    # and exited raced the bridge's start).
    sims = [sim_server(nx=24, ny=10, datatype=dt, fps=10, n_frames=4) for dt in DTYPES]
    base = f"t-dtypes-{uuid.uuid4().hex[:8]}"
    topics = [f"{base}-{dt}" for dt in DTYPES]
    args = [a for s, t in zip(sims, topics, strict=True)
            for a in ("--input-channel", s.channel, "--topic", t)]
    bridge = bridge_process(*args)
    for s in sims:
        bridge.wait_for(f"channel {s.channel} connected", timeout=120)
    out = tmp_path / "direct.pkl"
    client = start_client(tmp_path, out, FRAMES, 240, *(s.channel for s in sims))
    assert client.wait(300) == 0
    direct: dict[str, dict[int, Any]] = pickle.loads(out.read_bytes())
    got_by_topic = {t: _read_ids(kafka_bootstrap, t, set(direct[s.channel]))
                    for s, t in zip(sims, topics, strict=True)}
    code = bridge.interrupt()
    assert code == 0
    for dt, sim, topic in zip(DTYPES, sims, topics, strict=True):
        want = direct[sim.channel]
        assert len(want) >= FRAMES, f"{dt}: the direct client got {sorted(want)}"
        got = got_by_topic[topic]
        assert set(want) <= set(got), f"{dt}: kafka {sorted(got)} direct {sorted(want)}"
        for uid in sorted(want):
            a, b = want[uid], got[uid]
            assert b.array.dtype == np.dtype(dt) == a.array.dtype
            assert b.array.shape == a.array.shape == (10, 24)
            assert b.array.tobytes() == a.array.tobytes(), f"{dt} uniqueId {uid} differs"
            assert (b.timestamp, b.data_timestamp) == (a.timestamp, a.data_timestamp)
            assert b.attributes == a.attributes
            assert b.dims() == a.dims()
            assert b.source == sim.channel


def _read_ids(bootstrap: str, topic: str, ids: set[int], timeout: float = 120.0) -> dict[int, Any]:
    """The topic's frames by uniqueId, read until it holds every id in ``ids`` (the servers
    keep publishing, so the topic never goes quiet)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{uuid.uuid4().hex}",
                  "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        frames: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        while not ids <= set(frames) and time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is not None and msg.error() is None:
                f = decode(msg.key(), msg.value(), msg.headers())
                frames[f.unique_id] = f
        return frames
    finally:
        c.close()
