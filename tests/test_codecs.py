"""areaDetector codecs: byte compatibility with PvaPy's AdImageUtility (and so NDPluginCodec),
the lazy pixel API, the output-codec policy and hostile payloads."""

from __future__ import annotations

import argparse
import struct
from dataclasses import replace
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import bitshuffle
import blosc
import lz4.block
import numpy as np
import pytest
from pvaflow.ops.synthetic import diffraction_frame, write_hdf5
from pvapy.utility.adImageUtility import AdImageUtility

import pvaflow.codecs as codecs
from pvaflow.codec import decode, encode
from pvaflow.codecs import (
    decode_image,
    encode_frame,
    get_codec,
    installed_codecs,
    output_codec,
    register_codec,
    unregister_codec,
)
from pvaflow.errors import FrameError
from pvaflow.frame import SUPPORTED_DTYPES, Codec, Frame
from pvaflow.ntnda import frame_from_ntnda, ntnda_from_frame

AD_CODECS = ("blosc", "bslz4", "lz4")
# 2-D shapes: a few elements (bslz4 leftovers < 8), one block, several blocks + a partial one
SHAPES = [(3, 5), (16, 24), (96, 100)]


@pytest.fixture(autouse=True)
def _plain_pvapy(monkeypatch: pytest.MonkeyPatch) -> None:
    """AdImageUtility reads PVAPY_COMPRESSED_PAYLOAD_START once; use its defaults."""
    monkeypatch.setattr(AdImageUtility, "COMPRESSED_PAYLOAD_START", 0)
    monkeypatch.setattr(AdImageUtility, "COMPRESSED_PAYLOAD_END", 0)


def pixels(shape: tuple[int, ...], dtype: Any, seed: int = 0) -> np.ndarray[Any, Any]:
    """Compressible pixels spanning the dtype (small counts plus a few extremes)."""
    dt = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    a = rng.poisson(3.0, shape).astype(dt)
    flat = a.reshape(-1)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        flat[:2] = [info.min, info.max][: flat.size]
    else:
        flat[:3] = [-1.5e30, np.inf, -0.0][: flat.size]
    return a


def ad_decode(frame: Frame) -> np.ndarray[Any, Any]:
    """What a PvaPy plugin does with the NTNDArray pvaflow publishes for this frame."""
    nt = ntnda_from_frame(frame)
    _, image, nx, ny, _, _, field = AdImageUtility.reshapeNtNdArray(nt)
    assert field == "ubyteValue"
    assert (ny, nx) == frame.shape
    return np.asarray(image)


# -- byte compatibility ---------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [d.name for d in SUPPORTED_DTYPES])
@pytest.mark.parametrize("name", AD_CODECS)
def test_pvaflow_encode_adimageutility_decode(name: str, dtype: str, shape: Any) -> None:
    img = pixels(shape, dtype)
    frame = Frame(img, unique_id=7).recompressed(name)
    assert frame.compressed and frame.codec is not None and frame.codec.name == name
    assert frame.array.dtype == np.uint8 and frame.array.ndim == 1
    assert frame.codec.uncompressed_size == img.nbytes
    out = ad_decode(frame)
    assert out.dtype == img.dtype
    np.testing.assert_array_equal(out, img)
    # and back through pvaflow's own NTNDArray reader
    again = frame_from_ntnda(ntnda_from_frame(frame))
    np.testing.assert_array_equal(again.image, img)
    assert again.image.dtype == img.dtype


def ad_payload(name: str, img: np.ndarray[Any, Any], variant: str) -> bytes:
    """Payloads as NDPluginCodec / a detector makes them, with the libraries PvaPy uses."""
    if name == "bslz4":
        return bitshuffle.compress_lz4(img.reshape(-1), 0).tobytes()  # type: ignore[no-any-return]
    if name == "lz4":
        return lz4.block.compress(img.tobytes(), store_size=False)  # type: ignore[no-any-return]
    cname, shuffle = {"default": ("blosclz", blosc.SHUFFLE), "zstd": ("zstd", blosc.NOSHUFFLE),
                      "lz4bit": ("lz4", blosc.BITSHUFFLE)}[variant]
    return blosc.compress(img.tobytes(), typesize=img.dtype.itemsize, clevel=5,  # type: ignore[no-any-return]
                          shuffle=shuffle, cname=cname)


