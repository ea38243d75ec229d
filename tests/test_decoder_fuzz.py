"""Fuzzing the frame decoder: whatever bytes a record holds, ``decode`` raises nothing but
FrameError (a consumer dead-letters it and goes on) and never allocates more than the record's
own size (a declared shape of petabytes must not be believed)."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvaflow.codec import decode, encode
from pvaflow.errors import FrameError
from pvaflow.testing import make_frames

NAMES = ["pf.v", "pf.uid", "pf.dtype", "pf.shape", "pf.usize", "pf.ts", "pf.dts", "pf.codec",
         "pf.seq", "pf.src", "pf.desc", "pf.attrs", "pf.dims"]
PLAUSIBLE = {
    "pf.v": st.sampled_from([b"1", b"2", b"", b"1\x00"]),
    "pf.uid": st.integers(-(2**70), 2**70).map(lambda n: str(n).encode()),
    "pf.dtype": st.sampled_from([b"uint8", b"int16", b"float64", b"complex64", b"O", b"V8"]),
    "pf.shape": st.lists(st.integers(-2, 2**40), max_size=6).map(
        lambda s: ",".join(map(str, s)).encode()),
    "pf.usize": st.integers(-1, 2**62).map(lambda n: str(n).encode()),
    "pf.codec": st.sampled_from([b"", b"lz4", b"bslz4", b"blosc", b"jpeg", b"\xff"]),
}
# Headers a hostile or broken producer could send: deep nesting, huge numbers, huge shapes.
BOMBS = [
    ("pf.attrs", b"[" * 100_000 + b"]" * 100_000),
    ("pf.dims", b"[" * 100_000 + b"]" * 100_000),
    ("pf.attrs", b'[["a","int",' + b"9" * 100_000 + b"]]"),
    ("pf.uid", b"9" * 100_000),
    ("pf.shape", b"1000000000,1000000000,1000000000"),
    ("pf.shape", b",".join([b"2"] * 10_000)),
    ("pf.usize", b"1" + b"0" * 30),
    ("pf.dims", b"[[1e999,0,1,1,false]]"),
]


def _record(**changes: bytes | None) -> tuple[bytes, Any, list[tuple[str, bytes | None]]]:
    frame = make_frames(1, shape=(4, 3))[0]
    key, value, headers = encode(frame)
    out = [(k, v) for k, v in headers if k not in changes]
    out += [(k, v) for k, v in changes.items()]
    return key, bytes(value), out


def _decode_bounded(key: bytes | None, value: bytes | None, headers: Any) -> None:
    """decode must fail only with FrameError and allocate at most about the record's size."""
    size = len(value or b"") + sum(len(k) + len(v or b"") for k, v in headers)
    tracemalloc.start()
    try:
        decode(key, value, headers)
    except FrameError:
        pass
    finally:
        _current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    # json/int parsing of a header holds a few copies of it; nothing scales with a declared
    # shape or size.
    assert peak <= 8 * size + 256 * 1024, f"decode allocated {peak} bytes for a {size}-byte record"


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.one_of(st.none(), st.binary(max_size=10)),
    value=st.one_of(st.none(), st.binary(max_size=512)),
    headers=st.lists(st.tuples(st.sampled_from(NAMES),
                               st.one_of(st.none(), st.binary(max_size=40))), max_size=14),
)
def test_random_records_raise_only_frame_error(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]]
) -> None:
    _decode_bounded(key, value, headers)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(sorted(PLAUSIBLE)),
                       st.sampled_from(sorted(PLAUSIBLE)).flatmap(lambda n: PLAUSIBLE[n]),
                       min_size=1))
def test_plausible_but_wrong_headers_raise_only_frame_error(changes: dict[str, bytes]) -> None:
    key, value, headers = _record(**changes)
    _decode_bounded(key, value, headers)


@pytest.mark.parametrize(("name", "bomb"), BOMBS, ids=[f"{n}-{i}" for i, (n, _) in
                                                       enumerate(BOMBS)])
def test_header_bombs_are_frame_errors(name: str, bomb: bytes) -> None:
    key, value, headers = _record(**{name: bomb})
    with pytest.raises(FrameError):
        decode(key, value, headers)
    _decode_bounded(key, value, headers)
