"""Where the monitor's status agent picks up after a rebalance (a start, a restart, a second
monitor joining).

faust positions the status partition at the group's committed offset while a rebalance
completes, resumes fetching, and only then resumes its flow control, which empties every
stream's queue (``FlowControlEvent.resume`` clears the queues faust makes with
``clear_on_resume``). Status messages fetched in between are dropped: the fetch position has
moved past them and they are never acknowledged, so they are neither applied nor read again
until the next restart. A dropped final status is lost for good, since a stopped component
never sends another. This was seen as a restarted monitor that applied the first two of
fourteen status messages and then nothing.

So once faust reports the rebalance complete (a :class:`faust.Sensor`'s ``on_rebalance_end``
runs after that clear), the monitor seeks the status partition again, to the committed offset
or to the beginning when the group has none. Status messages read twice are ones the Table
already reflects, and :func:`pvaflow.ops.monitor.replayed` leaves them out.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition
from faust.types import TP

from pvaflow.kafka.aio import AioSettings

log = logging.getLogger(__name__)


async def committed_offset(aio: AioSettings, group: str, topic: str, *, attempts: int = 20,
                           backoff: float = 0.5) -> int | None:
    """The offset ``group`` has committed on partition 0 of ``topic``, or None.

    A retriable error (no group coordinator yet, a leader moving) is retried ``attempts``
    times, ``backoff`` seconds apart; the last one, or any other, is raised.
    """
    tp = TopicPartition(topic, 0)
    admin = AIOKafkaAdminClient(**aio.aiokafka_kwargs())
    await admin.start()
    try:
        for attempt in range(1, attempts + 1):
            try:
                found = await admin.list_consumer_group_offsets(group, partitions=[tp])
                break
            except KafkaError as exc:
                if not exc.retriable or attempt == attempts:
                    raise
                await asyncio.sleep(backoff)
    finally:
        await admin.close()
    meta = found.get(tp)
    return meta.offset if meta is not None and meta.offset >= 0 else None


class ReseekAfterRebalance(faust.Sensor):
    """After each rebalance, seeks the status partition to where faust meant it to start.

    The seek runs in a task (sensor hooks are synchronous); if Kafka cannot say where that is,
    the monitor logs a warning and keeps faust's position, which may have skipped messages.
    """

    def __init__(self, aio: AioSettings, group: str, topic: str) -> None:
        super().__init__()
        self._aio, self._group, self._topic = aio, group, topic
        self._reseeks: set[asyncio.Task[int | None]] = set()

    def on_rebalance_end(self, app: Any, state: Any) -> None:
        task = asyncio.ensure_future(self.reseek(app))
        self._reseeks.add(task)
        task.add_done_callback(self._reseeks.discard)

    async def reseek(self, app: Any) -> int | None:
        """The offset the status partition was moved to, or None (not assigned here, or
        Kafka did not answer)."""
        tp = TP(self._topic, 0)
        if tp not in app.consumer.assignment():
            return None
        try:
            offset = await committed_offset(self._aio, self._group, self._topic)
            if offset is None:
                offset = (await app.consumer.earliest_offsets(tp))[tp]
            if app.rebalancing or tp not in app.consumer.assignment():
                return None  # another rebalance began; its own end seeks again
            await app.consumer.seek(tp, offset)
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            log.warning("monitor: could not re-read %s after a rebalance (%s); status "
                        "messages fetched during it may be missing until the next restart",
                        self._topic, exc)
            return None
        log.info("monitor: reading %s from offset %d after the rebalance", self._topic, offset)
        return offset
