"""NTNDArray (pvapy) <-> Frame.

The hot path reads only the fields it needs, each once: pvapy builds a Python dict for every
``nt[field]`` access, and the value union comes back as a numpy view, so nothing here copies
the pixel buffer.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pvaccess as pva

from .codec import FrameError
from .frame import Alarm, Attribute, Codec, Dimension, EpicsTime, Frame

_SCALAR_TYPES: dict[str, Any] = {
    name: getattr(pva, name.upper())
    for name in (
        "boolean", "byte", "ubyte", "short", "ushort", "int", "uint",
        "long", "ulong", "float", "double", "string",
    )
}
_TYPE_NAMES = {int(t): n for n, t in _SCALAR_TYPES.items()}
_NUMPY_OF_TYPE = {
    "byte": np.int8, "ubyte": np.uint8, "short": np.int16, "ushort": np.uint16,
    "int": np.int32, "uint": np.uint32, "long": np.int64, "ulong": np.uint64,
    "float": np.float32, "double": np.float64,
}
_FIELD_OF_DTYPE = {np.dtype(t): f"{n}Value" for n, t in _NUMPY_OF_TYPE.items()}
_DTYPE_OF_FIELD = {f: d for d, f in _FIELD_OF_DTYPE.items()}
_PVA_OF_DTYPE = {np.dtype(t): _SCALAR_TYPES[n] for n, t in _NUMPY_OF_TYPE.items()}


def frame_from_ntnda(nt: Any, source: str = "") -> Frame:
    """Frame over the NTNDArray's own buffer (a view: keep ``nt`` alive while you use it)."""
    # typed getters build no dict: several times cheaper than nt[field] per frame
    field = nt.getSelectedUnionFieldName("value")
    if not field:
        raise FrameError("NTNDArray has no value selected")
    dtype = _DTYPE_OF_FIELD.get(field)
    if dtype is None:
        raise FrameError(f"unsupported NTNDArray value field {field!r}")
    data = nt.getUnion("value").getScalarArray(field)
    dims, shape, plain = _dimensions(nt.getStructureArray("dimension"))
    shape = shape or (len(data),)
    codec = None
    codec_name = nt.getString("codec.name")
    if codec_name:
        params = nt["codec"]["parameters"][0]
        udtype = _numpy_of_pva_int(params.get("value")) if params else dtype
        codec = Codec(codec_name, udtype, shape, int(nt.getLong("uncompressedSize")))
        array = np.asarray(data).view(np.uint8)
    else:
        if math.prod(shape) != len(data):
            raise FrameError(f"NTNDArray dimensions {shape} do not match {len(data)} elements")
        array = np.asarray(data).reshape(shape)
    raw_attrs = nt["attribute"]
    return Frame(
        array=array,
        unique_id=nt.getInt("uniqueId"),
        timestamp=_epics_time(nt.getStructure("timeStamp")),
        data_timestamp=_epics_time(nt.getStructure("dataTimeStamp")),
        attributes=[_attribute(a) for a in raw_attrs] if raw_attrs else [],
        codec=codec,
        dimensions=None if plain else dims,
        descriptor=nt.getString("descriptor"),
        source=source,
    )


_Dims = tuple[tuple[Dimension, ...], tuple[int, ...], bool]
# the last dimension list seen and what it gave: a stream's frames share their dimensions,
# so most frames skip building them (one tuple, replaced whole: safe across threads)
_last_dims: tuple[list[dict[str, Any]], _Dims] = ([], ((), (), True))


def _dimensions(raw: list[dict[str, Any]]) -> _Dims:
    global _last_dims
    last_raw, last = _last_dims
    if raw == last_raw:
        return last
    dims = tuple(
        Dimension(d["size"], d["offset"], d["fullSize"], d["binning"], d["reverse"])
        for d in raw
    )
    shape = tuple(d.size for d in reversed(dims))
    plain = all(d == Dimension.plain(d.size) for d in dims)
    _last_dims = (raw, (dims, shape, plain))
    return dims, shape, plain


