"""Unit tests for the native Kafka frame format (pvaflow.codec): no servers, no Kafka.

Round trips go through ``bytes`` exactly as a Kafka record would (key bytes, value bytes,
header list), and the decoded array must be a view over the value buffer.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pvaflow.codec import (
    FrameError,
    Headers,
    decode,
    decode_attributes,
    decode_key,
    dtype_name,
    encode,
    encode_attributes,
    encode_key,
    header,
)
from pvaflow.frame import (
    SUPPORTED_DTYPES,
    Alarm,
    Attribute,
    Codec,
    Dimension,
    EpicsTime,
    Frame,
)
from tests.strategies import (
    ATTRIBUTE_TYPES,
    attributes,
    canon_attribute,
    epics_times,
    i32,
    text,
)

PROPERTY = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# -- strategies ---------------------------------------------------------------------------

shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)

# NaN bit patterns with payloads, both signs, signalling and quiet.
_NAN_BITS = {
    4: [0x7F800001, 0x7FC00000, 0x7FFFFFFF, 0xFF800001, 0xFFC12345, 0x7FA5A5A5],
    8: [0x7FF0000000000001, 0x7FF8000000000000, 0xFFF8DEADBEEF0001, 0x7FFFFFFFFFFFFFFF],
}


@st.composite
def arrays(draw: st.DrawFn, dtype: np.dtype[Any] | None = None) -> np.ndarray[Any, Any]:
    """Any bit pattern of any supported dtype (drawn as raw unsigned bits, then viewed)."""
    dt = dtype if dtype is not None else draw(st.sampled_from(SUPPORTED_DTYPES))
    raw_dt = np.dtype(f"u{dt.itemsize}")
    elements = st.integers(0, 2 ** (8 * dt.itemsize) - 1)
    if dt.kind == "f":
        elements = st.one_of(elements, st.sampled_from(_NAN_BITS[dt.itemsize]))
    raw = draw(hnp.arrays(raw_dt, draw(shapes), elements=elements))
    return raw.view(dt)


@st.composite
def dimensions(draw: st.DrawFn, shape: tuple[int, ...]) -> tuple[Dimension, ...] | None:
    kind = draw(st.sampled_from(["none", "plain", "custom"]))
    if kind == "none":
        return None
    if kind == "plain":
        return tuple(Dimension.plain(n) for n in reversed(shape))
    return tuple(
        Dimension(n, draw(i32), draw(i32), draw(i32), draw(st.booleans()))
        for n in reversed(shape)
    )


@st.composite
def frames(draw: st.DrawFn, compressed: bool | None = None) -> Frame:
    if compressed is None:
        compressed = draw(st.booleans())
    if compressed:
        dtype = draw(st.sampled_from(SUPPORTED_DTYPES))
        shape = draw(shapes)
        payload = np.frombuffer(draw(st.binary(max_size=64)), dtype=np.uint8)
        usize = math.prod(shape) * dtype.itemsize
        codec = Codec(draw(text.filter(bool)), dtype, shape, usize)
        array = payload
    else:
        array = draw(arrays())
        codec = None
        shape = array.shape
    return Frame(
        array=array,
        unique_id=draw(st.integers(-(2**63), 2**64 - 1)),
        timestamp=draw(epics_times),
        data_timestamp=draw(epics_times),
        attributes=draw(st.lists(attributes(), max_size=5)),
        codec=codec,
        dimensions=draw(dimensions(shape)),
        descriptor=draw(text),
        source=draw(text),
        sequence=draw(st.one_of(st.just(-1), st.integers(0, 2**63 - 1))),
    )


# -- comparison helpers -------------------------------------------------------------------

def owner(a: np.ndarray[Any, Any]) -> Any:
    """The object that ultimately holds an array's memory."""
    base: Any = a
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


def assert_same_array(got: np.ndarray[Any, Any], want: np.ndarray[Any, Any]) -> None:
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    assert got.tobytes() == np.ascontiguousarray(want).tobytes()  # bitwise, NaN payloads too


