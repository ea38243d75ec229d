"""Built-in plugins, run in-process through pvaflow.testing (real codec, no Kafka)."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from pvaflow.processors.plugins.crypto import CryptoKeyError, Decrypt, Encrypt, generate_key

from pvaflow.codec import decode, encode
from pvaflow.errors import FrameError
from pvaflow.frame import Codec, Frame
from pvaflow.testing import make_frames, roundtrip, run_plugin

KEY = bytes(range(32))


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> bytes:
    monkeypatch.setenv("PVAFLOW_FRAME_KEY", KEY.hex())
    return KEY


def test_rotate_swaps_axes_like_the_seed_example() -> None:
    frames = make_frames(3, (4, 6), "uint16")
    r = run_plugin("rotate", frames)
    assert not r.errors and r.unique_ids == [1, 2, 3]
    for f, out in zip(frames, r.outputs, strict=True):
        np.testing.assert_array_equal(out.array, f.array.T)
    assert r.stats["nProcessed"] == 3


def test_rotate_quarter_turns_and_dead_letters_corrupt_compressed_frames() -> None:
    f = make_frames(1, (2, 3))[0]
    [out] = run_plugin("rotate", [f], config={"k": 1}).outputs
    np.testing.assert_array_equal(out.array, np.rot90(f.array))
    z = Frame(np.zeros(5, np.uint8), unique_id=9, codec=Codec("lz4", np.dtype("u2"), (2, 2), 8))
    [(uid, exc)] = run_plugin("rotate", [z]).errors
    assert uid == 9 and isinstance(exc, FrameError) and "lz4" in str(exc)


@pytest.mark.parametrize("dtype", ["int8", "uint16", "int32", "uint64", "float32", "float64"])
def test_encrypt_decrypt_is_bit_identical(key_env: bytes, dtype: str) -> None:
    frames = make_frames(4, (16, 8), dtype)
    enc = run_plugin("encrypt", frames)
    assert not enc.errors
    for f, e in zip(frames, enc.outputs, strict=True):
        assert e.codec is not None and e.codec.name == "aes-gcm"
        assert e.shape == f.shape and e.dtype == f.dtype
        assert f.array.tobytes() not in e.array.tobytes()
    dec = run_plugin("decrypt", enc.outputs)
    assert not dec.errors
    for f, d in zip(frames, dec.outputs, strict=True):
        assert d.codec is None and d.array.dtype == f.array.dtype
        assert d.array.tobytes() == f.array.tobytes() and d.unique_id == f.unique_id
        assert d.attributes == f.attributes and d.timestamp == f.timestamp


def test_encrypting_a_compressed_frame_keeps_its_codec(key_env: bytes) -> None:
    payload = np.frombuffer(b"compressed-bytes", dtype=np.uint8)
    f = Frame(payload, unique_id=4, codec=Codec("blosc", np.dtype("u2"), (4, 4), 32))
    [e] = run_plugin("encrypt", [f]).outputs
    assert e.codec is not None and e.codec.name == "aes-gcm+blosc"
    [d] = run_plugin("decrypt", [e]).outputs
    assert d.codec == f.codec and d.array.tobytes() == payload.tobytes()


def _tamper(frame: Frame, *, byte: int | None = None, uid: int | None = None) -> Frame:
    key, value, headers = encode(frame)
    raw = bytearray(value.tobytes())
    if byte is not None:
        raw[byte] ^= 0x01
    f = decode(key, bytes(raw), headers)
    if uid is not None:
        f.unique_id = uid
    return f


@pytest.mark.parametrize("how", [{"byte": 20}, {"byte": -1}, {"byte": 3}, {"uid": 999}])
def test_tampered_frame_fails_authentication(key_env: bytes, how: dict) -> None:
    [e] = run_plugin("encrypt", make_frames(1, (8, 8))).outputs
    [(_uid, exc)] = run_plugin("decrypt", [_tamper(e, **how)]).errors
    assert "failed authentication" in str(exc)


def test_wrong_key_fails_authentication(key_env: bytes, tmp_path: Path) -> None:
    [e] = run_plugin("encrypt", make_frames(1, (8, 8))).outputs
    other = tmp_path / "other.key"
    generate_key(other)
    assert other.stat().st_mode & 0o077 == 0  # key files are private
    [(_, exc)] = run_plugin("decrypt", [e], config={"key_file": str(other)}).errors
    assert "failed authentication" in str(exc)


def test_key_sources_and_key_never_leaks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    keyfile = tmp_path / "k"
    keyfile.write_bytes(KEY)  # raw bytes
    monkeypatch.setenv("MY_KEY", base64.b64encode(KEY).decode())  # base64 in the environment
    f = make_frames(1, (4, 4))[0]
    [e] = run_plugin("encrypt", [f], config={"key_file": str(keyfile)}).outputs
    dec = run_plugin("decrypt", [e], config={"key_env": "MY_KEY"})
    assert dec.outputs[0].array.tobytes() == f.array.tobytes()
    p = Encrypt({"key_env": "MY_KEY"})
    texts = [str(p.config), str(p.get_stats()), repr(p.__dict__), caplog.text]
    for secret in (KEY.hex(), base64.b64encode(KEY).decode()):
        assert not any(secret in t for t in texts)
    monkeypatch.setenv("BAD", "c2hvcnQ=")
    with pytest.raises(CryptoKeyError) as info:
        Decrypt({"key_env": "BAD"})
    assert "c2hvcnQ" not in str(info.value)
    monkeypatch.delenv("PVAFLOW_FRAME_KEY", raising=False)
    with pytest.raises(CryptoKeyError, match="no key"):
        Encrypt({})


def test_file_writer_hdf5(tmp_path: Path) -> None:
    frames = make_frames(5, (6, 7), "uint16")
    r = run_plugin("file-writer", frames, config={"format": "hdf5", "directory": str(tmp_path),
                                                  "file": "out.h5"})
    assert not r.errors and r.unique_ids == [1, 2, 3, 4, 5]  # frames are passed on
    with h5py.File(tmp_path / "out.h5") as h:
        data, uids = h["entry/data/data"][...], h["entry/data/uniqueId"][...]
    assert data.shape == (5, 6, 7) and list(uids) == [1, 2, 3, 4, 5]
    for f, d in zip(frames, data, strict=True):
        np.testing.assert_array_equal(d, f.array)


def test_file_writer_refuses_a_shape_change_in_one_hdf5_file(tmp_path: Path) -> None:
    frames = make_frames(1, (4, 4)) + make_frames(1, (5, 5), first_id=2)
    r = run_plugin("file-writer", frames, config={"directory": str(tmp_path)})
    assert [uid for uid, _ in r.errors] == [2]


@pytest.mark.parametrize("fmt", ["npy", "tiff"])
def test_file_writer_one_file_per_frame(tmp_path: Path, fmt: str) -> None:
    frames = make_frames(3, (5, 4), "float32")
    r = run_plugin("file-writer", frames, config={"format": fmt, "directory": str(tmp_path),
                                                  "passthrough": False})
    assert r.outputs == [] and r.stats["nWritten"] == 3
    for f in frames:
        path = tmp_path / f"frame_{f.unique_id:06d}.{fmt}"
        data = np.load(path) if fmt == "npy" else tifffile.imread(path)
        np.testing.assert_array_equal(data, f.array)


def test_testing_harness_gives_read_only_views_like_production() -> None:
    from pvaflow.processors import Processor

    class InPlace(Processor):
        def process(self, frame: Frame) -> Frame:
            frame.array[0] = 0
            return frame

    [(uid, exc)] = run_plugin(InPlace(), make_frames(1, (2, 2))).errors
    assert uid == 1 and isinstance(exc, ValueError)
    f = make_frames(1, (3,), "int64")[0]
    assert roundtrip(f).array.tobytes() == f.array.tobytes()
