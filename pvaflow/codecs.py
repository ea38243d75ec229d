"""areaDetector codecs: decompress a compressed frame's pixels, compress new ones.

Facilities compress at the source: areaDetector's NDPluginCodec and Dectris-style detectors
publish NTNDArrays whose ``codec.name`` is ``blosc``, ``lz4`` or ``bslz4``, whose value is the
compressed bytes (``ubyteValue``), whose ``codec.parameters`` holds the element type of the
uncompressed image and whose ``uncompressedSize`` its size in bytes. pvaflow keeps such a frame
compressed end to end (the Kafka record carries the same bytes and the codec name) and only
decodes when a stage asks for ``frame.image``.

The payloads are byte-compatible with NDPluginCodec and with the decompressors of PvaPy's
``AdImageUtility`` (which calls the same libraries):

* ``blosc``: one Blosc (v1 format) chunk; self-describing, any compressor/shuffle inside.
  Encoded with LZ4 + bit shuffle, level 5, all cores.
* ``lz4``: one raw LZ4 block (no size prefix; the size is ``uncompressedSize``). Decoding also
  accepts the HDF5 LZ4 filter's framing (8-byte big-endian total size, 4-byte block size,
  then size-prefixed blocks), which is what ``pvapy-ad-sim-server -hcm`` streams from an
  LZ4-filtered file.
* ``bslz4``: bitshuffle + LZ4 as ``bshuf_compress_lz4(..., block_size=0)`` writes it
  (size-prefixed blocks, no header). Decoding also accepts the 12-byte header of the HDF5
  bitshuffle filter and of Dectris streams (8-byte big-endian total size, 4-byte block size
  in bytes), which is what ``pvapy-ad-sim-server -hcm`` streams from an HDF5 file.

Every decoder checks the declared size against the shape and ``MAX_FRAME_BYTES`` before it
allocates, walks the payload's structure before a C library reads it, and turns every failure
into a ``FrameError`` with a reason.

More codecs plug in through the entry point group ``pvaflow.codecs``: the entry point names a
class (or instance) with a ``name`` and the two methods of ``FrameCodec``.
"""

from __future__ import annotations

import argparse
import logging
import math
import struct
import threading
from collections.abc import Callable
from dataclasses import replace
from importlib.metadata import entry_points
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np

from .errors import FrameError
from .frame import SUPPORTED_DTYPES, Codec, Frame

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "pvaflow.codecs"
# The largest uncompressed frame a decoder will allocate. A corrupt or hostile uncompressedSize
# must not make a stage allocate gigabytes; real detector frames are far below this.
MAX_FRAME_BYTES = 1 << 31
# The output-codec policy words besides codec names.
SAME, NONE = "same", "none"

Pixels = np.ndarray[Any, Any]
Payload = np.ndarray[Any, np.dtype[np.uint8]]


@runtime_checkable
class FrameCodec(Protocol):
    """One codec. ``compress`` gets C-contiguous little-endian pixels of a supported dtype and
    returns the payload (uint8, 1-D). ``decompress`` gets the payload and returns ``count``
    elements of ``dtype`` (1-D); it may raise ``FrameError`` (or any exception, which the
    registry turns into one) and must not allocate more than ``count * dtype.itemsize``."""

    name: str

    def compress(self, pixels: Pixels) -> Payload: ...

    def decompress(self, payload: Payload, dtype: np.dtype[Any], count: int) -> Pixels: ...


# -- helpers shared by the built-in codecs -------------------------------------------------

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def _lz4_bound(n: int) -> int:
    """LZ4_compressBound: the most an LZ4 block of ``n`` input bytes can take."""
    return n + n // 255 + 16


def _as_payload(data: Any) -> Payload:
    return np.frombuffer(data, dtype=np.uint8)


def _buf(array: np.ndarray[Any, Any]) -> memoryview:
    """A numpy array as the buffer ``struct`` and ``memoryview`` read (numpy's stubs do not
    say it is one)."""
    return memoryview(cast(Any, array))


