"""Any Python program as a source or a sink: numpy data streams in and out of a topic.

This is pyacq's stream idea on Kafka (see docs/streams.md). A stream's data has time on axis
0: an analog or digital signal is ``(samples, channels)``, an event stream is one ``(time,
value)`` row per event, a video stream is one image per frame. Data goes through five
stages:

1. pre-filters (``OutputStream(filters=...)``), in order, on each array passed to ``send``;
2. chunking: samples accumulate along axis 0 and leave in chunks of exactly ``chunk_size``
   (the remainder on :meth:`OutputStream.flush`); without ``chunk_size`` each ``send`` is one
   chunk;
3. transmission: each chunk is one native pvaflow frame (one Kafka record) whose attributes
   carry the stream's metadata (kind, sample rate, t0, channel names, the index of the
   chunk's first sample);
4. reassembly: every reader (:class:`InputStream`) receives the chunks on its own and
   :meth:`InputStream.read` gives contiguous samples across chunk boundaries;
5. post-filters (``InputStream(filters=...)``), in order, on each received chunk.

Readers without a group each see the whole stream; readers sharing a ``group`` share its
partitions (each chunk goes to one of them).

Memory is bounded on both sides: the producer holds at most ``buffer_kbytes`` of unsent
chunks (librdkafka's ``queue.buffering.max.kbytes``; ``send`` waits for room) plus less than
one chunk of pending samples; a reader prefetches at most ``prefetch_kbytes`` (librdkafka's
``queued.max.messages.kbytes``) and :meth:`InputStream.read` keeps less than one chunk
beyond what it returns.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.lib.format import descr_to_dtype, dtype_to_descr

from .codec import decode, encode
from .errors import FrameError, KafkaFailure
from .frame import SUPPORTED_DTYPES, Attribute, EpicsTime, Frame
from .kafka.client import Kafka
from .kafka.produce import Sender
from .kafka.topics import ensure_topic

Filter = Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any]]
Kind = Literal["signal", "events", "video", "array"]
KINDS: tuple[str, ...] = ("signal", "events", "video", "array")

# The stream's metadata travels as NTNDArray attributes with these names on every chunk.
KIND, RATE, T0, CHANNELS, OFFSET, DTYPE = (
    "stream.kind", "stream.rate", "stream.t0", "stream.channels", "stream.offset",
    "stream.dtype")

#: One event: when it happened (seconds) and an integer descriptor (pyacq's event stream).
EVENT_DTYPE = np.dtype([("time", "<f8"), ("value", "<i8")])

_ATTR_TYPES = {bool: "boolean", int: "long", float: "double", str: "string"}
_WIRE_DTYPES = frozenset(SUPPORTED_DTYPES)


def attributes(**attrs: Any) -> list[Attribute]:
    """NTNDArray attributes from keyword arguments (bool, int, float, str or lists of them)."""
    out = []
    for name, value in attrs.items():
        sample = value[0] if isinstance(value, list | tuple) and value else value
        if isinstance(sample, np.generic):
            sample = sample.item()
        typ = _ATTR_TYPES.get(type(sample))
        if typ is None:
            raise TypeError(f"attribute {name!r}: unsupported type {type(sample).__name__}")
        is_list = isinstance(value, list | tuple)
        out.append(Attribute(name, list(value) if is_list else value, typ + "[]" * is_list))
    return out


def events(times: Any, values: Any) -> np.ndarray[Any, Any]:
    """An event array (``EVENT_DTYPE``: ``time`` float64 seconds, ``value`` int64)."""
    t = np.asarray(times, dtype=np.float64)
    v = np.asarray(values, dtype=np.int64)
    if t.shape != v.shape or t.ndim != 1:
        raise ValueError(f"times {t.shape} and values {v.shape} must be 1-D of one length")
    out = np.empty(len(t), dtype=EVENT_DTYPE)
    out["time"], out["value"] = t, v
    return out


def _to_wire(data: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], str | None]:
    """The array as a frame carries it, and the dtype to restore when that is not the one
    NTNDArray has (structured, bool, complex, float16: sent as their bytes, uint8)."""
    if data.dtype in _WIRE_DTYPES:
        return data, None
    flat = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return flat.reshape((*data.shape, data.dtype.itemsize)), json.dumps(
        dtype_to_descr(data.dtype))


def _from_wire(array: np.ndarray[Any, Any], descr: str | None) -> np.ndarray[Any, Any]:
    if descr is None:
        return array
    try:
        dtype = descr_to_dtype(_tuples(json.loads(descr)))
    except (ValueError, TypeError) as exc:
        raise FrameError(f"malformed {DTYPE} attribute {descr!r}: {exc}") from exc
    if array.dtype != np.uint8 or array.ndim < 1 or array.shape[-1] != dtype.itemsize:
        raise FrameError(f"a {dtype} chunk needs uint8 rows of {dtype.itemsize} bytes, "
                         f"got {array.dtype} {array.shape}")
    return np.ascontiguousarray(array).reshape(-1).view(dtype).reshape(array.shape[:-1])


def _tuples(descr: Any) -> Any:
    """JSON turned the descr's tuples into lists; numpy wants them back."""
    if isinstance(descr, list):
        return [tuple(_tuples(x) for x in item) if isinstance(item, list) else item
                for item in descr]
    return descr


