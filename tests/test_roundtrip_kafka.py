"""Frames through the REAL Kafka broker (``kafka_bootstrap``), bit for bit.

Produced with confluent-kafka using ``producer_config()`` + ``encode()``, consumed with
``consumer_config()`` + ``decode()``, exactly as the bridge and the processors do.
"""

from __future__ import annotations

import importlib.util
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)

from pvaflow import codec
from pvaflow.codec import decode, encode
from pvaflow.frame import SUPPORTED_DTYPES, Alarm, Attribute, Codec, Dimension, EpicsTime, Frame
from pvaflow.kafka.settings import consumer_config, producer_config
from pvaflow.ntnda import frame_from_ntnda, ntnda_from_frame

pytestmark = pytest.mark.integration


def _sibling(name: str) -> ModuleType:
    """Helpers of another test module (pytest's importlib mode puts no test dir on sys.path)."""
    spec = importlib.util.spec_from_file_location(
        f"_pvaflow_{name}_helpers", Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_nt = _sibling("test_ntnda")
build_nt: Callable[[Frame], Any] = _nt.build_nt
nt_summary: Callable[[Any], dict[str, Any]] = _nt.nt_summary


# -- produce / consume --------------------------------------------------------------------

def produce_frames(bootstrap: str, topic: str, frames: Iterable[Frame]) -> int:
    """Produce every frame (encode() + producer.produce, as the bridge does); returns count
    after all deliveries are confirmed."""
    producer = Producer(producer_config(bootstrap))
    errors: list[Any] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    n = 0
    for i, frame in enumerate(frames):
        key, value, headers = encode(frame, sequence=i)
        while True:
            try:
                producer.produce(topic, value, key=key, headers=headers,  # type: ignore[arg-type]
                                 on_delivery=on_delivery)
                break
            except BufferError:  # bounded producer queue full: wait for deliveries
                producer.poll(0.1)
        producer.poll(0)
        n += 1
    assert producer.flush(120) == 0, "frames still undelivered after 120 s"
    assert errors == []
    return n


def consume(bootstrap: str, topic: str, count: int, timeout: float = 120.0) -> Iterator[Message]:
    """Yield ``count`` records of partition 0 from the beginning (manual assignment: no group
    rebalance to wait for)."""
    consumer = Consumer(consumer_config(f"g-{uuid.uuid4().hex[:8]}", bootstrap))
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + timeout
        seen = 0
        while seen < count:
            assert time.monotonic() < deadline, f"only {seen} of {count} records in {timeout} s"
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            seen += 1
            yield msg
    finally:
        consumer.close()


def owner(a: np.ndarray[Any, Any]) -> Any:
    base: Any = a
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base


def check_record(msg: Message, want: Frame, index: int) -> Frame:
    value = msg.value()
    got = decode(msg.key(), value, msg.headers())
    assert got.sequence == index
    assert msg.offset() == index
    assert got.unique_id == want.unique_id
    assert got.timestamp == want.timestamp and got.data_timestamp == want.data_timestamp
    assert got.array.dtype == want.array.dtype and got.array.shape == want.array.shape
    assert np.array_equal(got.array.reshape(-1).view(np.uint8),
                          want.array.reshape(-1).view(np.uint8))  # bitwise
    if value:
        assert owner(got.array) is value  # decode made no copy of what the client handed out
    return got


# -- bulk frames --------------------------------------------------------------------------

def small_frame(i: int) -> Frame:
    rng = np.random.default_rng(i)
    return Frame(
        rng.integers(0, 256, (128, 128), dtype=np.uint8),
        unique_id=i + 1,
        timestamp=EpicsTime(1_700_000_000 + i, (i * 7919) % 1_000_000_000, i % 3),
        data_timestamp=EpicsTime(1_700_000_000 + i, 5, 0),
        attributes=[Attribute("ColorMode", 0, "int"), Attribute("Index", i, "ulong")],
        source="sim:small",
    )


def large_frame(i: int) -> Frame:
    rng = np.random.default_rng(10_000 + i)
    a = rng.integers(0, 2**16, (2048, 2048), dtype=np.uint16)
    assert a.nbytes == 8 * 1024 * 1024
    return Frame(a, unique_id=i + 1, timestamp=EpicsTime(1_700_000_000, i, 0),
                 data_timestamp=EpicsTime(1_700_000_000, i, 0), source="sim:large")


def test_1000_small_frames_are_bit_identical(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic()
    n = 1000
    assert produce_frames(kafka_bootstrap, topic, (small_frame(i) for i in range(n))) == n
    for i, msg in enumerate(consume(kafka_bootstrap, topic, n)):
        want = small_frame(i)
        got = check_record(msg, want, i)
        assert got.source == "sim:small"
        assert got.attribute("Index") == i and got.attribute("ColorMode") == 0


def test_20_frames_of_8_mib_are_bit_identical(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic()
    n = 20
    assert produce_frames(kafka_bootstrap, topic, (large_frame(i) for i in range(n))) == n
    for i, msg in enumerate(consume(kafka_bootstrap, topic, n, timeout=180)):
        assert len(msg.value() or b"") == 8 * 1024 * 1024
        check_record(msg, large_frame(i), i)


def test_edge_shapes_survive_kafka(kafka_bootstrap: str, make_topic: Callable[..., str]) -> None:
    """Empty header values and empty record values must not turn into null on the way."""
    topic = make_topic()
    frames = [
        Frame(np.array(3.5, dtype=np.float64), unique_id=1),           # 0-d: shape header ""
        Frame(np.zeros((0, 4), dtype=np.int16), unique_id=2),          # empty value
        Frame(np.zeros((3, 0, 2), dtype=np.uint32), unique_id=3, descriptor="empty"),
        Frame(np.arange(5, dtype=np.int64), unique_id=-1),             # negative id / max key
    ]
    produce_frames(kafka_bootstrap, topic, frames)
    for i, msg in enumerate(consume(kafka_bootstrap, topic, len(frames))):
        got = check_record(msg, frames[i], i)
        assert got.descriptor == frames[i].descriptor


# -- NTNDArray -> Frame -> Kafka -> Frame -> NTNDArray -----------------------------------

ATTRIBUTE_SAMPLES: dict[str, Any] = {
    "boolean": True, "byte": 127, "ubyte": 255, "short": -(2**15), "ushort": 2**16 - 1,
    "int": -(2**31), "uint": 2**32 - 1, "long": -(2**63), "ulong": 2**64 - 1,
    "float": float(np.finfo(np.float32).max), "double": -1.7976931348623157e308,
    "string": "π ≠ 3, \"quoted\"",
}
ARRAY_SAMPLES: dict[str, list[Any]] = {
    "boolean": [True, False], "byte": [-128, 127], "ubyte": [0, 255],
    "short": [-(2**15), 2**15 - 1], "ushort": [0, 2**16 - 1], "int": [-(2**31), 2**31 - 1],
    "uint": [0, 2**32 - 1], "long": [-(2**63), 2**63 - 1], "ulong": [0, 2**64 - 1],
    "float": [1.5, -0.0, float("inf")], "double": [5e-324, -0.0, float("-inf")],
    "string": ["", "a b", "ü"],
}


def all_attributes() -> list[Attribute]:
    attrs = [Attribute("empty", None, "", "no value", "", 0, [], EpicsTime(), Alarm())]
    for i, (typ, value) in enumerate(ATTRIBUTE_SAMPLES.items()):
        attrs.append(Attribute(f"s_{typ}", value, typ, f"scalar {typ}", f"SRC:{typ}", i,
                               [typ], EpicsTime(100 + i, i, -i), Alarm(i % 4, i, "msg")))
    for i, (typ, values) in enumerate(ARRAY_SAMPLES.items()):
        attrs.append(Attribute(f"a_{typ}", values, f"{typ}[]", "", "", 0, [],
                               EpicsTime(200 + i, 0, 0), Alarm()))
    return attrs


def value_array(dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
    if dtype.kind == "f":
        info = np.finfo(dtype)
        nan_bits = {4: [0x7F800001, 0xFFC12345], 8: [0x7FF0000000000001, 0xFFF8DEADBEEF0001]}
        nans = np.array(nan_bits[dtype.itemsize], dtype=f"u{dtype.itemsize}").view(dtype)
        base = np.array([info.min, info.max, 0.0, -0.0, np.inf, -np.inf,
                         info.smallest_subnormal, 1.0, 2.0, 3.0], dtype=dtype)
        return np.concatenate([base, nans]).reshape(3, 4)
    ii = np.iinfo(dtype)
    return np.array([ii.min, ii.max, 0, 1, 2, 3, 4, 5, 6, 7, 8, ii.max // 2],
                    dtype=dtype).reshape(3, 4)


def ntnda_cases() -> list[Any]:
    """NTNDArrays (written with plain pvapy) covering every value type, every attribute type,
    custom dimensions and codec-compressed frames."""
    specs = []
    for k, dtype in enumerate(SUPPORTED_DTYPES):
        specs.append(Frame(value_array(dtype), unique_id=k + 1,
                           timestamp=EpicsTime(1_700_000_000, k, 1),
                           data_timestamp=EpicsTime(1_700_000_001, k, 2),
                           attributes=all_attributes(), descriptor=f"value type {dtype}"))
    specs.append(Frame(np.arange(12, dtype=np.uint16).reshape(3, 4), unique_id=100,
                       dimensions=(Dimension(4, 8, 16, 2, True), Dimension(3, 1, 7, 1, False))))
    codec_dtypes: list[np.dtype[Any]] = [np.dtype("uint16"), np.dtype("float32")]
    for k, dtype in enumerate(codec_dtypes):
        payload = np.frombuffer(b"\x04\x22\x4d\x18" + bytes(range(40)), dtype=np.uint8)
        specs.append(Frame(payload, unique_id=200 + k,
                           codec=Codec("lz4" if k else "bslz4", dtype, (32, 16),
                                       32 * 16 * dtype.itemsize),
                           attributes=[Attribute("Codec", "lz4", "string")]))
    return [build_nt(s) for s in specs]


def test_every_ntndarray_value_and_attribute_type_survives_kafka(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic()
    sources = ntnda_cases()
    producer = Producer(producer_config(kafka_bootstrap))
    for i, nt in enumerate(sources):
        frame = frame_from_ntnda(nt, source="SIM:Image")
        codec.produce(producer, topic, frame, sequence=i)  # the core's zero-copy helper
    assert producer.flush(60) == 0

    for i, msg in enumerate(consume(kafka_bootstrap, topic, len(sources))):
        got = decode(msg.key(), msg.value(), msg.headers())
        assert got.source == "SIM:Image" and got.sequence == i
        back = ntnda_from_frame(got)
        assert nt_summary(back) == nt_summary(sources[i])