@pytest.mark.parametrize("dtype", [d.name for d in SUPPORTED_DTYPES])
@pytest.mark.parametrize(("name", "variant"), [
    ("bslz4", "default"), ("lz4", "default"),
    ("blosc", "default"), ("blosc", "zstd"), ("blosc", "lz4bit"),
])
def test_adimageutility_bytes_pvaflow_decode(name: str, dtype: str, variant: str) -> None:
    img = pixels((96, 100), dtype, seed=3)
    data = np.frombuffer(ad_payload(name, img, variant), np.uint8)
    nt = AdImageUtility.generateNtNdArray2D(5, data, 100, 96, img.dtype, name)
    # PvaPy itself decodes it ...
    np.testing.assert_array_equal(AdImageUtility.reshapeNtNdArray(nt)[1], img)
    # ... and so does pvaflow, lazily and once
    frame = frame_from_ntnda(nt)
    assert frame.compressed and frame._image is None
    image = frame.image
    assert image is frame.image
    assert image.shape == (96, 100) and image.dtype == img.dtype
    np.testing.assert_array_equal(image, img)
    assert not image.flags.writeable


def test_synthetic_frames_compress_like_a_detector() -> None:
    img = diffraction_frame()
    assert img.shape == (1024, 1024) and img.dtype == np.uint16
    np.testing.assert_array_equal(img, diffraction_frame())  # deterministic
    frame = Frame(img).recompressed("bslz4")
    assert 5.0 < img.nbytes / frame.nbytes < 6.0
    np.testing.assert_array_equal(ad_decode(frame), img)


@pytest.mark.parametrize("name", ["bslz4", "lz4", "blosc"])
def test_hdf5_chunks_decode(tmp_path: Path, name: str) -> None:
    """What ``pvapy-ad-sim-server -hcm`` sends: the raw HDF5 chunk, filter header included."""
    import h5py

    path = tmp_path / "f.h5"
    frames = write_hdf5(path, 2, (40, 64), codec=name, seed=1)
    with h5py.File(path) as f:
        ds = f["/entry/data/data"]
        for i in range(2):
            chunk = np.frombuffer(ds.id.read_direct_chunk((i, 0, 0))[1], np.uint8)
            frame = Frame(chunk, unique_id=i, codec=Codec(name, np.dtype("uint16"), (40, 64),
                                                          40 * 64 * 2))
            np.testing.assert_array_equal(frame.image, frames[i])


# -- the frame API and the output policy ----------------------------------------------------

class Counting:
    """A registered codec that counts its calls (a stored copy, not a real compressor)."""

    name = "counting"

    def __init__(self) -> None:
        self.decoded = 0
        self.encoded = 0

    def compress(self, pixels: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.uint8]]:
        self.encoded += 1
        return pixels.reshape(-1).view(np.uint8).copy()

    def decompress(self, payload: np.ndarray[Any, np.dtype[np.uint8]], dtype: np.dtype[Any],
                   count: int) -> np.ndarray[Any, Any]:
        self.decoded += 1
        return payload.view(dtype)[:count]


@pytest.fixture()
def counting() -> Any:
    c = Counting()
    register_codec(c)
    yield c
    unregister_codec("counting")


def test_uncompressed_image_is_the_array() -> None:
    img = pixels((4, 6), "uint16")
    frame = Frame(img)
    assert not frame.compressed
    assert frame.image is img