@dataclass(frozen=True)
class StreamInfo:
    """A stream's metadata as the writer declared it, read from a chunk's attributes.

    ``rate`` is samples (or video frames) per second and ``t0`` the time of sample 0 (UNIX
    seconds), so sample ``i`` was taken at ``t0 + i / rate``; ``attrs`` has the other
    attributes of the chunk (what the writer passed to ``send``).
    """

    kind: str = "array"
    rate: float | None = None
    t0: float | None = None
    channels: tuple[str, ...] = ()
    attrs: dict[str, Any] = field(default_factory=dict)

    def times(self, offset: int, n: int) -> np.ndarray[Any, Any]:
        """Times of samples ``offset`` .. ``offset + n - 1`` (needs ``rate``)."""
        if not self.rate:
            raise ValueError("this stream declares no sample rate")
        return (self.t0 or 0.0) + (offset + np.arange(n, dtype=np.float64)) / self.rate

    @classmethod
    def of(cls, frame: Frame) -> StreamInfo:
        meta: dict[str, Any] = {}
        attrs: dict[str, Any] = {}
        for a in frame.attributes:
            (meta if a.name.startswith("stream.") else attrs)[a.name] = a.value
        rate, t0 = meta.get(RATE), meta.get(T0)
        return cls(kind=str(meta.get(KIND, "array")),
                   rate=None if rate is None else float(rate),
                   t0=None if t0 is None else float(t0),
                   channels=tuple(meta.get(CHANNELS) or ()), attrs=attrs)


class Chunk(NamedTuple):
    """One received chunk: its data (post-filtered), the stream index of its first sample,
    the stream's metadata and the frame it came in."""

    data: np.ndarray[Any, Any]
    offset: int
    info: StreamInfo
    frame: Frame


