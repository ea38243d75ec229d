"""Every sim-server dtype arrives in Kafka bit-identical to what a direct PVA client gets."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pvaflow.codec import decode

from .conftest import BridgeProcess, read_topic

pytestmark = pytest.mark.integration

DTYPES = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
          "float32", "float64")
FRAMES = 8
CLIENT = Path(__file__).with_name("pva_client.py")


def test_every_dtype_is_bit_identical_to_a_direct_client(
    sim_server: Callable[..., Any], bridge_process: Callable[..., BridgeProcess],
    kafka_bootstrap: str, tmp_path: Path,
) -> None:
    sims = [sim_server(nx=24, ny=10, datatype=dt, fps=20, total_frames=FRAMES, start_delay=7)
            for dt in DTYPES]
    base = f"t-dtypes-{uuid.uuid4().hex[:8]}"
    topics = [f"{base}-{dt}" for dt in DTYPES]
    args = [a for s, t in zip(sims, topics, strict=True)
            for a in ("--input-channel", s.channel, "--topic", t)]
    bridge = bridge_process(*args)
    out = tmp_path / "direct.pkl"
    client = subprocess.Popen([sys.executable, str(CLIENT), str(out), str(FRAMES), "40",
                               *(s.channel for s in sims)], env=dict(os.environ))
    for s in sims:
        bridge.wait_for(f"channel {s.channel} connected", timeout=20)
    assert client.wait(60) == 0
    direct: dict[str, dict[int, Any]] = pickle.loads(out.read_bytes())
    bridge.wait_stats("delivered", FRAMES)
    code = bridge.interrupt()
    assert code == 0
    for dt, sim, topic in zip(DTYPES, sims, topics, strict=True):
        want = direct[sim.channel]
        assert len(want) >= FRAMES, f"{dt}: the direct client got {sorted(want)}"
        got = {}
        for r in read_topic(kafka_bootstrap, topic, expect=FRAMES):
            f = decode(r.key, r.value, r.headers)
            got[f.unique_id] = f
        common = sorted(set(want) & set(got))
        assert len(common) >= FRAMES - 1, f"{dt}: kafka {sorted(got)} direct {sorted(want)}"
        for uid in common:
            a, b = want[uid], got[uid]
            assert b.array.dtype == np.dtype(dt) == a.array.dtype
            assert b.array.shape == a.array.shape == (10, 24)
            assert b.array.tobytes() == a.array.tobytes(), f"{dt} uniqueId {uid} differs"
            assert (b.timestamp, b.data_timestamp) == (a.timestamp, a.data_timestamp)
            assert b.attributes == a.attributes
            assert b.dims() == a.dims()
            assert b.source == sim.channel
