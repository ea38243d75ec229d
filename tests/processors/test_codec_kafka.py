"""Compressed frames through a real consumer and broker: corrupt payloads go to the DLQ with
their reason, the good frames around them are rotated and leave in their codec."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from pvaflow.codec import decode
from pvaflow.codecs import recompress
from pvaflow.frame import Codec, EpicsTime, Frame
from pvaflow.hdf5 import bslz4_chunk

from .conftest import Proc, feed, read_exactly

pytestmark = pytest.mark.integration

SHAPE = (64, 48)


def pixels(uid: int) -> np.ndarray[Any, Any]:
    return np.random.default_rng(uid).integers(0, 3000, size=SHAPE, dtype=np.uint16)


def good(uid: int, codec: str = "bslz4") -> Frame:
    return recompress(Frame(pixels(uid), unique_id=uid, timestamp=EpicsTime.now()), codec)


def _payload(data: bytes) -> np.ndarray[Any, Any]:
    return np.frombuffer(data, np.uint8)


def malformed() -> dict[int, tuple[Frame, str]]:
    """uniqueId -> (frame, a word its DLQ reason must contain)."""
    truncated = good(3)
    truncated = replace(truncated, array=truncated.array[:-25])
    with_header = good(6)
    chunk = bytearray(bslz4_chunk(with_header))
    chunk[8:12] = (12).to_bytes(4, "big")  # block size of 6 uint16: not a multiple of 8
    bad_block = replace(with_header, array=_payload(bytes(chunk)))
    # declares a larger image than the payload holds (sizes consistent with the shape)
    big = (96, 48)
    wrong_size = replace(good(9), codec=Codec("bslz4", np.dtype("u2"), big, 96 * 48 * 2))
    garbage_lz4 = replace(good(12, "lz4"), array=_payload(b"\xff" * 200))
    return {3: (truncated, "does not fit"), 6: (bad_block, "block size"),
            9: (wrong_size, "bslz4"), 12: (garbage_lz4, "LZ4")}


def test_malformed_compressed_frames_go_to_the_dlq_and_the_rest_are_processed(
        kafka_bootstrap: str, make_topic: Callable[..., str],
        consumer: Callable[..., Proc]) -> None:
    src, out, dlq = make_topic(), make_topic(suffix="out"), make_topic(suffix="dlq")
    bad = malformed()
    frames = [bad[uid][0] if uid in bad else good(uid) for uid in range(1, 16)]
    feed(kafka_bootstrap, src, frames)
    c = consumer("--input-topic", src, "--output-topic", out, "--dlq-topic", dlq,
                 "--processor", "rotate", "--processor-args", '{"k": 1}', "--runtime", "60",
                 "--report-period", "1")
    outputs = read_exactly(kafka_bootstrap, out, 15 - len(bad))
    dead = read_exactly(kafka_bootstrap, dlq, len(bad))
    assert c.stop() == 0, c.text()[-3000:]

    assert sorted(r.uid for r in outputs) == [u for u in range(1, 16) if u not in bad]
    for r in outputs:
        f = decode(r.uid.to_bytes(8, "big"), r.value, list(r.headers.items()))
        assert f.codec is not None and f.codec.name == "bslz4"  # --output-codec same
        np.testing.assert_array_equal(f.image, np.rot90(pixels(r.uid)))
    for r in dead:
        frame, word = bad[r.uid]
        reason = r.headers["pf.dlq.reason"].decode()
        assert r.headers["pf.dlq.stage"] == b"process", reason
        assert r.headers["pf.dlq.error"] == b"FrameError"
        assert f"frame {r.uid}" in reason and word in reason, reason
        assert r.value == frame.array.tobytes()  # the original record, replayable
    log = c.text()
    assert "Traceback" not in log
    assert "'errors': 4" in log and "'dlq': 4" in log and "'processed': 11" in log


def test_output_codec_none_and_a_codec_name_through_the_broker(
        kafka_bootstrap: str, make_topic: Callable[..., str],
        consumer: Callable[..., Proc]) -> None:
    src, plain, lz4 = make_topic(), make_topic(suffix="plain"), make_topic(suffix="lz4")
    feed(kafka_bootstrap, src, [good(uid) for uid in range(1, 6)])
    procs = [consumer("--input-topic", src, "--output-topic", topic, "--group", f"g-{topic}",
                      "--output-codec", policy, "--processor", "passthrough", "--runtime", "60",
                      name=f"consumer-{policy}")
             for topic, policy in ((plain, "none"), (lz4, "lz4"))]
    got = {policy: read_exactly(kafka_bootstrap, topic, 5)
           for topic, policy in ((plain, "none"), (lz4, "lz4"))}
    for p in procs:
        assert p.stop() == 0, p.text()[-3000:]
    for policy, recs in got.items():
        for r in recs:
            f = decode(r.uid.to_bytes(8, "big"), r.value, list(r.headers.items()))
            assert (f.codec.name if f.codec else "none") == policy
            np.testing.assert_array_equal(f.image, pixels(r.uid))
