"""ESS ``ad00`` FlatBuffers format, for ESS tools (kafka-to-nexus, live data reduction).

ad00 carries the array, its shape, uniqueId, one timestamp, the source name and attributes
with name/description/source/value. It cannot carry what NTNDArray has beyond that, so a
round trip through ad00 loses: the codec (compressed frames are refused, not mangled), the
dataTimeStamp, dimension offset/binning/reverse, the descriptor, attribute PVA types (every
integer becomes int64, every float float64, a one-element array a scalar), attribute
timestamps/alarms/tags/sourceType, and string arrays. Serialising also copies the pixels
several times (flatbuffers), so ad00 is much slower than the native format for big frames.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from streaming_data_types import area_detector_ad00 as ad00

from pvaflow.codec import FrameError, Headers, encode_key
from pvaflow.frame import Attribute, EpicsTime, Frame

FILE_IDENTIFIER = b"ad00"
_TYPE_OF_DTYPE = {
    "int8": "byte", "uint8": "ubyte", "int16": "short", "uint16": "ushort", "int32": "int",
    "uint32": "uint", "int64": "long", "uint64": "ulong", "float32": "float", "float64": "double",
}


def is_ad00(value: bytes | bytearray | memoryview | None) -> bool:
    return value is not None and len(value) >= 8 and bytes(value[4:8]) == FILE_IDENTIFIER


def encode(frame: Frame) -> tuple[bytes, bytes, Headers]:
    """Key, ad00 value and a format header; the bridge adds sequence and plan headers."""
    if frame.codec is not None:
        raise FrameError(f"ad00 has no codec field: cannot carry a {frame.codec.name} frame "
                         "(use --format native)")
    attrs = [a for a in (_ad00_attribute(x) for x in frame.attributes) if a is not None]
    ts = frame.timestamp
    value = ad00.serialise_ad00(
        frame.source, int(frame.unique_id), ts.seconds * 1_000_000_000 + ts.nanoseconds,
        np.ascontiguousarray(frame.array), attrs,
    )
    return encode_key(frame.unique_id), value, [("pf.fmt", b"ad00")]


def decode(value: bytes | bytearray) -> Frame:
    """Frame from an ad00 record (what the mirror serves for an ad00 topic)."""
    try:
        arr = ad00.deserialise_ad00(bytes(value))
    except Exception as exc:  # flatbuffers raises assorted errors on bad input
        raise FrameError(f"not a valid ad00 record: {exc}") from exc
    if isinstance(arr.data, str):
        raise FrameError("ad00 string payloads are not frames")
    s, ns = divmod(int(arr.timestamp_ns), 1_000_000_000)
    return Frame(
        array=np.asarray(arr.data).reshape(tuple(int(d) for d in arr.dimensions)),
        unique_id=int(arr.unique_id),
        timestamp=EpicsTime(s, ns, 0),
        attributes=[_attribute(a) for a in arr.attributes],
        source=arr.source_name,
    )


def _ad00_attribute(a: Attribute) -> Any:
    value = a.value
    if a.type.endswith("[]"):
        if a.type == "string[]":
            return None  # ad00 has no string arrays
        arr = np.asarray(value)
        value = arr.astype(np.uint8) if arr.dtype == np.bool_ else arr
    elif isinstance(value, bool):
        value = int(value)
    elif not isinstance(value, (int, float, str)):
        return None
    return ad00.Attribute(a.name, a.descriptor, a.source, value)


def _attribute(a: Any) -> Attribute:
    data = a.data
    if isinstance(data, np.ndarray):
        typ = _TYPE_OF_DTYPE.get(data.dtype.name, "double") + "[]"
        value: Any = data.tolist()
    elif isinstance(data, str):
        typ, value = "string", data
    elif isinstance(data, float):
        typ, value = "double", data
    else:
        typ, value = "long", int(data)
    return Attribute(name=a.name, value=value, type=typ, descriptor=a.description,
                     source=a.source)
