"""The bridge's codec stage (``--codec``): compress uncompressed sources before producing.

Compression is the one CPU-heavy step a bridge can be asked to do (1-2 ms of CPU per
1024x1024 uint16 frame with bslz4), so it runs on a bounded pool of threads, not on the
channel's intake thread. The three libraries release the GIL while they compress (python-lz4
and bitshuffle always; python-blosc once ``set_releasegil(True)``, which :func:`prepare`
calls), so the pool's threads really run in parallel.

Order: each channel has a :class:`CodecStage` with a FIFO of its frames in arrival order and
one sender thread that takes them from the head, waits for the head's compression, and hands it
to :class:`~.producer.FrameProducer`. So frames reach the producer in exactly the order they
were received, whatever order the pool finishes them in: frame order per partition and the
per-partition ``pf.seq`` numbers are what they are without a codec.

Bound: a frame enters the stage only while the stage holds fewer than ``max_frames`` frames
and fewer than ``max_bytes`` bytes of source pixels (a single frame larger than ``max_bytes``
enters alone); :class:`Budget` is shared by all channels of a bridge. The intake thread waits
for room, so a source faster than the CPU backs up into the PVA queues, whose losses are
counted as they are without a codec (``queue_rejected``, ``overruns``, ``missed``).
Memory held by the stage is therefore at most ``max_bytes`` (or one frame) of pixels plus
their compressed copies, on top of the producer buffer (``queue.buffering.max.kbytes``).

Frames that arrive compressed go through the same FIFO untouched (never recompressed).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from pvaflow.codec import Headers
from pvaflow.codecs import compress_image, get_codec
from pvaflow.errors import FrameError
from pvaflow.frame import Frame

from .plan import Route
from .producer import Encoded, FrameProducer
from .stats import ChannelStats

log = logging.getLogger(__name__)

DEFAULT_THREADS = 2
DEFAULT_BACKLOG_MB = 256


def default_backlog(threads: int) -> int:
    """Frames the stage may hold: enough to keep every thread busy while the sender waits."""
    return 4 * max(threads, 1)


def prepare(name: str) -> None:
    """Make the codec's library fit a pool of our own threads, and fail early (``FrameError``)
    when it is not installed.

    bitshuffle parallelises one frame with OpenMP; with a pool of threads each doing that, a
    loaded machine spends its time in OpenMP's spin-waits (measured: 35 ms instead of 1.5 ms
    of CPU per 1024x1024 frame on 2 busy cores). OpenMP reads ``OMP_NUM_THREADS`` when the
    library loads, so it is set (unless the user set it) before bitshuffle is imported.
    Blosc gets one internal thread and releases the GIL (its thread-safe ``_ctx`` calls)."""
    if "bitshuffle" not in sys.modules:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    get_codec(name)
    if name == "blosc":
        import blosc

        blosc.set_releasegil(True)
        blosc.set_nthreads(1)


class Budget:
    """How many frames and source bytes all codec stages of a bridge hold (one lock)."""

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        if max_frames < 1 or max_bytes < 1:
            raise ValueError("the codec backlog needs room for at least one frame and byte")
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.frames = 0
        self.bytes = 0
        self._cond = threading.Condition()

    def acquire(self, nbytes: int) -> None:
        with self._cond:
            while self.frames and (self.frames >= self.max_frames
                                   or self.bytes + nbytes > self.max_bytes):
                self._cond.wait()
            self.frames += 1
            self.bytes += nbytes

    def release(self, nbytes: int) -> None:
        with self._cond:
            self.frames -= 1
            self.bytes -= nbytes
            self._cond.notify_all()


@dataclass
class _Item:
    future: Future[tuple[Encoded, float]]
    route: Route
    unique_id: int
    nbytes: int
    keep: Any  # the PVA update whose buffer the frame (or a passed-through payload) views


class CodecPool:
    """The threads and the budget, shared by every channel of one bridge."""

    def __init__(self, name: str, threads: int = DEFAULT_THREADS, *,
                 max_frames: int | None = None,
                 max_bytes: int = DEFAULT_BACKLOG_MB << 20) -> None:
        prepare(name)
        self.name = name
        self.threads = threads
        self.budget = Budget(max_frames or default_backlog(threads), max_bytes)
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="bridge-codec")

    def submit(self, fn: Callable[[], tuple[Encoded, float]]) -> Future[tuple[Encoded, float]]:
        return self._executor.submit(fn)

    def describe(self) -> str:
        return (f"{self.name} on {self.threads} threads, at most {self.budget.max_frames} "
                f"frames / {self.budget.max_bytes >> 20} MB in the codec stage")

    def close(self) -> None:
        self._executor.shutdown(wait=True)


class CodecStage:
    """One channel's ordered way through the pool to the producer."""

    def __init__(
        self, channel: str, pool: CodecPool, producer: FrameProducer, stats: ChannelStats,
        encode: Callable[[Frame, Headers], Encoded],
    ) -> None:
        self.channel = channel
        self.pool = pool
        self.producer = producer
        self.stats = stats
        self._encode = encode
        self._fifo: deque[_Item | None] = deque()
        self._ready = threading.Condition()
        self._sender = threading.Thread(target=self._run, name=f"bridge-send-{channel}",
                                        daemon=True)
        self._sender.start()

    def submit(self, frame: Frame, route: Route, extra: Headers, keep: Any) -> None:
        """Queue a frame (intake thread). Waits while the bridge's codec budget is full.
        An already compressed frame is encoded here and passes through untouched."""
        s = self.stats
        nbytes = frame.nbytes
        future: Future[tuple[Encoded, float]]
        if frame.codec is not None:
            future = Future()
            try:
                future.set_result((self._encode(frame, extra), -1.0))
            except FrameError as exc:
                s.dropped["invalid"] += 1  # the intake thread's counter, as without a codec
                log.error("cannot encode uniqueId %d of %s: %s", frame.unique_id,
                          self.channel, exc)
                return
            self.pool.budget.acquire(nbytes)
        else:
            self.pool.budget.acquire(nbytes)
            future = self.pool.submit(lambda: self._compress(frame, extra))
        s.codec_queued += 1
        with self._ready:
            self._fifo.append(_Item(future, route, frame.unique_id, nbytes, keep))
            self._ready.notify()

    def _compress(self, frame: Frame, extra: Headers) -> tuple[Encoded, float]:
        """Pool thread: the frame compressed and encoded, and the CPU seconds it took."""
        t0 = time.thread_time()
        payload, codec = compress_image(frame.array, self.pool.name)
        compressed = replace(frame, array=payload, codec=codec)
        cpu = time.thread_time() - t0
        return self._encode(compressed, extra), cpu

    def close(self) -> None:
        """Send everything queued, then stop the sender thread (call after the intake
        stopped)."""
        with self._ready:
            self._fifo.append(None)
            self._ready.notify()
        self._sender.join()

    @property
    def pending(self) -> int:
        return self.stats.codec_queued - self.stats.codec_done

    def _run(self) -> None:
        s = self.stats
        while True:
            with self._ready:
                while not self._fifo:
                    self._ready.wait()
                item = self._fifo.popleft()
            if item is None:
                return
            try:
                self._send(item)
            except Exception:
                s.dropped["produce_error"] += 1
                log.exception("producing uniqueId %d of %s failed", item.unique_id,
                              self.channel)
            finally:
                item.keep = None
                self.pool.budget.release(item.nbytes)
                s.codec_done += 1

    def _send(self, item: _Item) -> None:
        s = self.stats
        try:
            encoded, cpu = item.future.result()
        except FrameError as exc:
            s.dropped["codec_error"] += 1
            log.error("cannot compress uniqueId %d of %s: %s", item.unique_id, self.channel,
                      exc)
            return
        except Exception as exc:
            s.dropped["codec_error"] += 1
            log.error("compressing uniqueId %d of %s failed: %r", item.unique_id,
                      self.channel, exc)
            return
        if cpu >= 0:
            s.codec_frames += 1
            s.codec_seconds += cpu
        self.producer.send(item.route.topic, item.route.partition, encoded, s, item.unique_id)
