"""Export and replay against a real broker: topic -> HDF5 -> topic is bit-identical for raw
and bslz4-compressed frames, the HDF5 is a NeXus-style dataset h5py + hdf5plugin decode, and
NPY, TIFF and CSV exports hold what they should."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import TopicPartition

from pvaflow.codec import decode, encode
from pvaflow.codecs import compress_image
from pvaflow.frame import Attribute, EpicsTime, Frame
from pvaflow.kafka.client import Kafka
from pvaflow.testing import make_frames

pytestmark = pytest.mark.integration


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pvaflow.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def frames(kind: str, n: int = 12) -> list[Frame]:
    out = []
    for i, f in enumerate(make_frames(n, (16, 24), "uint16", first_id=100)):
        f.timestamp = EpicsTime(1_714_600_000 + i, 123_456 * i, 7)
        f.data_timestamp = EpicsTime(1_714_600_000 + i, 5, 0)
        f.attributes = [Attribute("ColorMode", 0, "int"),
                        Attribute("Exposure", 0.25 * i, "double", "exposure time"),
                        Attribute("Label", f"frame {i}", "string")]
        # smooth pixels, so that compression really compresses
        f.array[:] = (np.arange(f.array.size, dtype=np.uint16) // 7 + i).reshape(f.array.shape)
        if kind == "bslz4":
            payload, c = compress_image(f.array, "bslz4")
            f = Frame(payload, f.unique_id, f.timestamp, f.data_timestamp, f.attributes, c)
        out.append(f)
    return out


def produce(bootstrap: str, topic: str, fs: list[Frame], partitions: int = 2) -> None:
    p = Kafka(bootstrap).producer()
    for i, f in enumerate(fs):
        key, value, headers = encode(f)
        p.produce(topic, value.tobytes(), key, partition=i % partitions, headers=headers)
    assert p.flush(30) == 0


def read(bootstrap: str, topic: str, n: int, timeout: float = 60) -> list[Any]:
    c = Kafka(bootstrap).consumer(f"reader-{time.monotonic_ns()}")
    md = c.list_topics(topic, timeout=15).topics[topic]
    c.assign([TopicPartition(topic, p, 0) for p in md.partitions])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n and time.monotonic() < deadline:
            out += [m for m in c.consume(100, 0.5) if m.error() is None]
    finally:
        c.close()
    return out


def record(m: Any) -> tuple[Any, ...]:
    return (m.partition(), m.key(), m.value(), [(k, bytes(v)) for k, v in m.headers()])


@pytest.mark.parametrize("kind", ["raw", "bslz4"])
def test_topic_to_hdf5_to_topic_is_bit_identical(
        kind: str, kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path) -> None:
    import h5py
    import hdf5plugin  # noqa: F401

    src, dst = make_topic(2), make_topic(2, suffix="back")
    sent = frames(kind)
    produce(kafka_bootstrap, src, sent)
    h5 = tmp_path / "run.h5"
    r = cli("export", src, "--to", str(h5), "-b", kafka_bootstrap)
    assert r.returncode == 0, r.stderr
    assert f"exported 12 frames (uniqueId 100-111) from {src} to {h5} (h5)" in r.stdout

    with h5py.File(h5, "r") as f:
        assert f["entry"].attrs["NX_class"] == "NXentry"
        assert f["entry/data"].attrs["NX_class"] == "NXdata"
        assert f["entry/data"].attrs["signal"] == "data"
        ds = f["entry/data/data"]
        assert ds.shape == (12, 16, 24) and ds.chunks == (1, 16, 24)
        assert ds.dtype == np.dtype("<u2")
        if kind == "bslz4":
            plist = ds.id.get_create_plist()
            assert plist.get_filter(0)[0] == 32008
        ids = list(f["entry/data/uniqueId"][:])
        by_id = {fr.unique_id: fr for fr in sent}
        for i, uid in enumerate(ids):
            np.testing.assert_array_equal(ds[i], by_id[uid].image)  # decoded by the filter
            assert f["entry/data/timestamp"][i] == pytest.approx(
                by_id[uid].timestamp.to_float())
        assert sorted(ids) == list(range(100, 112))
        expo = dict(zip(ids, f["entry/instrument/NDAttributes/Exposure"][:], strict=True))
        assert expo[105] == 0.25 * 5

    r = cli("replay", str(h5), "--topic", dst, "-b", kafka_bootstrap)
    assert r.returncode == 0, r.stderr
    assert f"replayed 12 frames from 1 file(s) to {dst}" in r.stdout
    orig = sorted(map(record, read(kafka_bootstrap, src, 12)), key=lambda t: t[1])
    back = sorted(map(record, read(kafka_bootstrap, dst, 12)), key=lambda t: t[1])
    assert len(back) == 12
    assert back == orig  # partition, key, payload bytes, every header: bit for bit
    f0 = decode(back[0][1], back[0][2], back[0][3])
    assert f0.attributes[1].descriptor == "exposure time"
    assert (f0.codec is not None) == (kind == "bslz4")


def test_npy_tiff_csv_fresh_ids_rate_and_a_window(
        kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path) -> None:
    import tifffile

    src, dst, dst2 = make_topic(), make_topic(suffix="npy"), make_topic(suffix="tif")
    sent = frames("bslz4", 6)
    produce(kafka_bootstrap, src, sent, partitions=1)
    orig = [record(m) for m in read(kafka_bootstrap, src, 6)]
    # NPY from offset 2: pixels decoded, a sidecar line per frame
    npy = tmp_path / "s.npy"
    r = cli("export", src, "--to", str(npy), "--from-offset", "2", "-b", kafka_bootstrap)
    assert r.returncode == 0, r.stderr
    stack = np.load(npy)
    assert stack.shape == (4, 16, 24)
    for got, f in zip(stack, sent[2:], strict=True):
        np.testing.assert_array_equal(got, f.image)
    side = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [m["uniqueId"] for m in side] == [102, 103, 104, 105]
    assert side[1]["attributes"] == {"ColorMode": 0, "Exposure": 0.75, "Label": "frame 3"}
    assert side[1]["codec"] == "bslz4"
    # replayed with fresh ids, paced: the same bytes (bslz4 is compressed again identically)
    t0 = time.monotonic()
    r = cli("replay", str(npy), "--topic", dst, "--fresh-ids", "--first-id", "1000",
            "--rate", "20", "-b", kafka_bootstrap)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t0 > 0.15  # 4 frames at 20/s
    back = [record(m) for m in read(kafka_bootstrap, dst, 4)]
    assert [int.from_bytes(b[1], "big") for b in back] == [1000, 1001, 1002, 1003]
    for b, o in zip(back, orig[2:], strict=True):
        assert b[2] == o[2]
        assert [h for h in b[3] if h[0] != "pf.uid"] == [h for h in o[3] if h[0] != "pf.uid"]
        assert dict(b[3])["pf.uid"] == str(int.from_bytes(b[1], "big")).encode()
    # TIFF series: one file per frame, the frame's record in the description
    r = cli("export", src, "--to", str(tmp_path / "t.tif"), "-b", kafka_bootstrap)
    assert r.returncode == 0, r.stderr
    tifs = sorted(tmp_path.glob("t_*.tif"))
    assert len(tifs) == 6
    with tifffile.TiffFile(tifs[4]) as tif:
        np.testing.assert_array_equal(tif.pages[0].asarray(), sent[4].image)
        assert json.loads(tif.pages[0].description)["uniqueId"] == 104
    r = cli("replay", *map(str, tifs), "--topic", dst2, "-b", kafka_bootstrap)
    assert r.returncode == 0, r.stderr
    assert [record(m) for m in read(kafka_bootstrap, dst2, 6)] == orig


def test_csv_of_a_time_series_stream(
        kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path) -> None:
    from pvaflow.stream import OutputStream

    src = make_topic()
    with OutputStream(src, bootstrap=kafka_bootstrap, chunk_size=4) as out:
        out.send(np.arange(20, dtype=np.float64).reshape(10, 2))
    csv = tmp_path / "ts.csv"
    r = cli("export", src, "--to", str(csv), "-b", kafka_bootstrap)
    assert r.returncode == 0, r.stderr
    lines = csv.read_text().splitlines()
    assert lines[0] == "uniqueId,timestamp,sample,ch0,ch1"
    rows = [line.split(",") for line in lines[1:]]
    assert len(rows) == 10  # chunks of 4, 4 and the flushed 2: one row per sample
    assert [r[0] for r in rows] == ["1"] * 4 + ["2"] * 4 + ["3"] * 2
    assert [float(r[3]) for r in rows] == [float(v) for v in range(0, 20, 2)]
    assert [int(r[2]) for r in rows[:5]] == [0, 1, 2, 3, 0]


def test_export_errors_are_one_line(kafka_bootstrap: str, make_topic: Callable[..., str],
                                    tmp_path: Path) -> None:
    src = make_topic()
    produce(kafka_bootstrap, src, frames("raw", 2), partitions=1)
    produce(kafka_bootstrap, src, make_frames(1, (3, 3)), partitions=1)  # another shape
    for args, code, text in (
            (["--to", str(tmp_path / "x.h5")], 2, "one HDF5 dataset holds one kind of frame"),
            (["--to", str(tmp_path / "x.bin")], 2, "cannot tell the format"),
            (["--to", str(tmp_path / "x.csv")], 2, "has 3 channels, earlier frames 24"),
    ):
        r = cli("export", src, *args, "-b", kafka_bootstrap)
        assert r.returncode == code, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and text in lines[0] and "Traceback" not in r.stderr
    r = cli("export", "no-such-topic-here", "--to", str(tmp_path / "y.h5"), "-b",
            kafka_bootstrap)
    assert r.returncode == 2 and "does not exist" in r.stderr
