"""A compressed detector stream end to end, every stage real: pvapy-ad-sim-server streams
the bslz4 chunks of an HDF5 file (``-hcm``) -> pvaflow-bridge -> two rotate consumers
(``--n-consumers 2``) -> pvaflow-collector -> one HDF5 file whose chunks are bslz4 and whose
pixels are the rotated source pixels."""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np
import pytest
from confluent_kafka.admin import AdminClient
from pvaflow.ops.synthetic import DATASET, write_hdf5

from tests.procs import Proc, wait_for

pytestmark = pytest.mark.integration

FRAMES = 20
NO_CONTROL = ("--control-topic", "", "--status-topic", "")


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def start(name: str, module: str, *args: str) -> Proc:
        p = Proc([sys.executable, "-m", module, *args], tmp_path / f"{name}.log")
        started.append(p)
        return p

    yield start
    for p in reversed(started):
        p.stop(60)


def group_ready(admin: AdminClient, group: str, members: int, partitions: int) -> bool:
    try:
        desc = admin.describe_consumer_groups([group])[group].result(10)
    except Exception:
        return False
    if len(desc.members) != members or str(desc.state).split(".")[-1] != "STABLE":
        return False
    owned = [m.assignment.topic_partitions for m in desc.members]
    return all(owned) and sum(len(o) for o in owned) == partitions


def test_bslz4_stream_bridge_rotate_consumers_collector_to_hdf5(
        kafka_bootstrap: str, make_topic: Callable[..., str], sim_server: Callable[..., Any],
        run: Callable[..., Proc], tmp_path: Path) -> None:
    source = tmp_path / "detector.h5"
    pixels = write_hdf5(source, FRAMES, (1024, 1024), codec="bslz4", seed=11)
    tag = uuid.uuid4().hex[:8]
    frames, processed = f"codec-{tag}", make_topic(2, suffix="processed")
    make_topic(2, name=frames)
    group, out_dir = f"rot-{tag}", tmp_path / "out"
    b = ("-b", kafka_bootstrap)
    consumers = run("consumers", "pvaflow.processors.cli", "--input-topic", frames,
                    "--output-topic", processed, "--group", group, "--n-consumers", "2",
                    "--processor", "rotate", "--processor-args", '{"k": 1}', *b, *NO_CONTROL)
    collector = run("collector", "pvaflow.collectors.cli", "--input-topic", processed,
                    "--group", f"col-{tag}", "--output-dir", str(out_dir),
                    "--output-format", "h5", "--max-delay", "10", "--report-period", "1",
                    *b, *NO_CONTROL)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    wait_for(lambda: group_ready(admin, group, 2, 2), 120, "two consumers sharing 2 "
             "partitions", logs=[consumers])
    # The first frame waits for the bridge to connect; frames flow at a modest rate.
    sim = sim_server(fps=4, total_frames=FRAMES, gated=True,
                     extra_args=["-if", str(source), "-hds", DATASET, "-hcm"])
    bridge = run("bridge", "pvaflow.bridge.cli", "--input-channel", sim.channel, "--topic",
                 frames, "--partitions", "2", "--report-period", "1", *b, *NO_CONTROL)
    procs = [bridge, consumers, collector]
    wait_for(lambda: f"channel {sim.channel} connected" in bridge.text(), 90,
             "the bridge to connect", logs=procs)
    sim.release()

    def emitted() -> int:
        found = re.findall(r"emitted (\d+)", collector.text())
        return int(found[-1]) if found else 0

    wait_for(lambda: emitted() >= FRAMES, 180, f"the collector to emit {FRAMES} frames", logs=procs)
    assert collector.stop() == 0, collector.text()[-3000:]
    for p in (bridge, consumers):
        p.stop()

    [path] = list(out_dir.glob("*.h5"))
    assert path.name == f"col-{tag}.1.h5"
    with h5py.File(path, "r") as h:  # hdf5plugin (imported) provides the bitshuffle filter
        assert h["entry"].attrs["NX_class"] == "NXentry"
        assert h["entry/data"].attrs["NX_class"] == "NXdata"
        assert h["entry/data"].attrs["signal"] == "data"
        ds = h["entry/data/data"]
        uids = [int(u) for u in h["entry/data/uniqueId"][...]]
        assert ds.shape == (FRAMES, 1024, 1024) and ds.dtype == np.uint16
        assert ds.chunks == (1, 1024, 1024)
        assert uids == sorted(uids) and len(set(uids)) == FRAMES  # ordered, each once
        plist = ds.id.get_create_plist()
        assert [plist.get_filter(i)[0] for i in range(plist.get_nfilters())] == \
            [hdf5plugin.BSHUF_ID]
        for row, uid in enumerate(uids):
            info = ds.id.get_chunk_info(row)
            assert info.chunk_offset == (row, 0, 0) and info.filter_mask == 0  # bslz4 applied
            assert info.size < pixels[0].nbytes / 3  # compressed, not stored raw
            # the sim server streams the file's frames in order, from uniqueId 1
            np.testing.assert_array_equal(ds[row], np.rot90(pixels[(uid - 1) % FRAMES]))
        assert np.all(h["entry/data/timestamp"][...] > 1.6e9)
    log = collector.text() + consumers.text()
    assert "Traceback" not in log
