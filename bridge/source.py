"""PVA intake: one monitored channel with a server-side and an optional client-side queue.

Without a client queue the handler runs on pvapy's monitor thread over a view of the update
(no copy: the producer copies the pixels once, into librdkafka). With one, pvapy copies each
update into a ``PvObjectQueue`` and a worker thread drains it, which absorbs stalls (a full
producer buffer) at the cost of that copy. pvAccess reconnects by itself when the server comes
back; :meth:`Source.check_connection` (polled, because pvapy's connection callback has crashed
the interpreter with several channels) only logs it.

One :class:`Drainer` thread serves every client queue: pvapy's ``PvObjectQueue.get`` with a
timeout crashes the interpreter (GIL assertion) when several threads wait at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pvaccess as pva

from .stats import ChannelStats

log = logging.getLogger(__name__)

Handler = Callable[[Any], None]


def monitor_request(server_queue_size: int) -> str:
    """PvaPy's request string: ``record[queueSize=N]field()`` asks the server for a queue."""
    record = f"record[queueSize={server_queue_size}]" if server_queue_size > 0 else ""
    return f"{record}field()"


class _Accumulator:
    """Monotonic total over a counter that pvAccess may reset (on reconnect or reset)."""

    def __init__(self) -> None:
        self.total = 0
        self._last = 0

    def update(self, raw: int) -> int:
        self.total += raw - self._last if raw >= self._last else raw
        self._last = raw
        return self.total


class Source:
    def __init__(
        self,
        channel: str,
        handler: Handler,
        stats: ChannelStats,
        *,
        server_queue_size: int = 0,
        receiver_queue_size: int = -1,
    ) -> None:
        self.name = channel
        self._handler = handler
        self._stats = stats
        self.request = monitor_request(server_queue_size)
        self._queue = pva.PvObjectQueue(receiver_queue_size) if receiver_queue_size >= 0 else None
        self._channel: Any = None
        self._overruns = _Accumulator()
        self._rejected = _Accumulator()
        self.connected = threading.Event()
        self._ever_connected = False

    def start(self) -> None:
        self._channel = pva.Channel(self.name, pva.PVA)
        log.info("monitoring %s with request %r, client queue %s", self.name, self.request,
                 "none" if self._queue is None else self._queue.maxLength)
        if self._queue is None:
            self._channel.monitor(self.handle, self.request)
        else:
            self._channel.qMonitor(self._queue, self.request)

    @property
    def queue(self) -> Any:
        return self._queue

    def stop(self) -> None:
        """Stop the monitor (the drainer then hands on what the client queue still holds)."""
        if self._channel is not None:
            self._channel.stopMonitor()
        self.update_counters()

    def update_counters(self) -> None:
        """Fold pvAccess's overrun and client-queue counters into the channel stats."""
        if self._channel is not None:
            counters = self._channel.getMonitorCounters()
            self._stats.overruns = self._overruns.update(int(counters.get("nOverruns", 0)))
        if self._queue is not None:
            rejected = int(self._queue.getCounters().get("nRejected", 0))
            self._stats.queue_rejected = self._rejected.update(rejected)

    def check_connection(self) -> bool:
        """Log connection changes; returns whether the channel is connected."""
        connected = bool(self._channel is not None and self._channel.isConnected())
        if connected == self.connected.is_set():
            return connected
        if connected:
            self.connected.set()
            self._ever_connected = True
            log.info("channel %s connected", self.name)
        elif self._ever_connected:
            self.connected.clear()
            log.warning("channel %s disconnected; pvAccess will reconnect when it is back",
                        self.name)
        return connected

    def handle(self, pv: Any) -> None:
        try:
            self._handler(pv)
        except Exception:
            log.exception("frame handling failed on %s", self.name)


class Drainer:
    """The one thread that takes updates from every client queue and handles them."""

    def __init__(self, sources: list[Source]) -> None:
        self._sources = [s for s in sources if s.queue is not None]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bridge-intake", daemon=True)

    def start(self) -> None:
        if self._sources:
            self._thread.start()

    def stop(self) -> None:
        """Call after the monitors stopped: returns once the queues are empty."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        if len(self._sources) == 1:
            self._run_one(self._sources[0])
            return
        while True:
            busy = False
            for src in self._sources:
                try:
                    pv = src.queue.get(0)
                except pva.QueueEmpty:
                    continue
                busy = True
                src.handle(pv)
            if not busy:
                if self._stopping.is_set():
                    return
                time.sleep(0.001)

    def _run_one(self, src: Source) -> None:
        q = src.queue
        while True:
            try:
                pv = q.get(0.1)
            except pva.QueueEmpty:
                if self._stopping.is_set():
                    return
                continue
            src.handle(pv)