def ntnda_from_frame(frame: Frame) -> Any:
    """A new pvaccess.NtNdArray carrying the frame (pvapy copies the array in)."""
    nt = pva.NtNdArray()
    # pvapy copies the raw buffer and ignores strides and byte order: hand it C-ordered,
    # native-endian data (no copy when it already is)
    array = np.ascontiguousarray(frame.array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("="))
    flat = array.reshape(-1)
    if frame.codec is None:
        field = _FIELD_OF_DTYPE.get(flat.dtype.newbyteorder("="))
        if field is None:
            raise FrameError(f"NTNDArray cannot carry dtype {flat.dtype}")
        nt["value"] = {field: flat}
        nt["compressedSize"] = flat.nbytes
        nt["uncompressedSize"] = flat.nbytes
    else:
        nt["value"] = {"ubyteValue": flat.view(np.uint8)}
        nt["codec"] = pva.PvCodec(
            frame.codec.name, pva.PvInt(int(_PVA_OF_DTYPE[np.dtype(frame.codec.dtype)]))
        )
        nt["compressedSize"] = flat.nbytes
        nt["uncompressedSize"] = frame.codec.uncompressed_size
    nt["uniqueId"] = int(frame.unique_id)
    nt["dimension"] = [
        pva.PvDimension(d.size, d.offset, d.full_size, d.binning, d.reverse) for d in frame.dims()
    ]
    nt["timeStamp"] = pva.PvTimeStamp(*frame.timestamp)
    nt["dataTimeStamp"] = pva.PvTimeStamp(*frame.data_timestamp)
    if frame.descriptor:
        nt["descriptor"] = frame.descriptor
    if frame.attributes:
        nt["attribute"] = [_nt_attribute(a) for a in frame.attributes]
    return nt


def _numpy_of_pva_int(code: Any) -> np.dtype[Any]:
    name = _TYPE_NAMES.get(int(code)) if code is not None else None
    if name not in _NUMPY_OF_TYPE:
        raise FrameError(f"codec parameters name unknown element type {code!r}")
    return np.dtype(_NUMPY_OF_TYPE[name])


def _epics_time(t: dict[str, int]) -> EpicsTime:
    return EpicsTime(t["secondsPastEpoch"], t["nanoseconds"], t["userTag"])


def _attribute(a: dict[str, Any]) -> Attribute:
    values, types = a["value"]
    if not types:
        typ, value = "", None
    else:
        pv_type = types["value"]
        is_array = isinstance(pv_type, list)
        name = _TYPE_NAMES[int(pv_type[0] if is_array else pv_type)]
        value = values["value"]
        if is_array:
            items = np.asarray(value).tolist()
            value = [bool(v) for v in items] if name == "boolean" else list(items)
        elif name == "byte":
            # pvapy hands a scalar byte over as a one-character str
            value = ord(value) - 256 if ord(value) > 127 else ord(value)
        typ = name + ("[]" if is_array else "")
    ts, al = a["timeStamp"], a["alarm"]
    return Attribute(
        name=a["name"], value=value, type=typ, descriptor=a["descriptor"], source=a["source"],
        source_type=a["sourceType"], tags=list(a["tags"]), timestamp=_epics_time(ts),
        alarm=Alarm(al["severity"], al["status"], al["message"]),
    )


def _nt_attribute(a: Attribute) -> Any:
    if not a.type:
        at = pva.NtAttribute()
        at["name"] = a.name
    else:
        base = a.type.removesuffix("[]")
        pv_type = _SCALAR_TYPES.get(base)
        if pv_type is None:
            raise FrameError(f"attribute {a.name!r} has unknown type {a.type!r}")
        value: Any = a.value
        if a.type.endswith("[]"):
            dt = _NUMPY_OF_TYPE.get(base)
            value = np.asarray(value, dtype=dt) if dt else [
                bool(v) if base == "boolean" else str(v) for v in value
            ]
            pv = pva.PvObject({"value": [pv_type]}, {"value": value})
        else:
            if base == "byte":
                if not 0 <= int(value) <= 127:
                    # pvapy maps scalar byte to a C char and cannot read back values < 0
                    raise FrameError(f"attribute {a.name!r}: pvapy carries scalar byte 0..127 only")
                value = chr(int(value))
            pv = pva.PvObject({"value": pv_type}, {"value": value})
        at = pva.NtAttribute(a.name, pv)
    at["descriptor"] = a.descriptor
    at["source"] = a.source
    at["sourceType"] = a.source_type
    at["tags"] = list(a.tags)
    at["timeStamp"] = pva.PvTimeStamp(*a.timestamp)
    at["alarm"] = pva.PvAlarm(*a.alarm)
    return at


def value_pv(a: Attribute) -> Any:
    """An attribute as a metadata channel delivers it: ``{value, timeStamp}`` (what a PvaPy
    plugin reads from ``metadataQueueMap``). Scalars and arrays of scalars only."""
    if not a.type:
        raise FrameError(f"attribute {a.name!r} has no value")
    base = a.type.removesuffix("[]")
    pv_type = _SCALAR_TYPES.get(base)
    if pv_type is None:
        raise FrameError(f"attribute {a.name!r} has unknown type {a.type!r}")
    is_array = a.type.endswith("[]")
    return pva.PvObject(
        {"value": [pv_type] if is_array else pv_type, "timeStamp": pva.PvTimeStamp()},
        {"value": list(a.value) if is_array else a.value,
         "timeStamp": pva.PvTimeStamp(*a.timestamp)})
