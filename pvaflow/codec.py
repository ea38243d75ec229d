"""Native frame format: one Kafka record per frame.

Key: uniqueId as 8-byte big-endian. Value: the array bytes exactly as NTNDArray carried them
(C order; a compressed frame's payload stays compressed). Headers: small, fixed names, all
prefixed ``pf.`` and versioned by ``pf.v``. Decoding wraps the value in a numpy view, so the
only copy on the consume side is the one the Kafka client makes when it hands out ``bytes``.
"""

from __future__ import annotations

import functools
import json
import math
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import numpy as np
from confluent_kafka import Producer

from .errors import FrameError
from .frame import (
    SUPPORTED_DTYPES,
    Alarm,
    Attribute,
    Codec,
    Dimension,
    EpicsTime,
    Frame,
)

FORMAT_VERSION = 1
HEADER_PREFIX = "pf."
# The bridge run that numbered a record's pf.seq: a restarted bridge numbers from 0 again.
SESSION_HEADER = "pf.bsid"
_KEY = struct.Struct(">Q")
_DTYPES = {dt.str.lstrip("<>|="): dt for dt in SUPPORTED_DTYPES}

# confluent-kafka types header values as str | bytes | None, in a list or a dict.
Headers = list[tuple[str, str | bytes | None]]
RecordHeaders = Headers | dict[str, str | bytes | None] | None


def encode_key(unique_id: int) -> bytes:
    return _KEY.pack(unique_id & 0xFFFF_FFFF_FFFF_FFFF)


def decode_key(key: bytes | None) -> int:
    if key is None or len(key) != _KEY.size:
        raise FrameError(f"key must be 8 bytes (uniqueId, big-endian), got {_describe(key)}")
    return int(_KEY.unpack(key)[0])


def dtype_name(dtype: np.dtype[Any]) -> str:
    """Byte-order-free dtype name used on the wire (``u2``, ``f4``); values are little-endian."""
    dt = np.dtype(dtype)
    name = dt.str.lstrip("<>|=")
    if name not in _DTYPES:
        raise FrameError(f"unsupported dtype {dt} (NTNDArray carries {_supported()})")
    return name


def encode(
    frame: Frame, *, sequence: int | None = None
) -> tuple[bytes, np.ndarray[Any, Any], Headers]:
    """Key, value and headers for ``producer.produce``. The value is the frame's own array
    (C-contiguous, little-endian), which confluent-kafka accepts without an extra copy."""
    value = frame.array
    if frame.codec is None:
        name = dtype_name(value.dtype)
        if value.dtype.byteorder == ">":
            value = value.astype(value.dtype.newbyteorder("<"))
        shape = tuple(value.shape)
        usize = value.nbytes
    else:
        name = dtype_name(frame.codec.dtype)
        shape = tuple(frame.codec.shape)
        usize = frame.codec.uncompressed_size
        if value.dtype != np.uint8:
            value = value.view(np.uint8)
    if not value.flags.c_contiguous:
        value = np.ascontiguousarray(value)
    seq = frame.sequence if sequence is None else sequence
    headers: Headers = [
        ("pf.v", b"1"),
        ("pf.uid", str(frame.unique_id).encode()),
        ("pf.dtype", name.encode()),
        ("pf.shape", _shape_header(shape)),
        ("pf.usize", str(usize).encode()),
        ("pf.ts", _time(frame.timestamp)),
        ("pf.dts", _time(frame.data_timestamp)),
    ]
    if frame.codec is not None:
        headers.append(("pf.codec", frame.codec.name.encode()))
    if seq >= 0:
        headers.append(("pf.seq", str(seq).encode()))
    if frame.source:
        headers.append(("pf.src", frame.source.encode()))
    if frame.descriptor:
        headers.append(("pf.desc", frame.descriptor.encode()))
    if frame.attributes:
        headers.append(("pf.attrs", encode_attributes(frame.attributes)))
    if frame.dimensions is not None and frame.dimensions != _plain_dims(shape):
        if tuple(d.size for d in reversed(frame.dimensions)) != shape:
            # refuse here rather than publish a record every reader would reject
            raise FrameError(f"dimensions {[d.size for d in frame.dimensions]} do not match "
                             f"shape {shape}; use Frame.with_array() when changing the array")
        headers.append(("pf.dims", json.dumps([list(d) for d in frame.dimensions]).encode()))
    return encode_key(frame.unique_id), value.reshape(-1), headers