def test_passthrough_never_decodes(counting: Counting) -> None:
    img = pixels((8, 8), "int32")
    frame = Frame(img, unique_id=9).recompressed("counting")
    assert counting.encoded == 1
    payload = frame.array
    # policy "same" keeps the frame as received
    assert encode_frame(frame) is frame
    assert encode_frame(frame, "counting") is frame
    # the native Kafka format carries the payload bytes untouched, codec recorded
    key, value, headers = encode(frame)
    back = decode(key, value.tobytes(), headers)
    assert back.codec is not None and back.codec.name == "counting"
    assert back.array.tobytes() == payload.tobytes()
    assert encode_frame(back) is back
    assert counting.decoded == 0
    # metadata changes keep it compressed too
    assert encode_frame(replace(back, source="x")).compressed
    assert counting.decoded == 0
    # reading pixels decodes exactly once
    np.testing.assert_array_equal(back.image, img)
    np.testing.assert_array_equal(back.image, img)
    assert counting.decoded == 1


def test_output_policy(counting: Counting) -> None:
    img = pixels((16, 24), "uint16")
    frame = Frame(img, unique_id=3).recompressed("bslz4")
    rotated = np.rot90(frame.image).copy()
    out = frame.with_image(rotated)
    assert not out.compressed and out.origin_codec == "bslz4"
    assert out.image is rotated
    same = encode_frame(out)
    assert same.codec is not None and same.codec.name == "bslz4"
    assert same.codec.shape == rotated.shape and same.origin_codec is None
    np.testing.assert_array_equal(ad_decode(same), rotated)
    none = encode_frame(frame, "none")
    assert not none.compressed and none.origin_codec is None
    np.testing.assert_array_equal(none.array, img)
    lz = encode_frame(frame, "lz4")
    assert lz.codec is not None and lz.codec.name == "lz4"
    np.testing.assert_array_equal(ad_decode(lz), img)
    # an uncompressed input stays uncompressed under "same", is compressed under a name
    plain = Frame(img)
    assert encode_frame(plain) is plain
    assert encode_frame(plain.with_image(img + 1)).codec is None
    assert encode_frame(plain, "blosc").compressed
    # with_array (the older name) also remembers the codec
    assert frame.with_array(rotated).origin_codec == "bslz4"


def test_output_codec_option() -> None:
    assert output_codec("same") == "same"
    assert output_codec("none") == "none"
    assert output_codec("bslz4") == "bslz4"
    with pytest.raises(argparse.ArgumentTypeError,
                       match="choose same, none or one of blosc, bslz4, lz4"):
        output_codec("jpeg")


def test_registry_and_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"blosc", "bslz4", "lz4"} <= set(installed_codecs())
    assert get_codec("lz4") is get_codec("lz4")
    ep = EntryPoint(name="stored", value="tests.test_codecs:Stored", group=codecs.ENTRY_POINT_GROUP)
    bad = EntryPoint(name="broken", value="no_such_module_xyz:Codec",
                     group=codecs.ENTRY_POINT_GROUP)
    monkeypatch.setattr(codecs, "entry_points", lambda group: [ep, bad])
    monkeypatch.setattr(codecs, "_loaded", False)
    monkeypatch.setattr(codecs, "_codecs", {})
    monkeypatch.setattr(codecs, "_factories", {})
    assert installed_codecs() == ["blosc", "bslz4", "lz4", "stored"]
    img = pixels((5, 7), "float64")
    f = Frame(img).recompressed("stored")
    np.testing.assert_array_equal(replace(f).image, img)


class Stored(Counting):
    name = "stored"


# -- errors -----------------------------------------------------------------------------------

def compressed(name: str, payload: Any, shape: tuple[int, ...] = (16, 24),
               dtype: str = "uint16", usize: int | None = None) -> Frame:
    dt = np.dtype(dtype)
    size = int(np.prod(shape)) * dt.itemsize if usize is None else usize
    return Frame(np.frombuffer(bytes(payload), np.uint8), unique_id=42,
                 codec=Codec(name, dt, shape, size))


def test_unknown_codec_passes_through_and_names_itself() -> None:
    frame = compressed("jpeg", b"\xff\xd8\xff")
    assert encode_frame(frame) is frame
    key, value, headers = encode(frame)
    assert decode(key, value.tobytes(), headers).array.tobytes() == b"\xff\xd8\xff"
    with pytest.raises(FrameError) as err:
        frame.image  # noqa: B018
    assert err.value.reason == ("frame 42 is compressed with 'jpeg', which this pvaflow "
                                "cannot decode; installed codecs: blosc, bslz4, lz4")
    with pytest.raises(FrameError, match="'jpeg'"):
        encode_frame(frame, "none")


