"""The codec stage alone: arrival order kept whatever order the pool finishes in, the bound
held, compressed frames passed through untouched, every frame accounted for."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
from pvaflow.bridge.bridge import Bridge
from pvaflow.bridge.cli import build_parser, config_from_args
from pvaflow.bridge.compress import Budget, CodecPool, CodecStage
from pvaflow.bridge.plan import Route
from pvaflow.bridge.stats import STATUS_SCHEMA, ChannelStats, totals

from pvaflow import codec
from pvaflow.codecs import compress_image
from pvaflow.errors import ConfigError
from pvaflow.frame import Frame


class Recorder:
    """Stands in for FrameProducer.send (no Kafka here): records what reaches it, in order."""

    def __init__(self, delay: float = 0.0) -> None:
        self.sent: list[tuple[str, int, int, Any]] = []
        self.delay = delay

    def send(self, topic: str, partition: int, encoded: Any, stats: ChannelStats,
             unique_id: int) -> bool:
        time.sleep(self.delay)
        self.sent.append((topic, partition, unique_id, encoded))
        stats.produced += 1
        return True


def encode(frame: Frame, extra: Any) -> Any:
    return codec.encode(frame, sequence=-1)


def frames(n: int, shape: tuple[int, int] = (64, 64)) -> list[Frame]:
    rng = np.random.default_rng(1)
    # a mix of sizes: small frames finish before big ones queued ahead of them
    return [Frame(rng.integers(0, 50, (shape[0] * (1 + 8 * (i % 3 == 0)), shape[1]),
                               dtype=np.uint16), unique_id=i + 1) for i in range(n)]


def test_frames_leave_in_arrival_order_and_decode_to_the_source_pixels() -> None:
    pool = CodecPool("bslz4", 3)
    stats = ChannelStats("c", "t")
    rec = Recorder()
    stage = CodecStage("c", pool, rec, stats, encode)  # type: ignore[arg-type]
    src = frames(40)
    for f in src:
        stats.received += 1
        stage.submit(f, Route("t", f.unique_id % 2), [], None)
    stage.close()
    pool.close()
    assert [u for _, _, u, _ in rec.sent] == [f.unique_id for f in src]
    assert [p for _, p, _, _ in rec.sent] == [f.unique_id % 2 for f in src]
    for f, (_, _, _, (key, value, headers)) in zip(src, rec.sent, strict=True):
        got = codec.decode(key, bytes(value), headers)
        assert got.codec is not None and got.codec.name == "bslz4"
        assert np.array_equal(got.image, f.array)
    assert (stats.codec_frames, stats.compressing, stats.produced) == (40, 0, 40)
    assert stats.codec_seconds > 0
    STATUS_SCHEMA.check(totals([stats]))


def test_a_compressed_frame_passes_through_with_its_bytes() -> None:
    pool = CodecPool("lz4", 1)
    stats = ChannelStats("c", "t")
    rec = Recorder()
    stage = CodecStage("c", pool, rec, stats, encode)  # type: ignore[arg-type]
    payload, c = compress_image(np.arange(64, dtype=np.uint16).reshape(8, 8), "bslz4")
    stage.submit(Frame(payload, unique_id=1, codec=c), Route("t", 0), [], None)
    stage.submit(Frame(np.ones((8, 8), np.uint16), unique_id=2), Route("t", 0), [], None)
    stage.close()
    pool.close()
    (_, _, u1, (_, v1, h1)), (_, _, u2, (_, _, h2)) = rec.sent
    assert (u1, u2) == (1, 2)
    assert bytes(v1) == payload.tobytes() and codec.header(h1, "pf.codec") == b"bslz4"
    assert codec.header(h2, "pf.codec") == b"lz4"
    assert stats.codec_frames == 1  # only the uncompressed one was compressed here


def test_the_budget_bounds_frames_and_bytes() -> None:
    budget = Budget(max_frames=2, max_bytes=100)
    budget.acquire(60)
    budget.acquire(30)
    entered = threading.Event()

    def third() -> None:
        budget.acquire(10)
        entered.set()

    t = threading.Thread(target=third)
    t.start()
    assert not entered.wait(0.3)  # two frames held: the third waits
    budget.release(30)
    assert entered.wait(10)
    t.join()
    # bytes: 60 + 10 held, 40 more would pass 100
    big = threading.Thread(target=budget.acquire, args=(40,))
    big.start()
    big.join(0.3)
    assert big.is_alive()
    budget.release(60)
    big.join(10)
    assert not big.is_alive() and (budget.frames, budget.bytes) == (2, 50)
    # a frame larger than the whole budget enters alone
    budget.release(10)
    budget.release(40)
    budget.acquire(1000)
    assert (budget.frames, budget.bytes) == (1, 1000)


def test_the_stage_holds_no_more_than_its_backlog() -> None:
    pool = CodecPool("bslz4", 2, max_frames=3)
    stats = ChannelStats("c", "t")
    rec = Recorder(delay=0.02)  # a slow producer: the stage fills up
    stage = CodecStage("c", pool, rec, stats, encode)  # type: ignore[arg-type]
    peak = 0
    for f in frames(20, (16, 16)):
        stage.submit(f, Route("t", 0), [], None)
        peak = max(peak, stats.compressing)
    stage.close()
    pool.close()
    assert peak <= 3 and len(rec.sent) == 20


def test_codec_options() -> None:
    args = build_parser().parse_args(["-ic", "a:x", "--codec", "bslz4", "--codec-threads", "3"])
    config = config_from_args(args)
    assert (config.codec, config.codec_threads, config.codec_backlog) == ("bslz4", 3, None)
    assert config_from_args(build_parser().parse_args(["-ic", "a:x", "--codec", "none"])).codec \
        is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["-ic", "a:x", "--codec", "zip"])
    with pytest.raises(ConfigError, match="ad00"):
        Bridge(config_from_args(build_parser().parse_args(
            ["-ic", "a:x", "--codec", "lz4", "--format", "ad00"])))


@pytest.mark.parametrize("name", ["bslz4", "lz4"])
def test_the_mirror_serves_hdf5_chunks_as_ndplugincodec_frames_them(
    name: str, tmp_path: Any,
) -> None:
    """What ``pvapy-ad-sim-server -hcm`` streams from a detector's HDF5 file: after the
    mirror's reframing, pvapy's AdImageUtility decompresses it (it reads no HDF5 header)."""
    import h5py
    import pvaccess as pva
    from pvaflow.bridge.mirror import adcore_framing
    from pvaflow.ops.synthetic import DATASET, write_hdf5
    from pvapy.utility.adImageUtility import AdImageUtility

    from pvaflow.frame import Codec

    path = tmp_path / "f.h5"
    pixels = write_hdf5(path, 1, (64, 96), codec=name, seed=3)[0]
    with h5py.File(path) as f:
        chunk = np.frombuffer(f[DATASET].id.read_direct_chunk((0, 0, 0))[1], np.uint8)
    frame = Frame(chunk, unique_id=1,
                  codec=Codec(name, np.dtype("uint16"), (64, 96), pixels.nbytes))
    served = adcore_framing(frame)
    assert len(served.array) < len(chunk)
    assert np.array_equal(served.image, pixels) and np.array_equal(frame.image, pixels)
    out = AdImageUtility.getDecompressor(name)(served.array, pva.USHORT, pixels.nbytes)
    assert np.array_equal(np.asarray(out).reshape(64, 96), pixels)
    # an NDPluginCodec payload is served as it is
    payload, c = compress_image(pixels, name)
    plain = Frame(payload, unique_id=2, codec=c)
    assert adcore_framing(plain) is plain
