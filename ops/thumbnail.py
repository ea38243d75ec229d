"""Thumbnails of the latest frame of a topic, for the monitor's status page.

:class:`Thumbnails` reads the newest record of each partition of a topic (a plain consumer
assigned at ``high watermark - 1``; it joins no group and commits nothing), keeps the newest of
them, decodes it (:func:`pvaflow.codec.decode`, ``frame.image`` for compressed frames), scales it
down (block means, at most ``max_side`` pixels a side), stretches its contrast (1st to 99th
percentile) and encodes it as an 8-bit PNG (:func:`png`, zlib and struct only).

A topic is read at most once per ``interval`` seconds however often the page asks; in between
the cached thumbnail is served. Reading Kafka blocks, so the monitor calls :meth:`Thumbnails.get`
(which runs :meth:`Thumbnails.latest` in its own single worker thread) from its event loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from pvaflow.codec import decode
from pvaflow.errors import FrameError
from pvaflow.kafka.client import Kafka

log = logging.getLogger(__name__)

MAX_SIDE = 256
INTERVAL = 1.0
READ_TIMEOUT = 3.0


@dataclass(frozen=True)
class Thumbnail:
    """One encoded thumbnail and where its frame came from."""

    topic: str
    png: bytes
    unique_id: int
    shape: tuple[int, ...]
    partition: int
    offset: int
    read_at: float  # time.time() when it was read


# -- pixels -> PNG (pure) -------------------------------------------------------------------

def as_picture(image: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """A 2-D (grey) or ``(h, w, 3)`` (RGB) view of a frame's pixels: colour planes last,
    a 1-D array as one row, other extra dimensions reduced to their first plane."""
    a = np.asarray(image)
    if a.ndim == 1:
        return a.reshape(1, -1)
    if a.ndim == 2:
        return a
    if a.ndim == 3 and a.shape[-1] == 3:
        return a
    if a.ndim == 3 and a.shape[0] == 3:  # planes first (NDArray RGB3)
        return np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[1] == 3:  # RGB2: rows of interleaved planes
        return np.moveaxis(a, 1, -1)
    while a.ndim > 2:
        a = a[0]
    return a


def scale_down(picture: np.ndarray[Any, Any], max_side: int = MAX_SIDE) -> np.ndarray[Any, Any]:
    """Mean over ``f x f`` blocks (float32), ``f`` the smallest factor that brings both sides
    to at most ``max_side``; a picture already small enough is only converted."""
    a = np.asarray(picture, dtype=np.float32)
    h, w = a.shape[:2]
    f = max(1, math.ceil(max(h, w) / max_side))
    if f == 1:
        return a
    h2, w2 = max(1, h // f), max(1, w // f)
    fy, fx = min(f, h), min(f, w)
    a = a[:h2 * fy, :w2 * fx]
    return a.reshape(h2, fy, w2, fx, *a.shape[2:]).mean(axis=(1, 3))


def stretch(picture: np.ndarray[Any, Any], low: float = 1.0, high: float = 99.0
            ) -> np.ndarray[Any, Any]:
    """8-bit contrast stretch: the ``low`` percentile to 0, the ``high`` one to 255."""
    a = np.nan_to_num(np.asarray(picture, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(v) for v in np.percentile(a, [low, high]))
    if hi <= lo:
        hi = lo + 1.0
    out: np.ndarray[Any, Any] = np.clip((a - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    return out


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png(pixels: np.ndarray[Any, Any]) -> bytes:
    """An 8-bit greyscale (2-D) or RGB (``h, w, 3``) PNG of ``uint8`` pixels."""
    a = np.ascontiguousarray(pixels, dtype=np.uint8)
    if a.ndim == 2:
        colour = 0
    elif a.ndim == 3 and a.shape[2] == 3:
        colour = 2
    else:
        raise ValueError(f"a PNG needs (h, w) or (h, w, 3) pixels, not {a.shape}")
    h, w = a.shape[:2]
    rows = np.concatenate([np.zeros((h, 1), np.uint8), a.reshape(h, -1)], axis=1)  # filter 0
    return (b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + _chunk(b"IEND", b""))


def thumbnail_png(image: np.ndarray[Any, Any], max_side: int = MAX_SIDE) -> bytes:
    """A frame's pixels as a small contrast-stretched PNG."""
    return png(stretch(scale_down(as_picture(image), max_side)))


# -- Kafka -> thumbnail ---------------------------------------------------------------------

class Thumbnails:
    """Cached thumbnails of the newest frame of each of ``topics`` (see the module doc)."""

    def __init__(self, kafka: Kafka, topics: Sequence[str], *, interval: float = INTERVAL,
                 max_side: int = MAX_SIDE, read_timeout: float = READ_TIMEOUT) -> None:
        self.topics = tuple(dict.fromkeys(topics))
        self._kafka = kafka
        self._interval = interval
        self._max_side = max_side
        self._read_timeout = read_timeout
        self._cache: dict[str, Thumbnail] = {}
        self._tried: dict[str, float] = {}  # monotonic time of the last read, per topic
        self._lock = threading.Lock()
        self._consumer: Consumer | None = None
        # One worker: the consumer is used by one thread only, and a slow cluster holds up
        # thumbnails, never the event loop or its default executor.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="thumbnails")

    async def get(self, topic: str) -> Thumbnail | None:
        """:meth:`latest` off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.latest, topic)

    def latest(self, topic: str) -> Thumbnail | None:
        """The thumbnail of the newest frame of ``topic`` (``None`` before the first frame),
        read from Kafka at most once per interval."""
        if topic not in self.topics:
            raise KeyError(topic)
        with self._lock:
            now = time.monotonic()
            if now - self._tried.get(topic, -math.inf) >= self._interval:
                self._tried[topic] = now
                try:
                    fresh = self._read(topic)
                except (KafkaException, FrameError, ValueError) as exc:
                    log.warning("thumbnail of %s: %s", topic, exc)
                    fresh = None
                if fresh is not None:
                    self._cache[topic] = fresh
            return self._cache.get(topic)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None

    def _client(self) -> Consumer:
        if self._consumer is None:
            self._consumer = self._kafka.consumer(
                f"pvaflow-monitor-thumbnails-{uuid.uuid4().hex[:8]}",
                enable_auto_commit=False, enable_auto_offset_store=False,
                auto_offset_reset="latest", fetch_wait_max_ms=50)
        return self._consumer

    def _read(self, topic: str) -> Thumbnail | None:
        consumer = self._client()
        md = consumer.list_topics(topic, timeout=self._read_timeout).topics.get(topic)
        if md is None or md.error is not None:
            return None
        wanted: list[TopicPartition] = []
        for p in sorted(md.partitions):
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, p), timeout=self._read_timeout, cached=False)
            if high > low:
                wanted.append(TopicPartition(topic, p, high - 1))
        if not wanted:
            return None
        consumer.assign(wanted)
        newest: dict[int, Message] = {}
        deadline = time.monotonic() + self._read_timeout
        try:
            while len(newest) < len(wanted) and time.monotonic() < deadline:
                msg = consumer.poll(0.2)
                if msg is None or msg.error() is not None:
                    continue
                newest[msg.partition() or 0] = msg
        finally:
            consumer.unassign()
        if not newest:
            return None
        msg = max(newest.values(), key=lambda m: (m.timestamp()[1], m.offset() or 0))
        frame = decode(msg.key(), msg.value(), msg.headers() or [])
        return Thumbnail(topic, thumbnail_png(frame.image, self._max_side), frame.unique_id,
                         tuple(frame.image.shape), msg.partition() or 0, msg.offset() or 0,
                         time.time())
