"""Unit tests for the in-memory Frame model (pvaflow.frame): no servers, no Kafka."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pvaflow.frame import (
    SUPPORTED_DTYPES,
    Alarm,
    Attribute,
    Codec,
    Dimension,
    EpicsTime,
    Frame,
)

shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


def test_supported_dtypes_are_exactly_the_ntndarray_value_types() -> None:
    names = {dt.name for dt in SUPPORTED_DTYPES}
    assert names == {
        "int8", "uint8", "int16", "uint16", "int32", "uint32",
        "int64", "uint64", "float32", "float64",
    }
    assert len(SUPPORTED_DTYPES) == 10


def test_epics_time_defaults_to_zero_and_converts_to_float() -> None:
    assert EpicsTime() == (0, 0, 0)
    t = EpicsTime(10, 500_000_000, 3)
    assert t.to_float() == pytest.approx(10.5)
    assert t.user_tag == 3


def test_epics_time_now_is_current_wall_clock() -> None:
    before = time.time()
    t = EpicsTime.now()
    after = time.time()
    assert 0 <= t.nanoseconds < 1_000_000_000
    assert t.user_tag == 0
    assert before - 1e-6 <= t.to_float() <= after + 1e-6


def test_dimension_plain_describes_an_unbinned_full_axis() -> None:
    assert Dimension.plain(7) == Dimension(7, 0, 7, 1, False)
    assert Dimension(7) == Dimension(size=7, offset=0, full_size=0, binning=1, reverse=False)


def test_attribute_and_alarm_defaults() -> None:
    a = Attribute("gain", 2.5, "double")
    assert (a.descriptor, a.source, a.source_type, a.tags) == ("", "", 0, [])
    assert a.timestamp == EpicsTime() and a.alarm == Alarm(0, 0, "")
    # the tags default must not be shared between instances
    a.tags.append("x")
    assert Attribute("other", 1, "int").tags == []


@settings(max_examples=40, deadline=None)
@given(shape=shapes, dtype=st.sampled_from(SUPPORTED_DTYPES))
def test_uncompressed_frame_reports_array_shape_dtype_and_plain_dims(
    shape: tuple[int, ...], dtype: np.dtype
) -> None:
    a = np.zeros(shape, dtype=dtype)
    f = Frame(a)
    assert f.shape == shape
    assert f.dtype == dtype
    assert f.nbytes == a.nbytes
    # NTNDArray order: fastest (last numpy) axis first
    assert f.dims() == tuple(Dimension.plain(n) for n in reversed(shape))
    assert tuple(d.size for d in reversed(f.dims())) == shape


def test_frame_defaults() -> None:
    f = Frame(np.zeros(3, np.uint8))
    assert f.unique_id == 0 and f.sequence == -1
    assert f.timestamp == EpicsTime() and f.data_timestamp == EpicsTime()
    assert f.attributes == [] and f.codec is None and f.dimensions is None
    assert f.descriptor == "" and f.source == ""


def test_compressed_frame_reports_the_decompressed_image() -> None:
    payload = np.frombuffer(b"\x01\x02\x03\x04\x05", dtype=np.uint8)
    f = Frame(payload, codec=Codec("lz4", np.dtype("uint16"), (4, 6), 48))
    assert f.shape == (4, 6)
    assert f.dtype == np.uint16
    assert f.nbytes == 5  # what travels: the compressed payload
    assert f.dims() == (Dimension.plain(6), Dimension.plain(4))


def test_explicit_dimensions_are_returned_unchanged() -> None:
    dims = (Dimension(4, 2, 10, 2, True), Dimension(3, 0, 3, 1, False))
    f = Frame(np.zeros((3, 4), np.int32), dimensions=dims)
    assert f.dims() is dims


def test_attribute_lookup_returns_first_match_or_default() -> None:
    f = Frame(np.zeros(1, np.uint8), attributes=[
        Attribute("a", 1, "int"), Attribute("b", "x", "string"), Attribute("a", 2, "int"),
    ])
    assert f.attribute("a") == 1
    assert f.attribute("b") == "x"
    assert f.attribute("missing") is None
    assert f.attribute("missing", 42) == 42


def test_with_array_same_shape_keeps_metadata_and_dimensions() -> None:
    dims = (Dimension(4, 1, 8, 2, True), Dimension(3))
    attrs = [Attribute("a", 1, "int")]
    f = Frame(np.zeros((3, 4), np.uint16), unique_id=9, timestamp=EpicsTime(1, 2, 3),
              attributes=attrs, dimensions=dims, descriptor="d", source="s", sequence=5)
    new = np.ones((3, 4), np.float32)
    g = f.with_array(new)
    assert g.array is new
    assert g.dimensions == dims
    assert (g.unique_id, g.timestamp, g.descriptor, g.source, g.sequence) == (
        9, EpicsTime(1, 2, 3), "d", "s", 5)
    assert g.attributes == attrs
    assert g.dtype == np.float32
    # the original is untouched
    assert f.array.dtype == np.uint16


def test_with_array_new_shape_drops_dimensions() -> None:
    f = Frame(np.zeros((3, 4), np.uint16), dimensions=(Dimension(4, 1, 8, 2, True), Dimension(3)))
    g = f.with_array(np.zeros((4, 3), np.uint16))
    assert g.dimensions is None
    assert g.dims() == (Dimension.plain(3), Dimension.plain(4))


def test_with_array_drops_codec() -> None:
    f = Frame(np.zeros(5, np.uint8), unique_id=3,
              codec=Codec("blosc", np.dtype("uint8"), (2, 2), 4))
    g = f.with_array(np.arange(4, dtype=np.uint8).reshape(2, 2))
    assert g.codec is None
    assert g.shape == (2, 2) and g.unique_id == 3
