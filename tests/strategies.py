"""Hypothesis strategies and comparisons shared by the codec and NTNDArray tests."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from hypothesis import strategies as st

from pvaflow.frame import Alarm, Attribute, EpicsTime

# Kafka header values are bytes, so text must be encodable: no lone surrogates.
text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
i32 = st.integers(-(2**31), 2**31 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
epics_times = st.builds(EpicsTime, i64, i32, i32)
alarms = st.builds(Alarm, i32, i32, text)

SCALAR_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "boolean": st.booleans(),
    "byte": st.integers(-128, 127),
    "ubyte": st.integers(0, 2**8 - 1),
    "short": st.integers(-(2**15), 2**15 - 1),
    "ushort": st.integers(0, 2**16 - 1),
    "int": i32,
    "uint": st.integers(0, 2**32 - 1),
    "long": i64,
    "ulong": st.integers(0, 2**64 - 1),
    "float": st.floats(width=32),
    "double": st.floats(),
    "string": text,
}
# pvapy carries a scalar byte as a C char: 0..127 only (byte[] is fine).
PVA_SCALAR_VALUES = {**SCALAR_VALUES, "byte": st.integers(0, 127)}
ATTRIBUTE_TYPES = [*SCALAR_VALUES, *(t + "[]" for t in SCALAR_VALUES), ""]


def typed_value(
    typ: str, scalars: Mapping[str, st.SearchStrategy[Any]] = SCALAR_VALUES
) -> st.SearchStrategy[Any]:
    if typ == "":
        return st.none()
    if typ.endswith("[]"):
        return st.lists(SCALAR_VALUES[typ[:-2]], max_size=4)
    return scalars[typ]


@st.composite
def attributes(
    draw: st.DrawFn, scalars: Mapping[str, st.SearchStrategy[Any]] = SCALAR_VALUES
) -> Attribute:
    typ = draw(st.sampled_from(ATTRIBUTE_TYPES))
    return Attribute(
        name=draw(text), value=draw(typed_value(typ, scalars)), type=typ, descriptor=draw(text),
        source=draw(text), source_type=draw(i32), tags=draw(st.lists(text, max_size=3)),
        timestamp=draw(epics_times), alarm=draw(alarms),
    )


def canon(v: Any) -> Any:
    """Type-strict comparable form: True != 1, 1 != 1.0, -0.0 != 0.0, NaN == NaN."""
    if isinstance(v, np.ndarray):
        return canon(v.tolist())
    if isinstance(v, bool):
        return ("bool", v)
    if isinstance(v, int):
        return ("int", v)
    if isinstance(v, float):
        return ("nan",) if math.isnan(v) else ("float", v, math.copysign(1.0, v))
    if isinstance(v, list | tuple):
        return ("list", tuple(canon(x) for x in v))
    return (type(v).__name__, v)


def canon_attribute(a: Attribute) -> tuple[Any, ...]:
    return (a.name, a.type, canon(a.value), a.descriptor, a.source, a.source_type,
            list(a.tags), tuple(a.timestamp), tuple(a.alarm))
