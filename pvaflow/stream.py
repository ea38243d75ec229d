"""Any Python program as a source or a sink: numpy arrays in and out of a topic.

This is pyacq's stream idea on Kafka. Arrays need not be images: a time-series chunk has
time on axis 0, an event list is an (N, 2) array of (time, value). ``OutputStream`` runs
pre-filters, then chunks along axis 0 up to ``chunk_size`` samples, then sends each chunk as
one native frame; ``InputStream`` receives frames and runs post-filters.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from .codec import decode, encode
from .errors import KafkaFailure
from .frame import Attribute, EpicsTime, Frame
from .kafka.client import Kafka
from .kafka.produce import Sender
from .kafka.topics import ensure_topic

Filter = Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any]]

_ATTR_TYPES = {bool: "boolean", int: "long", float: "double", str: "string"}


def attributes(**attrs: Any) -> list[Attribute]:
    """NTNDArray attributes from keyword arguments (bool, int, float, str or lists of them)."""
    out = []
    for name, value in attrs.items():
        sample = value[0] if isinstance(value, list | tuple) and value else value
        typ = _ATTR_TYPES.get(type(sample))
        if typ is None:
            raise TypeError(f"attribute {name!r}: unsupported type {type(sample).__name__}")
        is_list = isinstance(value, list | tuple)
        out.append(Attribute(name, list(value) if is_list else value, typ + "[]" * is_list))
    return out


class OutputStream:
    """Sends arrays to a topic, one frame per chunk.

    With ``chunk_size`` set, samples accumulate along axis 0 and go out in chunks of exactly
    that many (the remainder on :meth:`flush`); without it every ``send`` is one frame.
    """

    def __init__(
        self,
        topic: str,
        *,
        bootstrap: str | None = None,
        partitions: int = 1,
        chunk_size: int | None = None,
        filters: Sequence[Filter] = (),
        source: str = "",
        overrides: Any = None,
    ) -> None:
        self._kafka = Kafka(bootstrap, overrides)
        ensure_topic(topic, partitions, admin=self._kafka.admin(), strict=False)
        self.topic = topic
        self._producer = self._kafka.producer()
        # A program sending arrays waits for room as long as the cluster is there; the
        # health check ends the wait with KafkaUnavailable once it has been gone too long.
        self._sender = Sender(self._producer, stop=threading.Event(), on_full="fail",
                              health=self._kafka.health)
        self._chunk = chunk_size
        self._filters = list(filters)
        self._pending: list[np.ndarray[Any, Any]] = []
        self._pending_len = 0
        self._source = source
        self._ids = itertools.count(1)
        self.sent = 0

    def send(self, array: np.ndarray[Any, Any], unique_id: int | None = None, **attrs: Any) -> None:
        data = np.asarray(array)
        for f in self._filters:
            data = f(data)
        if self._chunk is None:
            self._emit(data, unique_id, attrs)
            return
        self._pending.append(data)
        self._pending_len += len(data)
        while self._pending_len >= self._chunk:
            joined = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
            self._emit(joined[: self._chunk], None, attrs)
            rest = joined[self._chunk:]
            self._pending, self._pending_len = ([rest], len(rest)) if len(rest) else ([], 0)

    def flush(self, timeout: float = 30.0) -> None:
        """Send any partial chunk and wait until the broker has every frame."""
        if self._pending:
            self._emit(np.concatenate(self._pending), None, {})
            self._pending, self._pending_len = [], 0
        left = self._producer.flush(timeout)
        if left:
            raise KafkaFailure(f"{left} frames not delivered to {self.topic} in {timeout} s")

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> OutputStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _emit(
        self, data: np.ndarray[Any, Any], unique_id: int | None, attrs: dict[str, Any]
    ) -> None:
        now = EpicsTime.now()
        frame = Frame(
            array=np.ascontiguousarray(data),
            unique_id=next(self._ids) if unique_id is None else unique_id,
            timestamp=now, data_timestamp=now, attributes=attributes(**attrs), source=self._source,
        )
        key, value, headers = encode(frame)
        self._sender.send(self.topic, value, key, headers=headers)
        self._producer.poll(0)
        self.sent += 1


class InputStream:
    """Iterates frames from a topic. Without ``group`` it reads everything from the start on
    its own (broadcast); with a group it shares partitions with the group's other members."""

    def __init__(
        self,
        topic: str,
        *,
        bootstrap: str | None = None,
        group: str | None = None,
        filters: Sequence[Filter] = (),
        overrides: Any = None,
    ) -> None:
        self._consumer = Kafka(bootstrap, overrides).consumer(
            group or f"pvaflow-stream-{uuid.uuid4().hex[:8]}",
            enable_auto_commit=group is not None, enable_auto_offset_store=True)
        self._consumer.subscribe([topic])
        self._filters = list(filters)

    def recv(self, timeout: float = 10.0) -> Frame | None:
        """Next frame, or None when nothing arrives within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self._consumer.poll(min(left, 1.0))
            if msg is None:
                continue
            if msg.error():
                raise KafkaFailure(f"reading {msg.topic()}: {msg.error()}")
            frame = decode(msg.key(), msg.value(), msg.headers())
            if self._filters:
                data = frame.array
                for f in self._filters:
                    data = f(data)
                frame = frame.with_array(data)
            return frame
        return None

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.recv()) is not None:
            yield frame

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> InputStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