def decode(
    key: bytes | None,
    value: bytes | bytearray | memoryview | None,
    headers: RecordHeaders,
) -> Frame:
    """Frame from a record; the array is a read-only numpy view over ``value``."""
    h = {k: v if type(v) is bytes else _bytes(v)
         for k, v in _items(headers) if v is not None and k.startswith(HEADER_PREFIX)}
    version = h.get("pf.v")
    if version is None:
        raise FrameError("not a pvaflow frame: header pf.v is missing")
    if version != b"1":
        raise FrameError(f"unknown format version {version!r} (this pvaflow reads version 1)")
    if value is None:
        raise FrameError("record has no value")
    uid = _int(h, "pf.uid")
    if decode_key(key) != uid & 0xFFFF_FFFF_FFFF_FFFF:
        raise FrameError(f"key {decode_key(key)} does not match header uniqueId {uid}")
    dname = _text(h, "pf.dtype")
    dtype = _DTYPES.get(dname)
    if dtype is None:
        raise FrameError(f"unknown dtype {dname!r} (expected one of {_supported()})")
    shape = _shape(h)
    usize = _int(h, "pf.usize")
    expected = math.prod(shape) * dtype.itemsize  # Python ints: a corrupt shape cannot wrap
    if usize != expected:
        raise FrameError(f"uncompressed size {usize} does not match shape {shape} of {dtype}")
    codec_name = h.get("pf.codec")
    codec = None
    if codec_name:
        codec = Codec(_utf8(h, "pf.codec"), dtype, shape, usize)
        array = np.frombuffer(value, dtype=np.uint8)
    else:
        if len(value) != expected:
            raise FrameError(
                f"value is {len(value)} bytes but shape {shape} of {dtype} needs {expected}"
            )
        array = np.frombuffer(value, dtype=dtype).reshape(shape)
    return Frame(
        array=array,
        unique_id=uid,
        timestamp=_parse_time(h, "pf.ts"),
        data_timestamp=_parse_time(h, "pf.dts"),
        attributes=decode_attributes(h["pf.attrs"]) if "pf.attrs" in h else [],
        codec=codec,
        dimensions=_dims(h, shape),
        descriptor=_utf8(h, "pf.desc"),
        source=_utf8(h, "pf.src"),
        sequence=_int(h, "pf.seq") if "pf.seq" in h else -1,
    )


def header(headers: RecordHeaders, name: str) -> bytes | None:
    """One header's value without decoding the frame (routing and reorder need only the id)."""
    for k, v in _items(headers):
        if k == name:
            return None if v is None else _bytes(v)
    return None


def produce(
    producer: Producer,
    topic: str,
    frame: Frame,
    *,
    partition: int | None = None,
    sequence: int | None = None,
    extra_headers: Headers | None = None,
    on_delivery: Callable[..., Any] | None = None,
) -> int:
    """``producer.produce`` of one frame; returns the value size. Raises BufferError when the
    producer's bounded buffer is full, so the caller decides whether to wait or drop."""
    key, value, headers = encode(frame, sequence=sequence)
    if extra_headers:
        headers += extra_headers
    kwargs: dict[str, Any] = {"key": key, "headers": headers}
    if partition is not None:
        kwargs["partition"] = partition
    if on_delivery is not None:
        kwargs["on_delivery"] = on_delivery
    # confluent-kafka's stubs say bytes, but it reads any C-contiguous buffer without a copy.
    producer.produce(topic, cast(bytes, value), **kwargs)
    return int(value.nbytes)


def _items(headers: RecordHeaders) -> Iterable[tuple[str, str | bytes | None]]:
    if headers is None:
        return ()
    return headers.items() if isinstance(headers, dict) else headers


def _bytes(v: str | bytes) -> bytes:
    return v.encode() if isinstance(v, str) else v


# -- attributes: compact JSON, one list per attribute, trailing defaults dropped ------------

def encode_attributes(attrs: Sequence[Attribute]) -> bytes:
    rows = []
    for a in attrs:
        row: list[Any] = [
            a.name, a.type, a.value, a.descriptor, a.source, a.source_type, a.tags,
            list(a.timestamp), list(a.alarm),
        ]
        while len(row) > 3 and row[-1] == _ATTR_DEFAULTS[len(row) - 4]:
            row.pop()
        rows.append(row)
    try:
        return json.dumps(rows, separators=(",", ":"), default=_plain).encode()
    except (TypeError, ValueError) as exc:
        raise FrameError(f"attribute value cannot be encoded: {exc}") from exc