class OutputStream:
    """Sends a numpy stream to a topic, one frame per chunk.

    ``kind`` is ``"signal"`` (time on axis 0, any number of channels), ``"events"``
    (:data:`EVENT_DTYPE` rows or an ``(N, 2)`` float64 array of ``(time, value)``),
    ``"video"`` (one image per ``send``; ``chunk_size`` does not apply) or ``"array"`` (any
    array, time on axis 0). ``rate``, ``t0`` and ``channels`` travel with every chunk; with
    ``rate`` and no ``t0``, t0 is the wall-clock time of the first ``send``.
    """

    def __init__(
        self,
        topic: str,
        *,
        bootstrap: str | None = None,
        partitions: int = 1,
        chunk_size: int | None = None,
        filters: Sequence[Filter] = (),
        kind: Kind = "array",
        rate: float | None = None,
        t0: float | None = None,
        channels: Sequence[str] = (),
        source: str = "",
        buffer_kbytes: int | None = None,
        overrides: Any = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of samples, not {chunk_size}")
        if kind == "video" and chunk_size is not None:
            raise ValueError("a video stream sends one image per send(); drop chunk_size")
        if rate is not None and not rate > 0:
            raise ValueError(f"rate must be positive samples per second, not {rate}")
        self._kafka = Kafka(bootstrap, overrides)
        ensure_topic(topic, partitions, admin=self._kafka.admin(), strict=False)
        self.topic = topic
        extra = {} if buffer_kbytes is None else {"queue_buffering_max_kbytes": buffer_kbytes}
        conf = self._kafka.producer_config(**extra)
        # A program sending arrays waits for room as long as the cluster is there; the
        # health check ends the wait with KafkaUnavailable once it has been gone too long.
        self._stop = threading.Event()
        self._sender = Sender(self._kafka.producer(conf), stop=self._stop, on_full="fail",
                              health=self._kafka.health, resize=self._kafka.resizer(conf))
        self.kind = kind
        self.chunk_size = chunk_size
        self._filters = list(filters)
        self._pending: list[np.ndarray[Any, Any]] = []
        self._pending_len = 0
        self._pending_attrs: dict[str, Any] = {}
        self._source = source
        self._ids = itertools.count(1)
        self._rate, self._t0 = rate, t0
        self._channels = list(channels)
        self._closed = False
        self.sent = 0  # chunks (frames) handed to the producer
        self.samples = 0  # samples sent so far: the stream index of the next chunk

    def send(self, array: Any, unique_id: int | None = None, **attrs: Any) -> None:
        """Filter ``array``, add it to the stream and send every full chunk. ``attrs``
        (bool, int, float, str or lists of them) go with the chunks this call completes."""
        if self._closed:
            raise ValueError(f"stream to {self.topic} is closed")
        data = np.asarray(array)
        for f in self._filters:
            data = f(data)
        data = self._check(data)
        if self._t0 is None and self._rate is not None:
            self._t0 = time.time()
        if self.chunk_size is None:
            self._emit(data, unique_id, attrs)
            return
        if attrs:
            self._pending_attrs.update(attrs)
        n = self.chunk_size
        if not self._pending and len(data) == n:  # the common case: no copy at all
            self._emit(data, None, self._take_attrs())
            return
        self._pending.append(data)
        self._pending_len += len(data)
        if self._pending_len < n:
            # kept beyond this call: copy it, the caller may reuse its buffer
            self._pending[-1] = data.copy()
            return
        joined = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        start = 0
        while len(joined) - start >= n:
            self._emit(joined[start:start + n], None, self._take_attrs())
            start += n
        rest = joined[start:]
        # keep a copy of the remainder only: the caller may reuse its buffer
        self._pending = [rest.copy()] if len(rest) else []
        self._pending_len = len(rest)

    def flush(self, timeout: float = 30.0) -> None:
        """Send any partial chunk and wait until the broker has every frame."""
        if self._pending:
            data = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._pending, self._pending_len = [], 0
            self._emit(data, None, self._take_attrs())
        left = self._sender.producer.flush(timeout)
        if left:
            raise KafkaFailure(f"{left} frames not delivered to {self.topic} in {timeout} s")

    def close(self, timeout: float = 30.0) -> None:
        """Flush, then refuse further sends. Closing twice is harmless."""
        if self._closed:
            return
        try:
            self.flush(timeout)
        finally:
            self._closed = True
            self._stop.set()

    def __enter__(self) -> OutputStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, data: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        if self.kind == "video":
            if data.ndim not in (2, 3):
                raise ValueError(f"a video frame is (height, width[, colour]), got {data.shape}")
            return data
        if data.ndim == 0:
            raise ValueError("stream data needs time on axis 0, got a scalar")
        if self.kind == "events" and data.dtype != EVENT_DTYPE and not (
                data.ndim == 2 and data.shape[1] == 2):
            raise ValueError(f"events are EVENT_DTYPE rows or (N, 2) (time, value), got "
                             f"{data.dtype} {data.shape}")
        if self._pending and (data.shape[1:] != self._pending[0].shape[1:]
                              or data.dtype != self._pending[0].dtype):
            raise ValueError(f"samples of {data.dtype} {data.shape[1:]} cannot follow pending "
                             f"{self._pending[0].dtype} {self._pending[0].shape[1:]}")
        return data

    def _take_attrs(self) -> dict[str, Any]:
        attrs, self._pending_attrs = self._pending_attrs, {}
        return attrs

    def _meta(self, offset: int, descr: str | None) -> list[Attribute]:
        out = [Attribute(KIND, self.kind, "string"), Attribute(OFFSET, offset, "long")]
        if self._rate is not None:
            out.append(Attribute(RATE, float(self._rate), "double"))
        if self._t0 is not None:
            out.append(Attribute(T0, float(self._t0), "double"))
        if self._channels:
            out.append(Attribute(CHANNELS, self._channels, "string[]"))
        if descr is not None:
            out.append(Attribute(DTYPE, descr, "string"))
        return out

    def _emit(
        self, data: np.ndarray[Any, Any], unique_id: int | None, attrs: dict[str, Any]
    ) -> None:
        wire, descr = _to_wire(data)
        now = EpicsTime.now()
        frame = Frame(
            array=np.ascontiguousarray(wire),
            unique_id=next(self._ids) if unique_id is None else unique_id,
            timestamp=now, data_timestamp=now,
            attributes=self._meta(self.samples, descr) + attributes(**attrs),
            source=self._source,
        )
        key, value, headers = encode(frame)
        self._sender.send(self.topic, value, key, headers=headers)
        self._sender.producer.poll(0)
        self.sent += 1
        self.samples += 1 if self.kind == "video" else len(data)


class InputStream:
    """Reads a numpy stream from a topic.

    Without ``group`` a reader reads the whole stream on its own (from the first chunk kept,
    or only new ones with ``start="latest"``); readers with the same ``group`` share the
    topic's partitions, each chunk going to one of them. ``recv`` gives frames, ``recv_chunk``
    a :class:`Chunk`, ``recv_array`` the data, ``read(n)`` ``n`` contiguous samples.
    """

    def __init__(
        self,
        topic: str,
        *,
        bootstrap: str | None = None,
        group: str | None = None,
        filters: Sequence[Filter] = (),
        start: Literal["earliest", "latest"] = "earliest",
        prefetch_kbytes: int | None = None,
        overrides: Any = None,
    ) -> None:
        if start not in ("earliest", "latest"):
            raise ValueError(f"start must be 'earliest' or 'latest', not {start!r}")
        extra: dict[str, Any] = {"auto_offset_reset": start}
        if prefetch_kbytes is not None:
            extra["queued_max_messages_kbytes"] = prefetch_kbytes
        self.topic = topic
        self._consumer = Kafka(bootstrap, overrides).consumer(
            group or f"pvaflow-stream-{uuid.uuid4().hex[:8]}",
            enable_auto_commit=group is not None, enable_auto_offset_store=True, **extra)
        self._consumer.subscribe([topic])
        self._filters = list(filters)
        self._early: deque[Any] = deque()  # records polled while waiting for an assignment
        self._rest: np.ndarray[Any, Any] | None = None  # unread samples of the last chunk
        self._rest_offset = 0  # stream index of _rest[0]
        self._empty: np.ndarray[Any, Any] = np.empty((0,))
        self._started = False
        self._closed = False
        self.info = StreamInfo()
        self.position = 0  # stream index of the next sample read() returns
        self.gaps = 0  # times read() found the next chunk not following the last one

    def wait_assigned(self, timeout: float = 60.0) -> bool:
        """Wait until this reader has partitions (a group member that joins before the data
        starts then misses nothing); False on timeout.

        Every call polls at least once, also when partitions are already assigned: a member
        that stopped polling would hold up the rebalance that gives a later member its share.
        """
        deadline = time.monotonic() + timeout
        while True:
            msg = self._consumer.poll(0.2)
            if msg is not None:
                self._early.append(msg)
            if self._consumer.assignment():
                return True
            if time.monotonic() >= deadline:
                return False

    def recv(self, timeout: float = 10.0) -> Frame | None:
        """Next frame, post-filtered, or None when nothing arrives within ``timeout`` s."""
        chunk = self.recv_chunk(timeout)
        return None if chunk is None else chunk.frame

    def recv_array(self, timeout: float = 10.0) -> np.ndarray[Any, Any] | None:
        """Next chunk's data (post-filtered, its dtype restored), or None on timeout."""
        chunk = self.recv_chunk(timeout)
        return None if chunk is None else chunk.data

    def recv_chunk(self, timeout: float = 10.0) -> Chunk | None:
        """Next chunk, or None when nothing arrives within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self._early.popleft() if self._early else self._consumer.poll(
                max(min(deadline - time.monotonic(), 1.0), 0.0))
            if msg is not None:
                if msg.error():
                    raise KafkaFailure(f"reading {msg.topic()}: {msg.error()}")
                return self._chunk(decode(msg.key(), msg.value(), msg.headers()))
            if time.monotonic() >= deadline:
                return None

    def read(self, n: int, timeout: float = 10.0) -> np.ndarray[Any, Any]:
        """The next ``n`` samples of the stream, contiguous across chunks (a new array).

        Fewer come back when no chunk arrives within ``timeout`` seconds, or when the next
        chunk does not follow the samples returned (a gap: the stream restarted, or this
        reader shares the stream with a group); the next call then starts at that chunk and
        ``gaps`` counts it. ``position`` after the call is the stream index just past the
        last sample returned, so ``info.times(position - len(samples), len(samples))`` are
        their times. Not for video (read images with ``recv_array``).
        """
        if n < 0:
            raise ValueError(f"n must not be negative, got {n}")
        parts: list[np.ndarray[Any, Any]] = []
        have = 0
        deadline = time.monotonic() + timeout
        while have < n:
            if self._rest is None:
                chunk = self.recv_chunk(max(deadline - time.monotonic(), 0.0))
                if chunk is None:
                    break
                if chunk.info.kind == "video":
                    raise ValueError("read() joins samples along axis 0; read video images "
                                     "one at a time with recv_array()")
                self._rest, self._rest_offset = chunk.data, chunk.offset
                self._empty = chunk.data[:0]
            if self._rest_offset != self.position:
                if have:  # return what is contiguous; the next call starts at the gap
                    break
                if self._started:
                    self.gaps += 1
                self.position = self._rest_offset
            self._started = True
            take = self._rest[: n - have]
            parts.append(take)
            have += len(take)
            self.position += len(take)
            if len(take) < len(self._rest):
                self._rest, self._rest_offset = self._rest[len(take):], self.position
            else:
                self._rest = None
        if not parts:
            return self._empty.copy()
        return np.concatenate(parts) if len(parts) > 1 else parts[0].copy()

    def __iter__(self) -> Iterator[Frame]:
        """Frames until none arrives for 10 s."""
        while (frame := self.recv()) is not None:
            yield frame

    def chunks(self, timeout: float = 10.0) -> Iterator[Chunk]:
        """Chunks until none arrives for ``timeout`` seconds."""
        while (chunk := self.recv_chunk(timeout)) is not None:
            yield chunk

    def close(self) -> None:
        """Leave the group and free the prefetch. Closing twice is harmless."""
        if not self._closed:
            self._closed = True
            self._consumer.close()

    def __enter__(self) -> InputStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _chunk(self, frame: Frame) -> Chunk:
        info = StreamInfo.of(frame)
        self.info = info
        descr = frame.attribute(DTYPE)
        data = _from_wire(frame.image, None if descr is None else str(descr))
        for f in self._filters:
            data = f(data)
        if data is not frame.array:
            frame = frame.with_array(data) if descr is None else frame
        offset = frame.attribute(OFFSET, 0)
        return Chunk(data, int(offset), info, frame)