def good(name: str, shape: tuple[int, ...] = (16, 24), dtype: str = "uint16") -> bytes:
    return bytes(Frame(pixels(shape, dtype)).recompressed(name).array)


@pytest.mark.parametrize("name", AD_CODECS)
def test_truncated_payloads(name: str) -> None:
    data = good(name, (96, 100))
    for n in sorted({0, 1, 4, 11, 12, 15, 16, 17, len(data) // 2, len(data) - 1}):
        with pytest.raises(FrameError, match=f"frame 42 \\({name}\\): "):
            decode_image(compressed(name, data[:n], (96, 100)))


@pytest.mark.parametrize("name", AD_CODECS)
def test_wrong_sizes(name: str) -> None:
    data = good(name)
    with pytest.raises(FrameError, match="does not match shape"):
        decode_image(compressed(name, data, usize=16 * 24 * 2 + 2))
    with pytest.raises(FrameError, match="-byte limit"):
        decode_image(compressed(name, data, (1 << 20, 1 << 20), "uint64"))
    # a payload for another size: the decoder notices, it does not write past its buffer
    with pytest.raises(FrameError, match=f"\\({name}\\)"):
        decode_image(compressed(name, data, (16, 23)))
    with pytest.raises(FrameError, match=f"\\({name}\\)"):
        decode_image(compressed(name, data + b"\0\0\0\0", (16, 24)))


def test_bad_block_headers() -> None:
    data = bytearray(good("bslz4", (96, 100)))
    data[0:4] = struct.pack(">I", 0x7FFF_FFF0)  # first block claims 2 GiB
    with pytest.raises(FrameError, match="bslz4 block 0 claims"):
        decode_image(compressed("bslz4", data, (96, 100)))
    header = struct.pack(">QI", 96 * 100 * 2, 6)  # HDF5 header, block size not 8 elements
    with pytest.raises(FrameError, match="not a multiple of 8"):
        decode_image(compressed("bslz4", header + good("bslz4", (96, 100)), (96, 100)))
    header = struct.pack(">QI", 96 * 100 * 2, 16)  # 8-element blocks: not what was written
    with pytest.raises(FrameError, match="bslz4"):
        decode_image(compressed("bslz4", header + good("bslz4", (96, 100)), (96, 100)))
    b = bytearray(good("blosc"))
    b[0] = 5  # a Blosc2 chunk
    with pytest.raises(FrameError, match="not a Blosc v1 chunk"):
        decode_image(compressed("blosc", b))
    b = bytearray(good("blosc"))
    b[4:8] = struct.pack("<I", 1 << 30)
    with pytest.raises(FrameError, match="blosc chunk holds"):
        decode_image(compressed("blosc", b))
    lz = struct.pack(">QI", 16 * 24 * 2, 0) + b"\0" * 8  # HDF5 LZ4 framing, block size 0
    with pytest.raises(FrameError, match="block size is 0"):
        decode_image(compressed("lz4", lz))


@pytest.mark.parametrize("name", AD_CODECS)
def test_corrupt_payloads_raise_frame_error_only(name: str) -> None:
    """Random byte flips: either the right-shaped pixels come out or a FrameError; never
    another exception, never a crash."""
    rng = np.random.default_rng(11)
    data = good(name, (96, 100))
    for _ in range(300):
        b = bytearray(data)
        for i in rng.integers(0, len(b), rng.integers(1, 4)):
            b[i] = int(rng.integers(0, 256))
        try:
            out = decode_image(compressed(name, b, (96, 100)))
        except FrameError as exc:
            assert exc.reason.startswith(f"frame 42 ({name}): ")
        else:
            assert out.shape == (96, 100) and out.dtype == np.uint16
    for n in (1, 17, 100, 5000):
        junk = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        with pytest.raises(FrameError):
            decode_image(compressed(name, junk, (96, 100)))