def _plain(value: Any) -> Any:
    """numpy scalars and arrays (``a.max()``) as the Python values JSON knows."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not a scalar, string or list")


_ATTR_DEFAULTS: list[Any] = ["", "", 0, [], [0, 0, 0], [0, 0, ""]]


def decode_attributes(raw: bytes) -> list[Attribute]:
    try:
        rows = json.loads(raw)
        out = []
        for row in rows:
            full = list(row) + _ATTR_DEFAULTS[len(row) - 3:]
            name, typ, value, desc, src, stype, tags, ts, alarm = full
            out.append(Attribute(
                name=name, value=value, type=typ, descriptor=desc, source=src,
                source_type=int(stype), tags=list(tags), timestamp=EpicsTime(*ts),
                alarm=Alarm(*alarm),
            ))
        return out
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise FrameError(f"malformed attribute header: {str(exc)[:200]}") from exc


# -- small parsers ------------------------------------------------------------------------

def _time(t: EpicsTime) -> bytes:
    return f"{t.seconds}.{t.nanoseconds}.{t.user_tag}".encode()


def _parse_time(h: dict[str, bytes], name: str) -> EpicsTime:
    raw = h.get(name)
    if raw is None:
        return EpicsTime()
    try:
        s, ns, tag = raw.split(b".")
        return EpicsTime(int(s), int(ns), int(tag))
    except ValueError as exc:
        raise FrameError(f"malformed timestamp header {name}={raw!r}") from exc


def _int(h: dict[str, bytes], name: str) -> int:
    raw = h.get(name)
    if raw is None:
        raise FrameError(f"header {name} is missing")
    try:
        return int(raw)
    except ValueError as exc:
        raise FrameError(f"header {name} is not an integer: {raw!r}") from exc


def _text(h: dict[str, bytes], name: str) -> str:
    raw = h.get(name)
    if raw is None:
        raise FrameError(f"header {name} is missing")
    return raw.decode(errors="replace")


def _utf8(h: dict[str, bytes], name: str) -> str:
    try:
        return h.get(name, b"").decode()
    except UnicodeDecodeError as exc:
        raise FrameError(f"header {name} is not valid UTF-8: {exc}") from exc


def _shape(h: dict[str, bytes]) -> tuple[int, ...]:
    raw = h.get("pf.shape")
    if raw is None:
        raise FrameError("header pf.shape is missing")
    return _parse_shape(raw)


# Memoized both ways (bounded): a stream repeats one shape, and parsing costs ~1.5 us.
@functools.lru_cache(maxsize=256)
def _parse_shape(header: bytes) -> tuple[int, ...]:
    raw = header.decode(errors="replace")
    try:
        shape = tuple(int(n) for n in raw.split(",")) if raw else ()
    except ValueError as exc:
        raise FrameError(f"malformed shape header {raw!r}") from exc
    if any(n < 0 for n in shape):
        raise FrameError(f"negative dimension in shape {shape}")
    return shape


@functools.lru_cache(maxsize=256)
def _shape_header(shape: tuple[int, ...]) -> bytes:
    return ",".join(map(str, shape)).encode()


def _plain_dims(shape: tuple[int, ...]) -> tuple[Dimension, ...]:
    return tuple(Dimension.plain(n) for n in reversed(shape))


def _dims(h: dict[str, bytes], shape: tuple[int, ...]) -> tuple[Dimension, ...] | None:
    raw = h.get("pf.dims")
    if raw is None:
        return None
    try:
        dims = tuple(Dimension(int(s), int(o), int(f), int(b), bool(r))
                     for s, o, f, b, r in json.loads(raw))
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise FrameError(f"malformed dimension header: {str(exc)[:200]}") from exc
    if tuple(d.size for d in reversed(dims)) != shape:
        raise FrameError(f"dimension sizes {[d.size for d in dims]} do not match shape {shape}")
    return dims


def _supported() -> str:
    return ", ".join(str(d) for d in SUPPORTED_DTYPES)


def _describe(key: bytes | None) -> str:
    return "no key" if key is None else f"{len(key)} bytes"
