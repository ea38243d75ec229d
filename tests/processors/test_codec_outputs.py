"""Compressed frames through the consumer's plugins and output policy (no Kafka: the record
the runner produces is built by ``output_record``, the same function its hot path calls)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np
import pytest
import tifffile
from pvaflow.processors.plugins.file_writer import FileWriter
from pvaflow.processors.plugins.passthrough import Passthrough
from pvaflow.processors.plugins.rotate import Rotate
from pvaflow.processors.runner import output_record
from pvapy.utility.adImageUtility import AdImageUtility

from pvaflow.codec import decode
from pvaflow.codecs import Bslz4, compress_image, recompress, register_codec, unregister_codec
from pvaflow.frame import EpicsTime, Frame
from pvaflow.hdf5 import H5Writer, bslz4_chunk
from pvaflow.ntnda import ntnda_from_frame
from pvaflow.plugin import PvaPyAdapter, instantiate
from pvaflow.testing import run_plugin

HERE = Path(__file__).parent
KEY = bytes(range(32))


class Counting(Bslz4):
    """bslz4 that counts its calls: proves what a stage never decodes."""

    def __init__(self, name: str = "counting") -> None:
        super().__init__()
        self.name = name
        self.decoded = 0
        self.encoded = 0

    def decompress(self, payload: Any, dtype: np.dtype[Any], count: int) -> Any:
        self.decoded += 1
        return super().decompress(payload, dtype, count)

    def compress(self, pixels: Any) -> Any:
        self.encoded += 1
        return super().compress(pixels)


@pytest.fixture
def counting() -> Iterator[Counting]:
    c = Counting()
    register_codec(c)
    try:
        yield c
    finally:
        unregister_codec(c.name)


@pytest.fixture
def counting_bslz4() -> Iterator[Counting]:
    """Replaces the built-in bslz4 for one test."""
    c = Counting("bslz4")
    register_codec(c)
    try:
        yield c
    finally:
        register_codec(Bslz4)


def image(seed: int = 0, shape: tuple[int, int] = (48, 40)) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4000, size=shape, dtype=np.uint16)


def compressed(pixels: np.ndarray[Any, Any], name: str, uid: int = 7) -> Frame:
    """A frame as it arrives from Kafka: decoded from the record of a compressed frame."""
    f = recompress(Frame(pixels, unique_id=uid, timestamp=EpicsTime(1700000000, 5)), name)
    _, rec = output_record(f)
    return decode(*rec[:2], rec[2])


def payload(frame: Frame) -> bytes:
    return np.ascontiguousarray(frame.array).tobytes()


# -- passthrough: never decodes -----------------------------------------------------------

@pytest.mark.parametrize("policy", ["same", "counting"])
def test_passthrough_neither_decodes_nor_touches_the_payload(counting: Counting,
                                                              policy: str) -> None:
    f = compressed(image(), "counting")
    counting.decoded = counting.encoded = 0
    [out] = [Passthrough().process(f)]
    _frame, (_key, value, headers) = output_record(out, policy)
    assert value.tobytes() == payload(f)
    assert dict(headers)["pf.codec"] == b"counting"
    assert counting.decoded == 0 and counting.encoded == 0


def test_a_pvapy_passthrough_gets_the_compressed_ntndarray_and_returns_it_untouched(
        counting: Counting) -> None:
    class Echo:  # PvaPy's interface, nothing else
        def __init__(self, config: dict[str, Any]) -> None:
            self.seen: list[Any] = []

        def process(self, nt: Any) -> Any:
            self.seen.append((nt["codec"]["name"], nt["compressedSize"], nt["uncompressedSize"]))
            return nt

        def getStats(self) -> dict[str, Any]:
            return {}

        def resetStats(self) -> None:
            pass

    f = compressed(image(), "counting")
    counting.decoded = 0
    plugin = instantiate(Echo)
    assert isinstance(plugin, PvaPyAdapter)
    [out] = plugin.process(f)
    _, (_key, value, _headers) = output_record(out)
    assert value.tobytes() == payload(f) and counting.decoded == 0
    assert plugin.inner.seen == [("counting", len(payload(f)), image().nbytes)]


# -- the policy on outputs with new pixels -------------------------------------------------

@pytest.mark.parametrize("source", ["bslz4", "lz4", "blosc"])
@pytest.mark.parametrize("policy", ["same", "none", "lz4", "bslz4"])
def test_rotate_on_compressed_input_and_the_output_codec_policy(source: str,
                                                                policy: str) -> None:
    pixels = image(3)
    f = compressed(pixels, source)
    out = Rotate({"k": 1}).process(f)
    assert out is not None
    _frame, (key, value, headers) = output_record(out, policy)
    back = decode(key, value.tobytes(), headers)
    want = {"same": source, "none": None}.get(policy, policy)
    assert (back.codec.name if back.codec else None) == want
    np.testing.assert_array_equal(back.image, np.rot90(pixels))
    assert back.image.dtype == np.uint16 and back.unique_id == f.unique_id
    assert back.timestamp == f.timestamp


@pytest.mark.parametrize("policy", ["none", "lz4"])
def test_a_passthrough_frame_is_decoded_only_when_the_policy_changes_its_codec(
        counting: Counting, policy: str) -> None:
    pixels = image(4)
    f = compressed(pixels, "counting")
    counting.decoded = 0
    _frame, (key, value, headers) = output_record(Passthrough().process(f), policy)
    assert counting.decoded == 1
    back = decode(key, value.tobytes(), headers)
    assert (back.codec.name if back.codec else "none") == policy
    np.testing.assert_array_equal(back.image, pixels)


def test_uncompressed_input_same_stays_uncompressed_and_a_codec_name_compresses() -> None:
    pixels = image(5)
    out = Rotate().process(Frame(pixels, unique_id=3))
    assert out is not None
    same, _ = output_record(out)
    assert same.codec is None
    np.testing.assert_array_equal(same.image, pixels.T)
    lz4, _ = output_record(out, "lz4")
    assert lz4.codec is not None and lz4.codec.name == "lz4"
    np.testing.assert_array_equal(lz4.image, pixels.T)


def test_an_output_the_policy_cannot_encode_raises_frame_error() -> None:
    from pvaflow.errors import FrameError

    bad = recompress(Frame(image(), unique_id=1), "lz4")
    bad.array = bad.array[:-3]  # truncated payload: the policy "none" must decode it
    with pytest.raises(FrameError, match="frame 1"):
        output_record(bad, "none")


# -- encrypt / decrypt carry the compressed payload ----------------------------------------

def test_encryption_seals_the_compressed_payload_and_decrypts_it_exactly(
        monkeypatch: pytest.MonkeyPatch, counting: Counting) -> None:
    monkeypatch.setenv("PVAFLOW_FRAME_KEY", KEY.hex())
    f = compressed(image(6), "counting")
    counting.decoded = 0
    [e] = run_plugin("encrypt", [f]).outputs
    assert e.codec is not None and e.codec.name == "aes-gcm+counting"
    sealed, _ = output_record(e)  # same: carried as is, never decoded
    [d] = run_plugin("decrypt", [sealed]).outputs
    out, (_k, value, _h) = output_record(d)
    assert value.tobytes() == payload(f) and out.codec == f.codec
    assert counting.decoded == 0


# -- PvaPy plugins: the NTNDArray as the IOC sent it ---------------------------------------

@pytest.mark.parametrize("name", ["bslz4", "lz4", "blosc"])
def test_ntndarray_of_a_compressed_frame_is_what_adimageutility_decompresses(name: str) -> None:
    pixels = image(7)
    f = compressed(pixels, name)
    nt = ntnda_from_frame(f)
    assert nt["codec"]["name"] == name
    assert nt["codec.parameters"][0]["value"] == AdImageUtility.PVA_DATA_TYPE_MAP[
        np.dtype("uint16")]
    assert nt["compressedSize"] == len(payload(f))
    assert nt["uncompressedSize"] == pixels.nbytes
    assert np.asarray(nt["value"][0]["ubyteValue"]).tobytes() == payload(f)
    uid, img, nx, ny, _nz, _mode, _key = AdImageUtility.reshapeNtNdArray(nt)
    assert (uid, nx, ny) == (7, 40, 48)
    np.testing.assert_array_equal(img, pixels)


def test_the_pvapy_rotate_example_on_compressed_frames_gives_compressed_outputs() -> None:
    from pvaflow.plugin import load_processor

    plugin = load_processor(file=str(HERE / "pvapy_rotate_plugin.py"),
                            class_name="HpcAdImageProcessor")
    pixels = image(8, (32, 32))  # square: replaceNtNdArrayImage2D keeps the codec fields
    f = compressed(pixels, "bslz4")
    plugin.start()
    [out] = plugin.process(f)
    assert out.codec is None and out.origin_codec == "bslz4"
    np.testing.assert_array_equal(out.image, pixels.T)
    frame, _ = output_record(out)
    assert frame.codec is not None and frame.codec.name == "bslz4"
    np.testing.assert_array_equal(frame.image, pixels.T)
    wide = image(9, (16, 24))
    [out] = plugin.process(compressed(wide, "lz4"))
    np.testing.assert_array_equal(out.image, wide.T)


# -- the file writer ----------------------------------------------------------------------

def test_file_writer_hdf5_writes_bslz4_chunks_without_decoding(
        tmp_path: Path, counting_bslz4: Counting) -> None:
    frames = [compressed(image(i), "bslz4", uid=i + 1) for i in range(4)]
    counting_bslz4.decoded = counting_bslz4.encoded = 0
    w = FileWriter({"format": "hdf5", "directory": str(tmp_path), "file": "run.h5"})
    w.start()
    outs = [w.process(f) for f in frames]
    w.stop()
    assert counting_bslz4.decoded == 0 and counting_bslz4.encoded == 0
    assert [payload(o) for o in outs if o is not None] == [payload(f) for f in frames]
    with h5py.File(tmp_path / "run.h5") as h:
        ds = h["entry/data/data"]
        assert h["entry"].attrs["NX_class"] == "NXentry"
        assert h["entry/data"].attrs["NX_class"] == "NXdata"
        assert h["entry/data"].attrs["signal"] == "data"
        assert ds.chunks == (1, 48, 40) and ds.dtype == np.uint16
        assert ds.id.get_create_plist().get_filter(0)[0] == hdf5plugin.BSHUF_ID
        for i, f in enumerate(frames):
            mask, chunk = ds.id.read_direct_chunk((i, 0, 0))
            assert mask == 0 and chunk == bslz4_chunk(f)
            assert chunk[12:] == payload(f)  # the frame's own bytes behind the filter header
            np.testing.assert_array_equal(ds[i], image(i))
        assert list(h["entry/data/uniqueId"]) == [1, 2, 3, 4]
        assert list(h["entry/data/timestamp"]) == [1700000000.000000005] * 4


def test_hdf5_file_keeps_each_unique_id_once_across_reopening(tmp_path: Path) -> None:
    path = tmp_path / "x.h5"
    w = H5Writer(path)
    for uid in (1, 2, 3):
        w.write(compressed(image(uid), "bslz4", uid=uid))
    w.close()
    w = H5Writer(path)  # a restarted stage continues the file and writes 2 and 3 again
    for uid in (2, 3, 4):
        w.write(compressed(image(uid), "bslz4", uid=uid))
    w.write(Frame(image(5), unique_id=5))  # uncompressed: compressed once on write
    w.close()
    with h5py.File(path) as h:
        assert list(h["entry/data/uniqueId"]) == [1, 2, 3, 4, 5]
        for row, uid in enumerate([1, 2, 3, 4, 5]):
            np.testing.assert_array_equal(h["entry/data/data"][row], image(uid))


def test_hdf5_without_compression_and_a_shape_change(tmp_path: Path) -> None:
    from pvaflow.errors import FrameError

    w = H5Writer(tmp_path / "plain.h5", compression="none")
    w.write(compressed(image(1), "bslz4", uid=1))
    w.write(compressed(image(2), "lz4", uid=2))
    with pytest.raises(FrameError, match="holds uint16"):
        w.write(Frame(image(3, (8, 8)), unique_id=3))
    w.close()
    with h5py.File(tmp_path / "plain.h5") as h:
        ds = h["entry/data/data"]
        assert ds.id.get_create_plist().get_nfilters() == 0
        np.testing.assert_array_equal(ds[1], image(2))


@pytest.mark.parametrize("fmt", ["npy", "tiff"])
def test_file_writer_one_file_per_frame_stores_pixels_of_compressed_frames(
        tmp_path: Path, fmt: str) -> None:
    f = compressed(image(11), "blosc", uid=5)
    FileWriter({"format": fmt, "directory": str(tmp_path)}).process(f)
    path = tmp_path / f"frame_000005.{fmt}"
    data = np.load(path) if fmt == "npy" else tifffile.imread(path)
    np.testing.assert_array_equal(data, image(11))


def test_bslz4_chunk_header_matches_the_hdf5_filter(tmp_path: Path) -> None:
    """What hdf5plugin's own filter writes for the same pixels has the same framing."""
    pixels = image(12, (16, 10))  # 160 elements: blocks and a raw tail
    with h5py.File(tmp_path / "ref.h5", "w") as h:
        ds = h.create_dataset("d", data=pixels[None], chunks=(1, 16, 10),
                              **hdf5plugin.Bitshuffle(cname="lz4"))
        _, ref = ds.id.read_direct_chunk((0, 0, 0))
    payload_, _codec = compress_image(pixels, "bslz4")
    mine = bslz4_chunk(recompress(Frame(pixels), "bslz4"))
    assert mine[:12] == ref[:12] and mine[12:] == payload_.tobytes()