def assert_same_frame(got: Frame, want: Frame, sequence: int | None = None) -> None:
    if want.codec is None:
        assert got.codec is None
        assert_same_array(got.array, want.array)
    else:
        assert got.codec == want.codec
        assert got.array.dtype == np.uint8 and got.array.ndim == 1
        assert got.array.tobytes() == want.array.tobytes()
    assert got.shape == want.shape and got.dtype == want.dtype
    assert got.unique_id == want.unique_id
    assert got.timestamp == want.timestamp
    assert got.data_timestamp == want.data_timestamp
    assert got.dims() == want.dims()
    assert got.descriptor == want.descriptor
    assert got.source == want.source
    seq = want.sequence if sequence is None else sequence
    assert got.sequence == (seq if seq >= 0 else -1)
    assert [canon_attribute(a) for a in got.attributes] == [
        canon_attribute(a) for a in want.attributes
    ]
    for a in got.attributes:
        assert isinstance(a.timestamp, EpicsTime) and isinstance(a.alarm, Alarm)


def record(frame: Frame, **kw: Any) -> tuple[bytes, bytes, Headers]:
    """What a consumer gets back: key bytes, value bytes, header list."""
    key, value, headers = encode(frame, **kw)
    return key, value.tobytes(), list(headers)


def replace_header(headers: Headers, name: str, value: bytes | None) -> Headers:
    out = [(k, v) for k, v in headers if k != name]
    if value is not None:
        out.append((name, value))
    return out


# -- round trips --------------------------------------------------------------------------

@PROPERTY
@given(frame=frames(), sequence=st.one_of(st.none(), st.integers(0, 2**63 - 1)))
def test_encode_bytes_decode_is_lossless(frame: Frame, sequence: int | None) -> None:
    key, value, headers = encode(frame, sequence=sequence)
    assert isinstance(key, bytes) and len(key) == 8
    assert isinstance(value, np.ndarray)
    assert value.ndim == 1 and value.flags.c_contiguous
    for name, hv in headers:
        assert name.startswith("pf.") and isinstance(hv, bytes)
    buf = value.tobytes()
    got = decode(key, buf, headers)
    assert_same_frame(got, frame, sequence)


@PROPERTY
@given(frame=frames(compressed=False))
def test_decoded_array_is_a_view_over_the_value_buffer(frame: Frame) -> None:
    key, buf, headers = record(frame)
    got = decode(key, buf, headers)
    assert owner(got.array) is buf
    assert not got.array.flags.writeable  # bytes are immutable, so is the view

    # with a mutable buffer the view sees writes to it: same memory, no copy
    mbuf = bytearray(buf)
    got = decode(key, mbuf, headers)
    assert owner(got.array) is mbuf
    if mbuf:
        assert np.shares_memory(got.array, np.frombuffer(mbuf, np.uint8))
        mbuf[0] ^= 0xFF
        assert got.array.reshape(-1).view(np.uint8)[0] == mbuf[0]


@PROPERTY
@given(frame=frames(compressed=True))
def test_compressed_frame_payload_is_a_view_and_codec_survives(frame: Frame) -> None:
    key, buf, headers = record(frame)
    got = decode(key, buf, headers)
    assert owner(got.array) is buf
    assert got.codec == frame.codec
    assert got.array.tobytes() == frame.array.tobytes()


@PROPERTY
@given(frame=frames(compressed=False))
def test_encode_does_not_copy_a_contiguous_little_endian_array(frame: Frame) -> None:
    _, value, _ = encode(frame)
    if frame.array.size:
        assert np.shares_memory(value, frame.array)


@PROPERTY
@given(array=arrays())
def test_decode_accepts_memoryview_and_bytearray(array: np.ndarray[Any, Any]) -> None:
    frame = Frame(array, unique_id=5)
    key, buf, headers = record(frame)
    for wrapped in (memoryview(buf), bytearray(buf)):
        got = decode(key, wrapped, headers)
        assert_same_array(got.array, array)


