"""NTNDArray (pvapy) <-> Frame conversion (pvaflow.ntnda): no servers.

NTNDArrays for the "NTNDArray first" round trips are built here directly with the pvapy API
(``build_nt``), independently of ``ntnda_from_frame``, so a bug shared by both directions of
the converter cannot hide itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pvaccess as pva
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pvaflow.codec import FrameError
from pvaflow.frame import (
    SUPPORTED_DTYPES,
    Alarm,
    Attribute,
    Codec,
    Dimension,
    EpicsTime,
    Frame,
)
from pvaflow.ntnda import frame_from_ntnda, ntnda_from_frame
from tests.strategies import (
    ATTRIBUTE_TYPES,
    PVA_SCALAR_VALUES,
    canon,
    canon_attribute,
    epics_times,
    i32,
    text,
)
from tests.strategies import attributes as any_attributes

# pvapy is much slower than the codec: fewer examples.
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PVA_TYPE = {
    "boolean": pva.BOOLEAN, "byte": pva.BYTE, "ubyte": pva.UBYTE, "short": pva.SHORT,
    "ushort": pva.USHORT, "int": pva.INT, "uint": pva.UINT, "long": pva.LONG,
    "ulong": pva.ULONG, "float": pva.FLOAT, "double": pva.DOUBLE, "string": pva.STRING,
}
NUMPY_TYPE = {
    "byte": "int8", "ubyte": "uint8", "short": "int16", "ushort": "uint16", "int": "int32",
    "uint": "uint32", "long": "int64", "ulong": "uint64", "float": "float32",
    "double": "float64",
}
VALUE_FIELD = {np.dtype(t): f"{n}Value" for n, t in NUMPY_TYPE.items()}

# -- strategies (PVA ranges: uniqueId and dimensions are int, timestamps long/int/int) ------


def attributes() -> st.SearchStrategy[Attribute]:
    return any_attributes(PVA_SCALAR_VALUES)


shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=4)
_NAN_BITS = {
    4: [0x7F800001, 0x7FC00000, 0xFFC12345],
    8: [0x7FF0000000000001, 0xFFF8DEADBEEF0001],
}


@st.composite
def arrays(draw: st.DrawFn, dtype: np.dtype[Any] | None = None) -> np.ndarray[Any, Any]:
    dt = dtype if dtype is not None else draw(st.sampled_from(SUPPORTED_DTYPES))
    elements = st.integers(0, 2 ** (8 * dt.itemsize) - 1)
    if dt.kind == "f":
        elements = st.one_of(elements, st.sampled_from(_NAN_BITS[dt.itemsize]))
    raw = draw(hnp.arrays(np.dtype(f"u{dt.itemsize}"), draw(shapes), elements=elements))
    return raw.view(dt)


@st.composite
def frames(draw: st.DrawFn, compressed: bool | None = None) -> Frame:
    if compressed is None:
        compressed = draw(st.booleans())
    codec = None
    if compressed:
        dtype = draw(st.sampled_from(SUPPORTED_DTYPES))
        shape = draw(shapes)
        array = np.frombuffer(draw(st.binary(max_size=48)), dtype=np.uint8)
        codec = Codec(draw(st.sampled_from(["lz4", "bslz4", "blosc", "jpeg", "zlib"])),
                      dtype, shape, math.prod(shape) * dtype.itemsize)
    else:
        array = draw(arrays())
        shape = array.shape
    dims = None
    if draw(st.booleans()):
        dims = tuple(Dimension(n, draw(i32), draw(i32), draw(i32), draw(st.booleans()))
                     for n in reversed(shape))
    return Frame(
        array=array,
        unique_id=draw(i32),
        timestamp=draw(epics_times),
        data_timestamp=draw(epics_times),
        attributes=draw(st.lists(attributes(), max_size=4)),
        codec=codec,
        dimensions=dims,
        descriptor=draw(text),
    )


# -- comparison helpers -------------------------------------------------------------------

def assert_same_frame(got: Frame, want: Frame, source: str = "") -> None:
    if want.codec is None:
        assert got.codec is None
        assert got.array.dtype == want.array.dtype
        assert got.array.shape == want.array.shape
        assert got.array.tobytes() == want.array.tobytes()  # bitwise, NaN payloads too
    else:
        assert got.codec == want.codec
        assert got.array.dtype == np.uint8
        assert got.array.tobytes() == want.array.tobytes()
    assert got.unique_id == want.unique_id
    assert got.timestamp == want.timestamp
    assert got.data_timestamp == want.data_timestamp
    assert got.dims() == want.dims()
    assert got.descriptor == want.descriptor
    assert got.source == source
    assert [canon_attribute(a) for a in got.attributes] == [
        canon_attribute(a) for a in want.attributes
    ]


def _pv_type_name(t: Any) -> str:
    return f"{t[0]}[]" if isinstance(t, list) else str(t)


def nt_summary(nt: Any) -> dict[str, Any]:
    """Everything an NTNDArray carries, in a form ``==`` compares exactly."""
    d = nt.toDict()
    (field, data), = d["value"][0].items() if d["value"][0] else ((None, np.zeros(0)),)
    attrs = []
    for a in d["attribute"]:
        values, types = a["value"]
        value = values.get("value") if values else None
        typ = _pv_type_name(types["value"]) if types else ""
        attrs.append((a["name"], typ, canon(value), a["descriptor"], a["source"],
                      a["sourceType"], list(a["tags"]), a["timeStamp"], a["alarm"]))
    params_values, params_types = d["codec"]["parameters"]
    return {
        "value": (field, np.asarray(data).dtype, np.asarray(data).tobytes()),
        "codec": (d["codec"]["name"], params_values,
                  {k: str(v) for k, v in params_types.items()}),
        "compressedSize": d["compressedSize"],
        "uncompressedSize": d["uncompressedSize"],
        "dimension": d["dimension"],
        "uniqueId": d["uniqueId"],
        "timeStamp": d["timeStamp"],
        "dataTimeStamp": d["dataTimeStamp"],
        "descriptor": d["descriptor"],
        "alarm": d["alarm"],
        "display": d["display"],
        "attribute": attrs,
    }


def build_nt(spec: Frame) -> Any:
    """An NTNDArray written with the plain pvapy API, the way an areaDetector IOC fills one."""
    nt = pva.NtNdArray()
    flat = spec.array.reshape(-1)
    if spec.codec is None:
        nt["value"] = {VALUE_FIELD[flat.dtype]: flat}
        nt["compressedSize"] = nt["uncompressedSize"] = flat.nbytes
        shape = spec.array.shape
    else:
        nt["value"] = {"ubyteValue": flat}
        type_name = {np.dtype(t): n for n, t in NUMPY_TYPE.items()}[spec.codec.dtype]
        nt["codec"] = pva.PvCodec(spec.codec.name, pva.PvInt(int(PVA_TYPE[type_name])))
        nt["compressedSize"] = flat.nbytes
        nt["uncompressedSize"] = spec.codec.uncompressed_size
        shape = spec.codec.shape
    dims = spec.dimensions or [Dimension(n, 0, n, 1, False) for n in reversed(shape)]
    nt["dimension"] = [pva.PvDimension(*d) for d in dims]
    nt["uniqueId"] = spec.unique_id
    nt["timeStamp"] = pva.PvTimeStamp(*spec.timestamp)
    nt["dataTimeStamp"] = pva.PvTimeStamp(*spec.data_timestamp)
    nt["descriptor"] = spec.descriptor
    nt_attrs = []
    for a in spec.attributes:
        if a.type == "":
            at = pva.NtAttribute()
            at["name"] = a.name
        elif a.type.endswith("[]"):
            base = a.type[:-2]
            value: Any = (np.array(a.value, dtype=NUMPY_TYPE[base]) if base in NUMPY_TYPE
                          else list(a.value))
            at = pva.NtAttribute(a.name, pva.PvObject({"value": [PVA_TYPE[base]]},
                                                      {"value": value}))
        else:
            value = chr(a.value) if a.type == "byte" else a.value
            at = pva.NtAttribute(a.name, pva.PvObject({"value": PVA_TYPE[a.type]},
                                                      {"value": value}))
        at["descriptor"] = a.descriptor
        at["source"] = a.source
        at["sourceType"] = a.source_type
        at["tags"] = list(a.tags)
        at["timeStamp"] = pva.PvTimeStamp(*a.timestamp)
        at["alarm"] = pva.PvAlarm(*a.alarm)
        nt_attrs.append(at)
    nt["attribute"] = nt_attrs
    return nt


# -- round trips --------------------------------------------------------------------------

@PROPERTY
@given(frame=frames())
def test_frame_to_ntndarray_to_frame_is_lossless(frame: Frame) -> None:
    nt = ntnda_from_frame(frame)
    got = frame_from_ntnda(nt, source="SIM:Pva1:Image")
    assert_same_frame(got, frame, source="SIM:Pva1:Image")


@PROPERTY
@given(spec=frames())
def test_ntndarray_to_frame_to_ntndarray_is_lossless(spec: Frame) -> None:
    nt = build_nt(spec)
    frame = frame_from_ntnda(nt)
    assert_same_frame(frame, spec)  # the converter reads what the IOC wrote
    back = ntnda_from_frame(frame)
    assert nt_summary(back) == nt_summary(nt)


@pytest.mark.parametrize("dtype", SUPPORTED_DTYPES, ids=str)
def test_every_value_type_round_trips_with_extreme_values(dtype: np.dtype[Any]) -> None:
    if dtype.kind == "f":
        info = np.finfo(dtype)
        values: list[Any] = [info.min, info.max, 0.0, -0.0, np.inf, -np.inf,
                             float(info.smallest_subnormal), 1.0, -1.0]
        a = np.array(values, dtype=dtype)
        nans = np.array(_NAN_BITS[dtype.itemsize], dtype=f"u{dtype.itemsize}").view(dtype)
        a = np.concatenate([a, nans, np.zeros(12 - len(a) - len(nans), dtype)])
    else:
        info_i = np.iinfo(dtype)
        a = np.array([info_i.min, info_i.max, 0, 1] + [info_i.max // 3] * 8, dtype=dtype)
    a = a.reshape(3, 4)
    spec = Frame(a, unique_id=2**31 - 1, timestamp=EpicsTime(1_700_000_000, 999_999_999, 7))
    nt = build_nt(spec)
    assert nt["value"][0].keys() == {VALUE_FIELD[dtype]}
    frame = frame_from_ntnda(nt)
    assert frame.array.dtype == dtype and frame.array.shape == (3, 4)
    assert frame.array.tobytes() == a.tobytes()
    back = ntnda_from_frame(frame)
    assert nt_summary(back) == nt_summary(nt)


ATTRIBUTE_SAMPLES: dict[str, Any] = {
    "boolean": True, "byte": 127, "ubyte": 255, "short": -(2**15), "ushort": 2**16 - 1,
    "int": -(2**31), "uint": 2**32 - 1, "long": -(2**63), "ulong": 2**64 - 1,
    "float": float(np.finfo(np.float32).max), "double": -1.7976931348623157e308,
    "string": "π ≠ 3, \"quoted\", tab\t",
}
ARRAY_SAMPLES: dict[str, list[Any]] = {
    "boolean": [True, False, True], "byte": [-128, 0, 127], "ubyte": [0, 255],
    "short": [-(2**15), 2**15 - 1], "ushort": [0, 2**16 - 1], "int": [-(2**31), 2**31 - 1],
    "uint": [0, 2**32 - 1], "long": [-(2**63), 2**63 - 1], "ulong": [0, 2**64 - 1],
    "float": [1.5, -0.0, float("inf")], "double": [5e-324, -0.0, float("-inf")],
    "string": ["", "a b", "ü"],
}


@pytest.mark.parametrize("typ", ATTRIBUTE_TYPES, ids=lambda t: t or "empty")
def test_every_attribute_type_round_trips(typ: str) -> None:
    if typ == "":
        value: Any = None
    elif typ.endswith("[]"):
        value = ARRAY_SAMPLES[typ[:-2]]
    else:
        value = ATTRIBUTE_SAMPLES[typ]
    attr = Attribute("Attr1", value, typ, "a description", "SIM:Src", 3, ["tag1", "tag2"],
                     EpicsTime(12, 34, 56), Alarm(2, 3, "HIHI"))
    spec = Frame(np.zeros((2, 2), np.uint8), unique_id=1, attributes=[attr])
    nt = build_nt(spec)
    frame = frame_from_ntnda(nt)
    assert [canon_attribute(a) for a in frame.attributes] == [canon_attribute(attr)]
    back = ntnda_from_frame(frame)
    assert nt_summary(back) == nt_summary(nt)
    # and Frame -> NTNDArray -> Frame
    again = frame_from_ntnda(ntnda_from_frame(spec))
    assert [canon_attribute(a) for a in again.attributes] == [canon_attribute(attr)]


def test_scalar_byte_outside_0_127_is_refused_with_a_clear_error() -> None:
    frame = Frame(np.zeros(1, np.uint8), attributes=[Attribute("b", -1, "byte")])
    with pytest.raises(FrameError, match=r"pvapy carries scalar byte 0\.\.127 only"):
        ntnda_from_frame(frame)


def test_unknown_attribute_type_is_refused() -> None:
    frame = Frame(np.zeros(1, np.uint8), attributes=[Attribute("c", 1, "complex")])
    with pytest.raises(FrameError, match="attribute 'c' has unknown type 'complex'"):
        ntnda_from_frame(frame)


@pytest.mark.parametrize("dtype", ["bool", "float16", "complex64"])
def test_value_type_ntndarray_cannot_carry_is_refused(dtype: str) -> None:
    with pytest.raises(FrameError, match="NTNDArray cannot carry dtype"):
        ntnda_from_frame(Frame(np.zeros(4, dtype=dtype)))


# -- compressed frames --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", SUPPORTED_DTYPES, ids=str)
def test_compressed_frame_keeps_codec_name_parameters_and_sizes(dtype: np.dtype[Any]) -> None:
    payload = np.frombuffer(b"\x04\x22\x4d\x18compressed-bytes", dtype=np.uint8)
    usize = 64 * 48 * dtype.itemsize
    spec = Frame(payload, unique_id=77, codec=Codec("lz4", dtype, (48, 64), usize))
    nt = build_nt(spec)
    frame = frame_from_ntnda(nt)
    assert frame.codec == Codec("lz4", dtype, (48, 64), usize)
    assert frame.shape == (48, 64) and frame.dtype == dtype
    assert frame.array.tobytes() == payload.tobytes()

    back = ntnda_from_frame(frame)
    codec = back["codec"]
    assert codec["name"] == "lz4"
    params, param_types = codec["parameters"]
    type_name = {np.dtype(t): n for n, t in NUMPY_TYPE.items()}[dtype]
    assert params == {"value": int(PVA_TYPE[type_name])}
    assert param_types == {"value": pva.INT}
    assert back["compressedSize"] == payload.nbytes
    assert back["uncompressedSize"] == usize
    assert back["value"][0].keys() == {"ubyteValue"}
    assert nt_summary(back) == nt_summary(nt)


@PROPERTY
@given(frame=frames(compressed=True))
def test_compressed_frames_round_trip(frame: Frame) -> None:
    got = frame_from_ntnda(ntnda_from_frame(frame))
    assert_same_frame(got, frame)


def test_compressed_frame_without_parameters_defaults_to_the_value_type() -> None:
    nt = pva.NtNdArray()
    nt["value"] = {"ubyteValue": np.arange(5, dtype=np.uint8)}
    nt["codec"] = {"name": "jpeg"}
    nt["dimension"] = [pva.PvDimension(8, 0, 8, 1, False), pva.PvDimension(2, 0, 2, 1, False)]
    nt["uncompressedSize"] = 16
    frame = frame_from_ntnda(nt)
    assert frame.codec == Codec("jpeg", np.dtype("uint8"), (2, 8), 16)


def test_compressed_frame_with_unknown_parameter_type_is_refused() -> None:
    nt = pva.NtNdArray()
    nt["value"] = {"ubyteValue": np.arange(5, dtype=np.uint8)}
    nt["codec"] = pva.PvCodec("lz4", pva.PvInt(int(pva.STRING)))
    nt["dimension"] = [pva.PvDimension(5, 0, 5, 1, False)]
    with pytest.raises(FrameError, match="codec parameters name unknown element type"):
        frame_from_ntnda(nt)


# -- no copy, and malformed NTNDArrays ----------------------------------------------------

@pytest.mark.parametrize("dtype", SUPPORTED_DTYPES, ids=str)
def test_frame_from_ntnda_is_a_view_of_the_pvapy_value(dtype: np.dtype[Any]) -> None:
    nt = build_nt(Frame(np.arange(24, dtype=dtype).reshape(2, 3, 4)))
    frame = frame_from_ntnda(nt)
    pv_value = nt["value"][0][VALUE_FIELD[dtype]]  # a fresh view of pvData's own buffer
    assert np.shares_memory(frame.array, pv_value)
    assert frame.array.ctypes.data == pv_value.ctypes.data
    assert frame.array.shape == (2, 3, 4)
    assert not frame.array.flags.owndata


def test_compressed_payload_is_a_view_of_the_pvapy_value() -> None:
    nt = build_nt(Frame(np.arange(10, dtype=np.uint8),
                        codec=Codec("lz4", np.dtype("uint16"), (4, 4), 32)))
    frame = frame_from_ntnda(nt)
    assert np.shares_memory(frame.array, nt["value"][0]["ubyteValue"])


def test_ntndarray_without_dimensions_becomes_a_1d_frame() -> None:
    nt = pva.NtNdArray()
    nt["value"] = {"intValue": np.arange(7, dtype=np.int32)}
    frame = frame_from_ntnda(nt, source="X")
    assert frame.array.shape == (7,) and frame.source == "X"
    assert frame.array.tolist() == list(range(7))


def test_ntndarray_without_value_is_refused() -> None:
    with pytest.raises(FrameError, match="NTNDArray has no value selected"):
        frame_from_ntnda(pva.NtNdArray())


def test_ntndarray_whose_dimensions_do_not_match_the_value_is_refused() -> None:
    nt = pva.NtNdArray()
    nt["value"] = {"ushortValue": np.arange(6, dtype=np.uint16)}
    nt["dimension"] = [pva.PvDimension(4, 0, 4, 1, False), pva.PvDimension(2, 0, 2, 1, False)]
    with pytest.raises(FrameError, match=r"dimensions \(2, 4\) do not match 6 elements"):
        frame_from_ntnda(nt)


def test_plain_dimensions_are_normalised_and_custom_ones_kept() -> None:
    plain = build_nt(Frame(np.zeros((2, 3), np.uint8)))
    assert frame_from_ntnda(plain).dimensions is None
    dims = (Dimension(3, 1, 10, 2, True), Dimension(2, 0, 2, 1, False))
    custom = build_nt(Frame(np.zeros((2, 3), np.uint8), dimensions=dims))
    assert frame_from_ntnda(custom).dimensions == dims


# pvapy copies the array's raw buffer and ignores numpy strides, so a strided view (a plugin's
# a[:, ::2] or a[::2]) must be made contiguous first, and a big-endian one native.
@pytest.mark.parametrize("view", [
    lambda a: a[:, ::2],          # strided, but reshape(-1) can stay a (strided) view
    lambda a: a[::2],             # every other row
    lambda a: a.T,                # transposed: Fortran order
    lambda a: a[1:, 1:3],         # a window
    lambda a: a[::-1],            # negative strides
    lambda a: a.astype(a.dtype.newbyteorder(">")),  # big-endian
], ids=["cols-step-2", "rows-step-2", "transposed", "window", "reversed", "big-endian"])
def test_non_contiguous_and_big_endian_arrays_keep_their_values(
    view: Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any]]
) -> None:
    a = view(np.arange(48, dtype=np.uint16).reshape(6, 8))
    got = frame_from_ntnda(ntnda_from_frame(Frame(a))).array
    assert got.shape == a.shape
    assert got.tolist() == a.tolist()


def test_frames_of_alternating_dimensions_each_keep_their_own() -> None:
    """The reader reuses the previous frame's dimensions when they are equal: never when not."""
    binned = (Dimension(4, 2, 8, 2, False), Dimension(3, 0, 3, 1, True))
    specs = [Frame(np.zeros((3, 4), np.uint8), unique_id=1),
             Frame(np.zeros((4, 3), np.uint8), unique_id=2),
             Frame(np.zeros((3, 4), np.uint8), unique_id=3, dimensions=binned),
             Frame(np.zeros((3, 4), np.uint8), unique_id=4)]
    for spec in specs * 2:
        got = frame_from_ntnda(build_nt(spec))
        assert got.array.shape == spec.array.shape and got.dimensions == spec.dimensions
