"""The in-memory frame: one NTNDArray update (or any numpy chunk) as plain Python data.

Plugins and the codec share this type, so it stays a small dataclass with no Kafka or PVA
imports: a plugin author can build one in a test without a broker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

# NTNDArray's value union offers exactly these element types.
SUPPORTED_DTYPES: tuple[np.dtype[Any], ...] = tuple(
    np.dtype(t)
    for t in (
        "int8", "uint8", "int16", "uint16", "int32", "uint32",
        "int64", "uint64", "float32", "float64",
    )
)


class EpicsTime(NamedTuple):
    """EPICS timeStamp_t: kept as integers so a round trip is exact."""

    seconds: int = 0
    nanoseconds: int = 0
    user_tag: int = 0

    @classmethod
    def now(cls) -> EpicsTime:
        ns = time.time_ns()
        return cls(ns // 1_000_000_000, ns % 1_000_000_000, 0)

    def to_float(self) -> float:
        return self.seconds + self.nanoseconds * 1e-9


class Dimension(NamedTuple):
    """One NTNDArray dimension; ``size`` is the only one numpy needs, the rest is AD metadata."""

    size: int
    offset: int = 0
    full_size: int = 0
    binning: int = 1
    reverse: bool = False

    @classmethod
    def plain(cls, size: int) -> Dimension:
        return cls(size, 0, size, 1, False)


class Alarm(NamedTuple):
    severity: int = 0
    status: int = 0
    message: str = ""


@dataclass
class Attribute:
    """An NTAttribute. ``type`` is the PVA scalar type name of ``value`` (``"int"``,
    ``"ulong"``, ``"string"``, ``"double[]"`` ...) so the exact wire type survives a round trip."""

    name: str
    value: Any
    type: str
    descriptor: str = ""
    source: str = ""
    source_type: int = 0
    tags: list[str] = field(default_factory=list)
    timestamp: EpicsTime = EpicsTime()
    alarm: Alarm = Alarm()


@dataclass
class Codec:
    """Codec of a compressed frame, as NTNDArray's ``codec`` field records it. The frame's
    ``array`` then holds the compressed bytes (uint8, 1-D); these fields describe the image
    (``dtype`` is NTNDArray's ``codec.parameters``, ``uncompressed_size`` its
    ``uncompressedSize``). ``pvaflow.codecs`` decodes and encodes the payload."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    uncompressed_size: int


@dataclass
class Frame:
    """One frame.

    ``array`` is the payload as carried: for an uncompressed frame the pixels, C-ordered with
    NTNDArray's dimension order reversed (numpy's slowest axis first); for a compressed frame
    (``compressed``, ``codec`` set) the compressed bytes, uint8 1-D. ``image`` is always the
    pixels: the array itself when uncompressed, else decoded once on first use and cached.
    Code that looks at pixels reads ``image``; code that moves frames along reads nothing and
    so never decodes.

    New pixels go in with ``with_image(pixels)``: the result is uncompressed and remembers the
    codec it came from (``origin_codec``) so that a stage's output policy
    (``pvaflow.codecs.encode_frame``, ``--output-codec same``) can compress it again.
    """

    array: np.ndarray[Any, Any]
    unique_id: int = 0
    timestamp: EpicsTime = EpicsTime()
    data_timestamp: EpicsTime = EpicsTime()
    attributes: list[Attribute] = field(default_factory=list)
    codec: Codec | None = None
    dimensions: tuple[Dimension, ...] | None = None
    descriptor: str = ""
    source: str = ""
    sequence: int = -1
    # codec of the frame this one's pixels were derived from (set by with_image); not carried
    origin_codec: str | None = field(default=None, repr=False, compare=False)
    _image: np.ndarray[Any, Any] | None = field(
        default=None, init=False, repr=False, compare=False)

    @property
    def compressed(self) -> bool:
        """Whether ``array`` holds compressed bytes (see ``codec``) rather than pixels."""
        return self.codec is not None

    @property
    def image(self) -> np.ndarray[Any, Any]:
        """The pixels: an array of ``dtype`` and ``shape``. For an uncompressed frame this is
        ``array`` itself (no copy); a compressed frame is decoded on first access, once, into
        a read-only array (copy it to modify it). Raises ``FrameError`` when the codec is not
        installed or the payload is corrupt."""
        if self.codec is None:
            return self.array
        image = self._image
        if image is None:
            from .codecs import decode_image

            image = self._image = decode_image(self)
        return image

    @property
    def shape(self) -> tuple[int, ...]:
        return self.codec.shape if self.codec else tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.codec.dtype if self.codec else self.array.dtype

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)

    def dims(self) -> tuple[Dimension, ...]:
        """NTNDArray dimensions (fastest axis first), defaulting to plain ones from the shape."""
        if self.dimensions is not None:
            return self.dimensions
        return tuple(Dimension.plain(n) for n in reversed(self.shape))

    def attribute(self, name: str, default: Any = None) -> Any:
        for a in self.attributes:
            if a.name == name:
                return a.value
        return default

    def with_image(self, pixels: np.ndarray[Any, Any]) -> Frame:
        """A copy of the metadata around new pixels: what most plugins return. The result is
        uncompressed; ``origin_codec`` keeps this frame's codec so the stage's output policy
        can compress it again (``pvaflow.codecs.encode_frame``)."""
        dims = self.dimensions
        if dims is not None and tuple(d.size for d in reversed(dims)) != pixels.shape:
            dims = None  # binning/cropping changed the image: the old AD metadata is wrong
        origin = self.codec.name if self.codec is not None else self.origin_codec
        return replace(self, array=pixels, codec=None, dimensions=dims, origin_codec=origin)

    def with_array(self, array: np.ndarray[Any, Any]) -> Frame:
        """Same as ``with_image`` (the older name)."""
        return self.with_image(array)

    def recompressed(self, codec: str) -> Frame:
        """This frame compressed with ``codec`` (``"none"``: uncompressed). A frame already in
        that form is returned as is, its bytes untouched."""
        from .codecs import recompress

        return recompress(self, codec)