@pytest.mark.parametrize("dtype", [np.dtype("float32"), np.dtype("float64")])
def test_nan_payloads_survive_bitwise(dtype: np.dtype[Any]) -> None:
    bits = np.array(_NAN_BITS[dtype.itemsize], dtype=f"u{dtype.itemsize}")
    array = bits.view(dtype)
    assert np.isnan(array).all()
    got = decode(*record(Frame(array)))
    assert np.array_equal(got.array.view(bits.dtype), bits)


@pytest.mark.parametrize("dtype", [d for d in SUPPORTED_DTYPES if d.itemsize > 1])
def test_big_endian_array_is_sent_little_endian_with_same_values(dtype: np.dtype[Any]) -> None:
    native = np.arange(24, dtype=dtype).reshape(2, 3, 4)
    big = native.astype(dtype.newbyteorder(">"))
    key, value, headers = encode(Frame(big, unique_id=1))
    assert value.dtype.byteorder in "<=|"
    assert value.tobytes() == native.tobytes()  # wire bytes are little-endian
    got = decode(key, value.tobytes(), headers)
    assert got.array.dtype == dtype
    assert np.array_equal(got.array, native)


def test_non_contiguous_array_is_sent_in_c_order() -> None:
    a = np.arange(30, dtype=np.int16).reshape(5, 6)[:, ::2]
    got = decode(*record(Frame(a)))
    assert np.array_equal(got.array, a)
    assert got.array.flags.c_contiguous


@pytest.mark.parametrize("dtype", SUPPORTED_DTYPES)
def test_extreme_values_of_every_dtype(dtype: np.dtype[Any]) -> None:
    info = np.finfo(dtype) if dtype.kind == "f" else np.iinfo(dtype)
    values = [info.min, info.max, 0]
    if dtype.kind == "f":
        values += [np.inf, -np.inf, -0.0, np.nan, float(np.finfo(dtype).smallest_subnormal)]
    a = np.array(values, dtype=dtype)
    got = decode(*record(Frame(a, unique_id=2**31 - 1)))
    assert_same_array(got.array, a)


def test_wire_headers_for_a_plain_frame() -> None:
    frame = Frame(np.zeros((3, 4), np.uint16), unique_id=258, timestamp=EpicsTime(1, 2, 3))
    key, value, headers = encode(frame, sequence=7)
    h = dict(headers)
    assert key == b"\x00\x00\x00\x00\x00\x00\x01\x02"
    assert h["pf.v"] == b"1"
    assert h["pf.uid"] == b"258"
    assert h["pf.dtype"] == b"u2"
    assert h["pf.shape"] == b"3,4"
    assert h["pf.usize"] == b"24"
    assert h["pf.ts"] == b"1.2.3"
    assert h["pf.seq"] == b"7"
    # defaults are left out to keep headers small
    for absent in ("pf.codec", "pf.src", "pf.desc", "pf.attrs", "pf.dims"):
        assert absent not in h
    assert value.nbytes == 24


def test_sequence_argument_overrides_frame_sequence() -> None:
    frame = Frame(np.zeros(2, np.uint8), sequence=3)
    assert decode(*record(frame)).sequence == 3
    assert decode(*record(frame, sequence=11)).sequence == 11
    assert decode(*record(Frame(np.zeros(2, np.uint8)))).sequence == -1


def test_negative_unique_id_round_trips_through_the_unsigned_key() -> None:
    key, buf, headers = record(Frame(np.zeros(1, np.uint8), unique_id=-1))
    assert key == b"\xff" * 8
    assert decode(key, buf, headers).unique_id == -1


def test_foreign_and_null_headers_are_ignored() -> None:
    key, buf, headers = record(Frame(np.arange(4, dtype=np.uint8), unique_id=9))
    noisy: Headers = [
        ("traceparent", b"00-abc"), ("x", None), *headers, ("other", b"\xff"),
    ]
    got = decode(key, buf, noisy)
    assert got.unique_id == 9 and got.array.tolist() == [0, 1, 2, 3]


def test_header_helper_reads_one_header() -> None:
    _, _, headers = record(Frame(np.zeros(1, np.uint8), unique_id=77))
    assert header(headers, "pf.uid") == b"77"
    assert header(headers, "pf.nope") is None
    assert header(None, "pf.uid") is None


