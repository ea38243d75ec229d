"""pvaflow.stream: the three kinds of pyacq data round trip through a real broker, exactly."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from pvaflow.errors import FrameError
from pvaflow.stream import (
    EVENT_DTYPE,
    InputStream,
    OutputStream,
    StreamInfo,
    _from_wire,
    _to_wire,
    events,
)

RATE = 100_000.0
CHANNELS = [f"ch{i}" for i in range(32)]


def signal(n: int, seed: int = 0) -> np.ndarray[Any, Any]:
    """n samples of a 32-channel float32 signal, NaN and -0.0 included (bit-exact checks)."""
    x = np.random.default_rng(seed).standard_normal((n, 32)).astype(np.float32)
    x[3, 4], x[5, 6] = np.nan, -0.0
    return x


def same_bits(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# -- without a broker ------------------------------------------------------------------------

def test_structured_and_other_dtypes_travel_as_bytes_and_come_back() -> None:
    ev = events([0.5, 1.25, 7.0], [1, -2, 2**62])
    for data in (ev, np.array([[True, False]] * 3), np.arange(6, dtype=np.complex64),
                 np.arange(4, dtype=np.float16).reshape(2, 2)):
        wire, descr = _to_wire(data)
        assert wire.dtype in (data.dtype, np.uint8)
        assert (descr is None) == (wire.dtype == data.dtype)
        assert same_bits(_from_wire(wire, descr), data)
    plain = np.zeros((3, 2), np.float32)
    assert _to_wire(plain) == (plain, None)
    with pytest.raises(FrameError, match="uint8 rows of 16 bytes"):
        _from_wire(np.zeros((3, 8), np.uint8), _to_wire(ev)[1])


def test_events_helper_and_times() -> None:
    ev = events([1.0, 2.0], [3, 4])
    assert ev.dtype == EVENT_DTYPE and ev["value"].tolist() == [3, 4]
    with pytest.raises(ValueError, match="one length"):
        events([1.0], [1, 2])
    info = StreamInfo(kind="signal", rate=1000.0, t0=10.0)
    np.testing.assert_allclose(info.times(2000, 3), [12.0, 12.001, 12.002])
    with pytest.raises(ValueError, match="no sample rate"):
        StreamInfo().times(0, 1)


# -- against the real broker ---------------------------------------------------------------

def chunks_of(inp: InputStream, n: int, timeout: float = 60.0) -> list[Any]:
    got = []
    for _ in range(n):
        chunk = inp.recv_chunk(timeout)
        assert chunk is not None, f"only {len(got)} of {n} chunks arrived"
        got.append(chunk)
    return got


def test_signal_chunks_exactly_in_order_bit_identical(
        kafka_bootstrap: str, make_topic: Callable[..., str]) -> None:
    topic = make_topic()
    data = signal(10_500)
    pieces = [370, 1630, 1000, 1, 999, 4000, 2500]  # 10,500 samples in uneven sends
    assert sum(pieces) == len(data)
    with OutputStream(topic, bootstrap=kafka_bootstrap, kind="signal", chunk_size=1000,
                      rate=RATE, t0=1_700_000_000.0, channels=CHANNELS) as out:
        i = 0
        for p in pieces:
            buf = data[i:i + p].copy()
            out.send(buf, run="A")
            buf[:] = 0  # the stream must not keep a reference to the caller's buffer
            i += p
        assert out.sent == 10 and out.samples == 10_000  # the 500 remainder waits for flush
    assert out.sent == 11 and out.samples == 10_500

    with InputStream(topic, bootstrap=kafka_bootstrap) as inp:
        got = chunks_of(inp, 11)
    assert [len(c.data) for c in got] == [1000] * 10 + [500]
    assert [c.offset for c in got] == list(range(0, 10_500, 1000))
    assert same_bits(np.concatenate([c.data for c in got]), data)
    info = got[0].info
    assert (info.kind, info.rate, info.t0, info.channels) == (
        "signal", RATE, 1_700_000_000.0, tuple(CHANNELS))
    assert got[0].info.attrs == {"run": "A"}
    assert got[3].frame.unique_id == 4

    # another reader reassembles the same samples in other slices, times included
    with InputStream(topic, bootstrap=kafka_bootstrap) as inp:
        parts, starts = [], []
        for n in (2300, 2300, 2300, 2300, 2300):
            parts.append(inp.read(n, timeout=5.0 if len(parts) == 4 else 30.0))
            starts.append(inp.position - len(parts[-1]))
        assert [len(p) for p in parts] == [2300] * 4 + [1300]
        assert starts == [0, 2300, 4600, 6900, 9200] and inp.gaps == 0
        assert same_bits(np.concatenate(parts), data)
        assert parts[1].flags.writeable  # read() returns a new array
        np.testing.assert_array_equal(inp.info.times(starts[1], 2),
                                      1_700_000_000.0 + np.array([2300, 2301]) / RATE)


def test_event_stream_round_trips(kafka_bootstrap: str, make_topic: Callable[..., str]) -> None:
    topic = make_topic()
    rng = np.random.default_rng(3)
    times = np.sort(rng.uniform(0, 10, 250))
    ev = events(times, rng.integers(-(2**40), 2**40, 250))
    pairs = np.column_stack([times, rng.integers(0, 8, 250).astype(np.float64)])
    with OutputStream(topic, bootstrap=kafka_bootstrap, kind="events", chunk_size=100) as out:
        out.send(ev[:130])
        out.send(ev[130:])
        with pytest.raises(ValueError, match="events are EVENT_DTYPE rows"):
            out.send(np.zeros((4, 3)))
    pair_topic = make_topic(suffix="pairs")
    with OutputStream(pair_topic, bootstrap=kafka_bootstrap, kind="events") as out:
        out.send(pairs[:7])
        out.send(pairs[7:])
    with InputStream(topic, bootstrap=kafka_bootstrap) as inp:
        got = inp.read(250, timeout=30.0)
        assert got.dtype == EVENT_DTYPE and same_bits(got, ev)
        assert inp.info.kind == "events"
    with InputStream(pair_topic, bootstrap=kafka_bootstrap) as inp:
        first, second = chunks_of(inp, 2)
    assert same_bits(first.data, pairs[:7]) and (second.offset, len(second.data)) == (7, 243)
    assert same_bits(np.concatenate([first.data, second.data]), pairs)


def test_video_frames_round_trip(kafka_bootstrap: str, make_topic: Callable[..., str]) -> None:
    topic = make_topic()
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(4)]
    frames.append(rng.integers(0, 65536, (48, 64), dtype=np.uint16))
    with OutputStream(topic, bootstrap=kafka_bootstrap, kind="video", rate=30.0) as out:
        for i, f in enumerate(frames):
            out.send(f, exposure=0.01 * i)
        with pytest.raises(ValueError, match="video frame"):
            out.send(np.zeros(5))
    with pytest.raises(ValueError, match="drop chunk_size"):
        OutputStream(topic, bootstrap=kafka_bootstrap, kind="video", chunk_size=2)
    with InputStream(topic, bootstrap=kafka_bootstrap) as inp:
        got = chunks_of(inp, 5)
        assert [c.offset for c in got] == [0, 1, 2, 3, 4]
        assert all(same_bits(c.data, f) for c, f in zip(got, frames, strict=True))
        assert got[2].info.attrs["exposure"] == pytest.approx(0.02)
        assert got[0].info.kind == "video" and got[0].info.rate == 30.0


def test_readers_each_see_the_whole_stream_and_a_group_shares_it(
        kafka_bootstrap: str, make_topic: Callable[..., str]) -> None:
    topic = make_topic(2)
    data = signal(8000, seed=9)
    # two members of one group join before the data: each gets one partition
    members = [InputStream(topic, bootstrap=kafka_bootstrap, group=f"g-{topic}")
               for _ in range(2)]
    try:
        # Both keep polling until each holds a partition: the first to join gets both and
        # must take part in the rebalance that hands one to the other.
        ok = [False, False]
        deadline = time.monotonic() + 120
        while not all(ok) and time.monotonic() < deadline:
            ok = [m.wait_assigned(0.5) for m in members]
        assert ok == [True, True]
        with OutputStream(topic, bootstrap=kafka_bootstrap, chunk_size=500, kind="signal",
                          partitions=2) as out:
            out.send(data)  # 16 chunks, spread over both partitions by key
        shared: list[list[int]] = [[], []]
        deadline_chunks = 16

        def drain(i: int) -> None:
            while sum(map(len, shared)) < deadline_chunks:
                chunk = members[i].recv_chunk(2.0)
                if chunk is not None:
                    shared[i].append(chunk.offset)

        threads = [threading.Thread(target=drain, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert sorted(shared[0] + shared[1]) == list(range(0, 8000, 500))
        assert shared[0] and shared[1]  # each member got part of the stream
    finally:
        for m in members:
            m.close()
    # readers of distinct groups (or none) each see all of it
    for group in (None, None, f"a-{topic}", f"b-{topic}"):
        with InputStream(topic, bootstrap=kafka_bootstrap, group=group) as inp:
            got = chunks_of(inp, 16)
        assert sorted(c.offset for c in got) == list(range(0, 8000, 500))
        assert same_bits(np.concatenate([c.data for c in sorted(got, key=lambda c: c.offset)]),
                         data)


def test_filters_run_in_order_on_both_sides(
        kafka_bootstrap: str, make_topic: Callable[..., str]) -> None:
    topic = make_topic()
    x = np.arange(12, dtype=np.float64).reshape(6, 2)
    pre = [lambda a: a * 2, lambda a: a + 1, lambda a: a.astype(np.float32)]
    post = [lambda a: a - 1, lambda a: a * 10]
    with OutputStream(topic, bootstrap=kafka_bootstrap, chunk_size=4, filters=pre) as out:
        out.send(x)
    with InputStream(topic, bootstrap=kafka_bootstrap, filters=post) as inp:
        got = inp.read(6, timeout=30.0)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ((x * 2 + 1) - 1) * 10)


def test_chunking_is_exact_and_the_remainder_goes_on_flush(
        kafka_bootstrap: str, make_topic: Callable[..., str]) -> None:
    topic = make_topic()
    out = OutputStream(topic, bootstrap=kafka_bootstrap, chunk_size=7)
    inp = InputStream(topic, bootstrap=kafka_bootstrap)
    try:
        out.send(np.arange(5))
        out.send(np.arange(5, 13))  # 13 samples: one chunk of 7, 6 pending
        out.flush()  # sends the 6 and waits for delivery
        assert (out.sent, out.samples) == (2, 13)
        out.send(np.arange(13, 20))
        out.close()
        out.close()  # harmless
        with pytest.raises(ValueError, match="closed"):
            out.send(np.arange(3))
        with OutputStream(make_topic(suffix="shapes"), bootstrap=kafka_bootstrap,
                          chunk_size=7) as o2:
            o2.send(np.zeros((2, 2)))
            with pytest.raises(ValueError, match="cannot follow pending"):
                o2.send(np.zeros((2, 3)))
        got = chunks_of(inp, 3)
        assert [c.data.tolist() for c in got] == [
            list(range(7)), list(range(7, 13)), list(range(13, 20))]
        assert [c.offset for c in got] == [0, 7, 13]
    finally:
        out.close()
        inp.close()
        inp.close()


def test_read_stops_at_a_gap(kafka_bootstrap: str, make_topic: Callable[..., str]) -> None:
    topic = make_topic()
    for _ in range(2):  # two writers, one after the other: the second starts at sample 0
        with OutputStream(topic, bootstrap=kafka_bootstrap, chunk_size=4) as out:
            out.send(np.arange(6))
    with InputStream(topic, bootstrap=kafka_bootstrap) as inp:
        assert inp.read(10, timeout=30.0).tolist() == list(range(6))
        assert (inp.position, inp.gaps) == (6, 0)
        assert inp.read(6, timeout=30.0).tolist() == list(range(6))
        assert (inp.position, inp.gaps) == (6, 1)
        assert len(inp.read(1, timeout=1.0)) == 0


def test_the_simple_example_of_the_docs(
        kafka_bootstrap: str, make_topic: Callable[..., str],
        capsys: pytest.CaptureFixture[str]) -> None:
    """docs/streams.md's first example, with this test's broker and topic."""
    import re
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "streams.md").read_text()
    code = re.search(r"## The simple example.*?```python\n(.*?)```", doc, re.S)
    assert code is not None
    topic = make_topic()
    src = code.group(1).replace('("simple")', f'("{topic}", bootstrap="{kafka_bootstrap}")')
    exec(compile(src, "docs/streams.md", "exec"), {})
    assert "Received: 3 array([[1, 2],\n       [3, 4],\n       [5, 6]])" in capsys.readouterr().out