class Lz4:
    """``lz4``: one raw LZ4 block (NDPluginCodec), or HDF5 LZ4-filter framing on decode."""

    name = "lz4"

    def __init__(self) -> None:
        import lz4.block

        self._block = lz4.block

    def compress(self, pixels: Pixels) -> Payload:
        return _as_payload(self._block.compress(_buf(pixels).cast("B"), store_size=False))

    def decompress(self, payload: Payload, dtype: np.dtype[Any], count: int) -> Pixels:
        nbytes = count * dtype.itemsize
        if nbytes == 0:
            return np.empty(0, dtype)
        if len(payload) >= 16 and _U64.unpack_from(_buf(payload), 0)[0] == nbytes:
            return np.frombuffer(self._h5(payload, nbytes), dtype)
        if len(payload) > _lz4_bound(nbytes):
            raise FrameError(f"{len(payload)} bytes is more than an LZ4 block of {nbytes} "
                             f"bytes can take")
        return np.frombuffer(self._block_of(payload, nbytes), dtype)

    def _block_of(self, data: Any, nbytes: int) -> bytes:
        try:
            out: bytes = self._block.decompress(data, uncompressed_size=nbytes)
        except Exception as exc:  # lz4.block.LZ4BlockError and friends
            raise FrameError(f"corrupt LZ4 block: {exc}") from exc
        if len(out) != nbytes:
            raise FrameError(f"LZ4 block holds {len(out)} bytes, expected {nbytes}")
        return out

    def _h5(self, payload: Payload, nbytes: int) -> bytes:
        """HDF5 LZ4 filter (32004): total size, block size, then size-prefixed blocks; a block
        whose compressed size equals its size is stored raw."""
        block = _U32.unpack_from(_buf(payload), 8)[0]
        if block == 0:
            raise FrameError("LZ4 (HDF5 framing) block size is 0")
        if -(-nbytes // block) > len(payload):
            raise FrameError(f"LZ4 (HDF5 framing) block size {block} cannot fill {nbytes} "
                             f"bytes from {len(payload)}")
        view = _buf(payload)
        parts: list[bytes | memoryview] = []
        pos, done = 12, 0
        while done < nbytes:
            n = min(block, nbytes - done)
            if pos + 4 > len(payload):
                raise FrameError(f"LZ4 (HDF5 framing) payload truncated at byte {pos}")
            csize = _U32.unpack_from(view, pos)[0]
            pos += 4
            if csize > _lz4_bound(n) or pos + csize > len(payload):
                raise FrameError(f"LZ4 (HDF5 framing) block of {csize} bytes at byte {pos} "
                                 f"does not fit the {len(payload)}-byte payload")
            chunk = view[pos:pos + csize]
            parts.append(chunk if csize == n else self._block_of(chunk, n))
            pos += csize
            done += n
        if pos != len(payload):
            raise FrameError(f"LZ4 (HDF5 framing) payload has {len(payload) - pos} bytes "
                             f"after its last block")
        return parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else b"".join(parts)


class Bslz4:
    """``bslz4``: bitshuffle + LZ4 blocks (``bshuf_compress_lz4``), optionally behind the
    HDF5/Dectris 12-byte header on decode."""

    name = "bslz4"
    TARGET_BLOCK_BYTES = 8192  # bitshuffle's BSHUF_TARGET_BLOCK_SIZE_B
    MAX_BLOCKS = 1 << 22  # a header asking for more blocks than this is not a detector frame

    def __init__(self) -> None:
        import bitshuffle

        self._bs = bitshuffle

    def compress(self, pixels: Pixels) -> Payload:
        out: Payload = self._bs.compress_lz4(pixels.reshape(-1), 0)
        return out

    @classmethod
    def default_block(cls, itemsize: int) -> int:
        """bitshuffle's default block size in elements (``bshuf_default_block_size``)."""
        return max(128, (cls.TARGET_BLOCK_BYTES // itemsize) // 8 * 8)

    def decompress(self, payload: Payload, dtype: np.dtype[Any], count: int) -> Pixels:
        itemsize = dtype.itemsize
        nbytes = count * itemsize
        block = 0
        if len(payload) >= 12 and _U64.unpack_from(_buf(payload), 0)[0] == nbytes:
            block_bytes = _U32.unpack_from(_buf(payload), 8)[0]
            if block_bytes == 0 or block_bytes % (8 * itemsize):
                raise FrameError(f"bslz4 header block size {block_bytes} bytes is not a "
                                 f"multiple of 8 {dtype} elements")
            block = block_bytes // itemsize
            payload = payload[12:]
        self._check_blocks(payload, itemsize, count, block or self.default_block(itemsize))
        if count == 0:
            return np.empty(0, dtype)
        try:
            out: Pixels = self._bs.decompress_lz4(payload, (count,), dtype, block)
        except Exception as exc:
            raise FrameError(f"corrupt bslz4 payload: {exc}") from exc
        return out

    def _check_blocks(self, payload: Payload, itemsize: int, count: int, block: int) -> None:
        """Walk the size-prefixed blocks the way the decoder will, so the C library never
        reads past the payload: full blocks, a last block of a multiple of 8 elements, then
        the remaining (< 8) elements stored raw."""
        full, rest = divmod(count, block)
        last = rest - rest % 8
        nblocks = full + (1 if last else 0)
        if nblocks > self.MAX_BLOCKS:
            raise FrameError(f"bslz4 block size {block} makes {nblocks} blocks")
        tail = (rest % 8) * itemsize
        size = len(payload)
        view = _buf(payload)
        unpack = _U32.unpack_from
        pos = 0
        bound = _lz4_bound(block * itemsize)
        for i in range(nblocks):
            if pos + 4 > size:
                raise FrameError(f"bslz4 payload truncated: block {i} of {nblocks} starts at "
                                 f"byte {pos} of {size}")
            csize = unpack(view, pos)[0]
            pos += 4 + csize
            if csize > bound or pos > size:
                raise FrameError(f"bslz4 block {i} claims {csize} bytes, which does not fit "
                                 f"the {size}-byte payload")
        if pos + tail != size:
            raise FrameError(f"bslz4 payload is {size} bytes but its blocks end at byte "
                             f"{pos + tail}")


class Blosc:
    """``blosc``: one Blosc v1 chunk (what NDPluginCodec's blosc_compress_ctx writes)."""

    name = "blosc"
    HEADER = 16

    def __init__(self, cname: str = "lz4", clevel: int = 5, shuffle: str = "bit") -> None:
        import blosc

        self._blosc = blosc
        self.cname = cname
        self.clevel = clevel
        self.shuffle = {"none": blosc.NOSHUFFLE, "byte": blosc.SHUFFLE,
                        "bit": blosc.BITSHUFFLE}[shuffle]

    def compress(self, pixels: Pixels) -> Payload:
        if pixels.nbytes > self._blosc.MAX_BUFFERSIZE:
            raise FrameError(f"a {pixels.nbytes}-byte frame is larger than one Blosc chunk")
        out = self._blosc.compress_ptr(
            pixels.ctypes.data, pixels.size, pixels.dtype.itemsize, clevel=self.clevel,
            shuffle=self.shuffle, cname=self.cname)
        return _as_payload(out)

    def decompress(self, payload: Payload, dtype: np.dtype[Any], count: int) -> Pixels:
        nbytes = count * dtype.itemsize
        if len(payload) < self.HEADER:
            raise FrameError(f"blosc payload of {len(payload)} bytes is shorter than its "
                             f"{self.HEADER}-byte header")
        version = int(payload[0])
        # Blosc v1 chunks (format 1 and 2); c-blosc 1.x, which NDPluginCodec and PvaPy use,
        # reads nothing newer
        if version not in (1, 2):
            raise FrameError(f"blosc chunk format {version} is not a Blosc v1 chunk")
        declared, _blocksize, cbytes = struct.unpack_from("<III", _buf(payload), 4)
        if declared != nbytes:
            raise FrameError(f"blosc chunk holds {declared} bytes, expected {nbytes}")
        if cbytes != len(payload):
            raise FrameError(f"blosc chunk says it is {cbytes} bytes, payload is "
                             f"{len(payload)}")
        out = np.empty(count, dtype)
        if nbytes == 0:
            return out
        try:
            written = self._blosc.decompress_ptr(_buf(payload), out.ctypes.data)
        except Exception as exc:
            raise FrameError(f"corrupt blosc chunk: {exc}") from exc
        if written != nbytes:
            raise FrameError(f"blosc chunk decompressed to {written} bytes, expected {nbytes}")
        return out


# -- the registry ---------------------------------------------------------------------------

_BUILTIN: dict[str, Callable[[], FrameCodec]] = {"blosc": Blosc, "bslz4": Bslz4, "lz4": Lz4}
_codecs: dict[str, FrameCodec] = {}
_factories: dict[str, Callable[[], FrameCodec]] = {}
_lock = threading.Lock()
_loaded = False


def register_codec(codec: FrameCodec | Callable[[], FrameCodec], name: str | None = None) -> None:
    """Register a codec (an instance, or a class/factory made on first use) under its name;
    replaces a codec of the same name."""
    with _lock:
        _load_entry_points()
        if not isinstance(codec, type) and isinstance(codec, FrameCodec):
            _codecs[name or codec.name] = codec
            _factories.pop(name or codec.name, None)
        else:
            key = name or getattr(codec, "name", None)
            if not isinstance(key, str):
                raise TypeError("register_codec needs a name for a factory without .name")
            _factories[key] = codec
            _codecs.pop(key, None)


def unregister_codec(name: str) -> None:
    with _lock:
        _codecs.pop(name, None)
        _factories.pop(name, None)


def _load_entry_points() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    _factories.update(_BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:
            log.warning("codec entry point %s (%s) cannot be imported: %s", ep.name, ep.value, exc)
            continue
        if not isinstance(obj, type) and isinstance(obj, FrameCodec):
            _codecs[ep.name] = obj
        else:
            _factories[ep.name] = obj


def installed_codecs() -> list[str]:
    """Names of every codec this pvaflow can encode and decode."""
    with _lock:
        _load_entry_points()
        return sorted({*_codecs, *_factories})


def get_codec(name: str) -> FrameCodec:
    """The codec called ``name``; ``FrameError`` when none is installed or its library is
    missing."""
    with _lock:
        _load_entry_points()
        codec = _codecs.get(name)
        if codec is not None:
            return codec
        factory = _factories.get(name)
        if factory is None:
            raise FrameError(f"no codec {name!r} is installed; installed codecs: "
                             f"{', '.join(sorted({*_codecs, *_factories}))}")
        try:
            codec = factory()
        except ImportError as exc:
            raise FrameError(f"codec {name!r} needs a library that is not installed: "
                             f"{exc}") from exc
        _codecs[name] = codec
        return codec


# -- frames -----------------------------------------------------------------------------------

def _declared(frame: Frame, codec: Codec) -> int:
    """Element count of the compressed frame's image, after the sanity checks that must come
    before any allocation."""
    dtype = np.dtype(codec.dtype)
    if dtype not in SUPPORTED_DTYPES:
        raise FrameError(f"frame {frame.unique_id}: codec parameters name unsupported element "
                         f"type {dtype}")
    if any(n < 0 for n in codec.shape):
        raise FrameError(f"frame {frame.unique_id}: negative dimension in {codec.shape}")
    count = math.prod(codec.shape)
    nbytes = count * dtype.itemsize  # Python ints: cannot wrap
    if codec.uncompressed_size != nbytes:
        raise FrameError(f"frame {frame.unique_id}: uncompressed size {codec.uncompressed_size}"
                         f" does not match shape {codec.shape} of {dtype}")
    if nbytes > MAX_FRAME_BYTES:
        raise FrameError(f"frame {frame.unique_id}: uncompressed size {nbytes} is above the "
                         f"{MAX_FRAME_BYTES}-byte limit")
    return count


def decode_image(frame: Frame) -> Pixels:
    """The frame's pixels (shape and dtype as declared). An uncompressed frame's array is
    returned as is; a compressed one is decoded into a new read-only array. Use
    ``frame.image``, which caches this."""
    codec = frame.codec
    if codec is None:
        return frame.array
    try:
        impl = get_codec(codec.name)
    except FrameError as exc:
        if codec.name in installed_codecs():  # installed, but its library is missing
            raise FrameError(f"frame {frame.unique_id}: {exc.reason}") from None
        raise FrameError(
            f"frame {frame.unique_id} is compressed with {codec.name!r}, which this pvaflow "
            f"cannot decode; installed codecs: {', '.join(installed_codecs())}") from None
    count = _declared(frame, codec)
    dtype = np.dtype(codec.dtype)
    payload = frame.array
    if payload.dtype != np.uint8 or payload.ndim != 1 or not payload.flags.c_contiguous:
        payload = np.ascontiguousarray(payload).reshape(-1).view(np.uint8)
    try:
        flat = impl.decompress(payload, dtype, count)
    except FrameError as exc:
        raise FrameError(f"frame {frame.unique_id} ({codec.name}): {exc.reason}") from None
    except Exception as exc:  # a plugged-in codec's own error
        raise FrameError(f"frame {frame.unique_id} ({codec.name}): {exc}") from exc
    if flat.dtype != dtype or flat.size != count:
        raise FrameError(f"frame {frame.unique_id} ({codec.name}): decoded {flat.size} "
                         f"{flat.dtype} elements, expected {count} {dtype}")
    image = flat.reshape(codec.shape)
    image.flags.writeable = False
    return image


def compress_image(pixels: Pixels, name: str) -> tuple[Payload, Codec]:
    """Compress ``pixels`` with codec ``name``: the payload and the ``Codec`` describing it."""
    impl = get_codec(name)
    array = np.asarray(pixels)
    dtype = array.dtype.newbyteorder("=") if array.dtype.byteorder == ">" else array.dtype
    if dtype.byteorder not in ("=", "|", "<"):
        dtype = dtype.newbyteorder("<")
    if np.dtype(dtype) not in SUPPORTED_DTYPES:
        raise FrameError(f"codec {name!r}: NTNDArray cannot carry dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=dtype)
    try:
        payload = impl.compress(array)
    except FrameError:
        raise
    except Exception as exc:
        raise FrameError(f"codec {name!r} failed to compress {array.dtype}{array.shape}: "
                         f"{exc}") from exc
    payload = np.ascontiguousarray(payload).reshape(-1).view(np.uint8)
    return payload, Codec(name, np.dtype(dtype), tuple(array.shape), int(array.nbytes))


def recompress(frame: Frame, name: str) -> Frame:
    """The frame with its pixels compressed by codec ``name`` (``"none"``: uncompressed).
    A frame already in that form is returned as is: its bytes are not touched."""
    if name == NONE:
        if frame.codec is None:
            return frame
        return replace(frame, array=frame.image, codec=None, origin_codec=None)
    if frame.codec is not None and frame.codec.name == name:
        return frame
    payload, codec = compress_image(frame.image, name)
    return replace(frame, array=payload, codec=codec, origin_codec=None)


def encode_frame(frame: Frame, codec: str = SAME) -> Frame:
    """Apply a stage's output-codec policy (``--output-codec same|none|<name>``).

    ``same`` (the default): a frame whose pixels were never replaced keeps its payload as
    received (compressed or not: a passthrough never decodes); a frame made with
    ``with_image``/``with_array`` from a compressed one is compressed again with that codec.
    ``none``: uncompressed. ``<name>``: compressed with that codec (a frame already in it
    keeps its bytes)."""
    if codec == SAME:
        if frame.codec is not None or frame.origin_codec is None:
            return frame
        return recompress(frame, frame.origin_codec)
    return recompress(frame, codec)


def output_codec(value: str) -> str:
    """argparse ``type=`` for ``--output-codec``: ``same``, ``none`` or an installed codec."""
    if value in (SAME, NONE):
        return value
    names = installed_codecs()
    if value not in names:
        raise argparse.ArgumentTypeError(
            f"{value!r}: choose same, none or one of {', '.join(names)}")
    return value