@given(uid=st.integers(0, 2**64 - 1))
@settings(max_examples=30, deadline=None)
def test_key_is_uniqueid_big_endian(uid: int) -> None:
    key = encode_key(uid)
    assert key == uid.to_bytes(8, "big")
    assert decode_key(key) == uid


def test_dtype_name_is_byte_order_free() -> None:
    assert dtype_name(np.dtype("<u2")) == "u2"
    assert dtype_name(np.dtype(">f8")) == "f8"
    assert dtype_name(np.dtype("int8")) == "i1"
    with pytest.raises(FrameError, match="unsupported dtype"):
        dtype_name(np.dtype("complex64"))


@pytest.mark.parametrize("dtype", ["bool", "float16", "complex128", "U3", "O"])
def test_encode_rejects_dtypes_ntndarray_cannot_carry(dtype: str) -> None:
    with pytest.raises(FrameError, match="unsupported dtype"):
        encode(Frame(np.zeros(2, dtype=dtype)))


@PROPERTY
@given(attrs=st.lists(attributes(), max_size=8))
def test_attribute_header_round_trip(attrs: list[Attribute]) -> None:
    raw = encode_attributes(attrs)
    assert isinstance(raw, bytes)
    got = decode_attributes(raw)
    assert [canon_attribute(a) for a in got] == [canon_attribute(a) for a in attrs]


def test_attribute_header_drops_trailing_defaults() -> None:
    raw = encode_attributes([Attribute("gain", 2, "int")])
    assert json.loads(raw) == [["gain", "int", 2]]
    full = Attribute("g", 1, "int", alarm=Alarm(1, 0, ""))
    assert len(json.loads(encode_attributes([full]))[0]) == 9


@pytest.mark.parametrize("typ", ATTRIBUTE_TYPES)
def test_every_attribute_type_round_trips_through_the_record(typ: str) -> None:
    samples: dict[str, Any] = {
        "boolean": True, "byte": -128, "ubyte": 255, "short": -(2**15), "ushort": 2**16 - 1,
        "int": -(2**31), "uint": 2**32 - 1, "long": -(2**63), "ulong": 2**64 - 1,
        "float": float(np.float32(3.4e38)), "double": -1.7976931348623157e308,
        "string": "π ≠ 3 \x00 \"quoted\"",
    }
    if typ == "":
        value: Any = None
    elif typ.endswith("[]"):
        base = samples[typ[:-2]]
        value = [base, base] if typ != "boolean[]" else [True, False]
    else:
        value = samples[typ]
    attr = Attribute("a", value, typ, "desc", "src", 2, ["t1"], EpicsTime(1, 2, 3),
                     Alarm(2, 3, "HIHI"))
    got = decode(*record(Frame(np.zeros(1, np.uint8), attributes=[attr])))
    assert [canon_attribute(a) for a in got.attributes] == [canon_attribute(attr)]


# -- malformed input: one test each -------------------------------------------------------

def _valid(**kw: Any) -> tuple[bytes, bytes, Headers]:
    frame = Frame(np.arange(12, dtype=np.uint16).reshape(3, 4), unique_id=42,
                  attributes=[Attribute("a", 1, "int")], **kw)
    return record(frame)


def test_valid_fixture_decodes() -> None:
    key, buf, headers = _valid()
    assert decode(key, buf, headers).unique_id == 42


def test_truncated_value_is_rejected() -> None:
    key, buf, headers = _valid()
    msg = r"value is 23 bytes but shape \(3, 4\) of uint16 needs 24"
    with pytest.raises(FrameError, match=msg):
        decode(key, buf[:-1], headers)


def test_missing_value_is_rejected() -> None:
    key, _, headers = _valid()
    with pytest.raises(FrameError, match="no value"):
        decode(key, None, headers)


def test_unknown_format_version_is_rejected() -> None:
    key, buf, headers = _valid()
    with pytest.raises(FrameError, match="unknown format version b'2'") as info:
        decode(key, buf, replace_header(headers, "pf.v", b"2"))
    assert "version 1" in info.value.reason


