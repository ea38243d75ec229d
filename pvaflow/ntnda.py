"""NTNDArray (pvapy) <-> Frame.

The hot path reads only the fields it needs, each once: pvapy builds a Python dict for every
``nt[field]`` access, and the value union comes back as a numpy view, so nothing here copies
the pixel buffer.
"""

from __future__ import annotations

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
    union = nt["value"][0]
    if not union:
        raise FrameError("NTNDArray has no value selected")
    (field, data), = union.items()
    dtype = _DTYPE_OF_FIELD.get(field)
    if dtype is None:
        raise FrameError(f"unsupported NTNDArray value field {field!r}")
    dim_dicts = nt["dimension"]
    dims = tuple(
        Dimension(d["size"], d["offset"], d["fullSize"], d["binning"], d["reverse"])
        for d in dim_dicts
    )
    shape = tuple(d.size for d in reversed(dims)) or (len(data),)
    codec_field = nt["codec"]
    codec = None
    if codec_field["name"]:
        params = codec_field["parameters"][0]
        udtype = _numpy_of_pva_int(params.get("value")) if params else dtype
        codec = Codec(codec_field["name"], udtype, shape, int(nt["uncompressedSize"]))
        array = np.asarray(data).view(np.uint8)
    else:
        if int(np.prod(shape)) != len(data):
            raise FrameError(f"NTNDArray dimensions {shape} do not match {len(data)} elements")
        array = np.asarray(data).reshape(shape)
    plain = all(d == Dimension.plain(d.size) for d in dims)
    return Frame(
        array=array,
        unique_id=int(nt["uniqueId"]),
        timestamp=_epics_time(nt["timeStamp"]),
        data_timestamp=_epics_time(nt["dataTimeStamp"]),
        attributes=[_attribute(a) for a in nt["attribute"]],
        codec=codec,
        dimensions=None if plain else dims,
        descriptor=nt["descriptor"],
        source=source,
    )


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