def test_missing_version_header_is_rejected() -> None:
    key, buf, headers = _valid()
    with pytest.raises(FrameError, match=r"not a pvaflow frame: header pf\.v is missing"):
        decode(key, buf, replace_header(headers, "pf.v", None))
    with pytest.raises(FrameError, match=r"pf\.v is missing"):
        decode(key, buf, None)


def test_size_shape_mismatch_is_rejected() -> None:
    key, buf, headers = _valid()
    with pytest.raises(FrameError, match=r"uncompressed size 25 does not match shape \(3, 4\)"):
        decode(key, buf, replace_header(headers, "pf.usize", b"25"))
    # a shape that needs more bytes than the value has
    h = replace_header(replace_header(headers, "pf.shape", b"4,4"), "pf.usize", b"32")
    with pytest.raises(FrameError, match=r"value is 24 bytes but shape \(4, 4\)"):
        decode(key, buf, h)


def test_unknown_dtype_is_rejected() -> None:
    key, buf, headers = _valid()
    with pytest.raises(FrameError, match=r"unknown dtype 'f2' \(expected one of .*uint16"):
        decode(key, buf, replace_header(headers, "pf.dtype", b"f2"))


def test_bad_key_length_is_rejected() -> None:
    _, buf, headers = _valid()
    with pytest.raises(FrameError, match=r"key must be 8 bytes .*got 4 bytes"):
        decode(b"\x00\x00\x00\x2a", buf, headers)
    with pytest.raises(FrameError, match=r"key must be 8 bytes .*got no key"):
        decode(None, buf, headers)


def test_key_unique_id_mismatch_is_rejected() -> None:
    _, buf, headers = _valid()
    with pytest.raises(FrameError, match="key 43 does not match header uniqueId 42"):
        decode(encode_key(43), buf, headers)


@pytest.mark.parametrize("raw", [
    b"{not json",                 # not JSON at all
    b'{"a": 1}',                  # not a list of rows
    b"[5]",                       # a row that is not a list
    b'[["a"]]',                   # a row that is too short
    b'[["a","int",1,"","",0,[],[0,0,0],[0,0,""],"extra"]]',  # too long
    b'[["a","int",1,"","","x"]]',  # sourceType not an integer
    b'[["a","int",1,"","",0,[],[1,2,3,4]]]',  # timestamp with 4 fields
    b"\xff\xfe",                  # not UTF-8
])
def test_malformed_attribute_header_is_rejected(raw: bytes) -> None:
    key, buf, headers = _valid()
    with pytest.raises(FrameError, match="malformed attribute header"):
        decode(key, buf, replace_header(headers, "pf.attrs", raw))


@pytest.mark.parametrize("raw", [b"3,x", b"3,,4", b"3.0,4", b"[3, 4]"])
def test_malformed_shape_is_rejected(raw: bytes) -> None:
    key, buf, headers = _valid()
    with pytest.raises(FrameError, match="malformed shape header"):
        decode(key, buf, replace_header(headers, "pf.shape", raw))


def test_negative_dimension_in_shape_is_rejected() -> None:
    key, buf, headers = _valid()
    with pytest.raises(FrameError, match=r"negative dimension in shape \(-3, -4\)"):
        decode(key, buf, replace_header(headers, "pf.shape", b"-3,-4"))


def test_missing_shape_header_is_rejected() -> None:
    key, buf, headers = _valid()
    with pytest.raises(FrameError, match=r"header pf\.shape is missing"):
        decode(key, buf, replace_header(headers, "pf.shape", None))


@pytest.mark.parametrize("name", ["pf.uid", "pf.usize"])
def test_missing_or_non_integer_integer_header_is_rejected(name: str) -> None:
    key, buf, headers = _valid()
    with pytest.raises(FrameError, match=f"header {name} is missing"):
        decode(key, buf, replace_header(headers, name, None))
    with pytest.raises(FrameError, match=f"header {name} is not an integer"):
        decode(key, buf, replace_header(headers, name, b"12a"))


def test_malformed_timestamp_is_rejected() -> None:
    key, buf, headers = _valid()
    with pytest.raises(FrameError, match=r"malformed timestamp header pf\.ts"):
        decode(key, buf, replace_header(headers, "pf.ts", b"1.2"))


def test_malformed_dimension_header_is_rejected() -> None:
    key, buf, headers = _valid(dimensions=(Dimension(4, 1, 8, 2, True), Dimension(3)))
    with pytest.raises(FrameError, match="malformed dimension header"):
        decode(key, buf, replace_header(headers, "pf.dims", b"[[4,1]]"))
    with pytest.raises(FrameError, match=r"dimension sizes \[3, 4\] do not match shape \(3, 4\)"):
        decode(key, buf, replace_header(headers, "pf.dims", b"[[3,0,3,1,false],[4,0,4,1,false]]"))


def test_frame_error_is_a_value_error_with_a_reason() -> None:
    key, buf, headers = _valid()
    with pytest.raises(ValueError) as info:
        decode(key, buf[:3], headers)
    assert isinstance(info.value, FrameError)
    assert info.value.reason == str(info.value)


# Whatever a corrupt record holds, decode must fail with FrameError (which a consumer routes
# to its dead-letter queue), never with another exception that would crash the consumer.
_HEADER_NAMES = ["pf.v", "pf.uid", "pf.dtype", "pf.shape", "pf.usize", "pf.ts", "pf.dts",
                 "pf.codec", "pf.seq", "pf.src", "pf.desc", "pf.attrs", "pf.dims"]
_NASTY = [b"", b"\xff", b"-1", b"99999999999999999999", b"1e400", b"Infinity", b"NaN",
          b"[[Infinity,0,0,1,false]]", b'[["a","int",1,"","",Infinity]]',
          b"4294967296,4294967296", b"1.2.3.4", b"null", b"[]", b"{}"]


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(_HEADER_NAMES),
    value=st.one_of(st.none(), st.sampled_from(_NASTY), st.binary(max_size=12)),
    with_dims=st.booleans(),
)
def test_corrupt_header_raises_only_frame_error(
    name: str, value: bytes | None, with_dims: bool
) -> None:
    dims = (Dimension(4, 1, 8, 2, True), Dimension(3)) if with_dims else None
    key, buf, headers = _valid(dimensions=dims, descriptor="d", source="s", sequence=1)
    bad = replace_header(headers, name, value)
    assume(bad != headers)
    with contextlib.suppress(FrameError):
        decode(key, buf, bad)


def test_decode_accepts_dict_headers_and_str_values() -> None:
    key, buf, headers = _valid()
    as_dict: dict[str, str | bytes | None] = dict(headers)
    as_dict["pf.uid"], as_dict["pf.shape"] = "42", "3,4"  # str values, as a dict
    got = decode(key, buf, as_dict)
    assert got.unique_id == 42 and got.shape == (3, 4)
    assert header(as_dict, "pf.uid") == b"42"


def test_numpy_scalar_and_array_attribute_values_encode_as_plain_values():
    a = np.arange(4, dtype=np.uint16)
    f = Frame(a, unique_id=1, attributes=[
        Attribute("max", a.max(), "ushort"), Attribute("v", a[:2], "ushort[]")])
    out = decode(*record(f))
    assert [(x.value, type(x.value)) for x in out.attributes] == [(3, int), ([0, 1], list)]


def test_unencodable_attribute_value_is_a_frame_error():
    f = Frame(np.zeros(2, np.uint8), unique_id=1, attributes=[Attribute("x", object(), "int")])
    with pytest.raises(FrameError, match="attribute value cannot be encoded"):
        encode(f)


def test_dimensions_that_contradict_the_shape_are_refused_at_encode():
    f = Frame(np.zeros((4, 6), np.uint8), unique_id=1,
              dimensions=(Dimension(6, 2, 12, 2, False), Dimension(4, 0, 8, 2, False)))
    binned = replace(f, array=f.array[:, ::2].copy())
    with pytest.raises(FrameError, match=r"use Frame\.with_array"):
        encode(binned)
    assert decode(*record(binned.with_array(binned.array))).shape == (4, 3)
