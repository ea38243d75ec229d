"""Control and status protocol, shared by every component and the monitor.

Two small single-partition topics carry JSON (key = component id):

* control topic: ``{"v":1, "type":"command", "request_id", "target", "command", "args"}``.
  ``target`` is ``all``, a kind (``consumer``), a group name, ``kind/group`` or a full
  component id ``kind/group/id``.
* status topic: ``{"v":1, "type":"status", "component", "kind", "group", "id", "time",
  "stats", "final"}`` every report period, and ``{"v":1, "type":"reply", "request_id",
  "component", "command", "ok", "result" | "error", "time"}`` for each command.

Every component runs a :class:`ControlAgent`: it reads the control topic from its end at start
(plain assignment, no consumer group, so every component sees every command) and publishes
status, with the component's :class:`~pvaflow.status.StatusSchema` in every status message.
Commands are the PvaPy ones: configure, reset_stats, get_stats, stop. ``stop`` is the
lifecycle's own; the others go through a :class:`CommandBus` and run on the component's loop
thread between two steps, so a plugin is never called from two threads at once.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from .kafka.client import Kafka
from .kafka.topics import ensure_topic, watermarks
from .status import StatusSchema

log = logging.getLogger(__name__)

CONTROL_TOPIC = "pvaflow.control"
STATUS_TOPIC = "pvaflow.status"
COMMANDS = ("configure", "reset_stats", "get_stats", "stop")

Handler = Callable[[str, dict[str, Any]], Mapping[str, Any] | None]
StatsFn = Callable[[], Mapping[str, Any]]


@dataclass(frozen=True)
class ComponentId:
    kind: str
    group: str
    id: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.group}/{self.id}"

    @classmethod
    def parse(cls, text: str) -> ComponentId:
        kind, group, cid = text.split("/", 2)
        return cls(kind, group, cid)

    def matches(self, target: str) -> bool:
        return target in ("all", self.kind, self.group, f"{self.kind}/{self.group}", str(self))


def command_message(
    target: str, command: str, args: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}; one of: {', '.join(COMMANDS)}")
    return {
        "v": 1, "type": "command", "request_id": uuid.uuid4().hex, "target": target,
        "command": command, "args": dict(args or {}), "time": time.time(),
    }


class CommandBus:
    """Commands from any thread (control topic, PVA control channel), run on the loop thread."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[tuple[str, dict[str, Any], Future[Any]]] = queue.SimpleQueue()

    def submit(self, command: str, args: Mapping[str, Any] | None = None) -> Future[Any]:
        fut: Future[Any] = Future()
        self._q.put((command, dict(args or {}), fut))
        return fut

    def call(self, command: str, args: Mapping[str, Any] | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        """Submit and wait for the loop thread's answer."""
        return dict(self.submit(command, args).result(timeout) or {})

    def run_pending(self, execute: Handler) -> None:
        """On the loop thread: run every queued command, each future gets its answer."""
        while True:
            try:
                command, args, fut = self._q.get_nowait()
            except queue.Empty:
                return
            try:
                fut.set_result(execute(command, args))
            except Exception as exc:
                fut.set_exception(exc)


class ControlAgent:
    """Background thread: runs commands addressed to this component, publishes its status.

    ``handler(command, args)`` runs on the agent thread (the lifecycle's handler hands
    everything but ``stop`` to the loop thread); ``on_stop`` is called after a ``stop`` reply
    is sent. Nothing touches Kafka before :meth:`start`.
    """

    def __init__(
        self,
        component: ComponentId,
        *,
        handler: Handler,
        stats: StatsFn,
        kafka: Kafka,
        schema: StatusSchema | None = None,
        control_topic: str = CONTROL_TOPIC,
        status_topic: str = STATUS_TOPIC,
        report_period: float = 10.0,
        on_stop: Callable[[], None] = lambda: None,
    ) -> None:
        self.component = component
        self._handler = handler
        self._stats = stats
        self._kafka = kafka
        self._schema = schema
        self._control_topic = control_topic
        self._status_topic = status_topic
        self._period = report_period
        self._on_stop = on_stop
        self._closing = threading.Event()
        self._schema_warned = False
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> ControlAgent:
        kafka = self._kafka
        admin = kafka.admin()
        for topic in (self._control_topic, self._status_topic):
            ensure_topic(topic, 1, admin=admin, strict=False)
        self._producer = kafka.producer(enable_idempotence=False, linger_ms=0,
                                        queue_buffering_max_kbytes=4096)
        self._consumer = kafka.consumer(
            f"pvaflow-control-{self.component}-{uuid.uuid4().hex[:8]}",
            queued_max_messages_kbytes=1024)
        _low, high = watermarks(self._consumer, self._control_topic)
        self._consumer.assign([TopicPartition(self._control_topic, 0,
                                              high if high >= 0 else OFFSET_END)])
        self._thread = threading.Thread(target=self._run, name=f"control-{self.component}",
                                        daemon=True)
        self._thread.start()
        return self

    def publish_status(self, final: bool = False) -> None:
        c = self.component
        stats = dict(self._stats())
        message: dict[str, Any] = {
            "v": 1, "type": "status", "component": str(c), "kind": c.kind, "group": c.group,
            "id": c.id, "time": time.time(), "stats": stats, "final": final}
        if self._schema is not None:
            message["schema"] = self._schema.to_json()
            if not self._schema_warned:
                try:
                    self._schema.check(stats)
                except Exception as exc:
                    self._schema_warned = True
                    log.error("status of %s does not match its schema: %s", c, exc)
        self._send(message)

    def close(self, flush_timeout: float = 10.0) -> None:
        """Publish a final status and stop the thread (bounded: the cluster may be gone)."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._producer is not None:
            self._safely(self.publish_status, True)
            self._producer.flush(flush_timeout)
        if self._consumer is not None:
            self._consumer.close()

    def _send(self, message: dict[str, Any]) -> None:
        assert self._producer is not None
        self._producer.produce(
            self._status_topic, key=str(self.component).encode(), value=json.dumps(message).encode()
        )
        self._producer.poll(0)

    def _run(self) -> None:
        assert self._consumer is not None and self._producer is not None
        next_report = time.monotonic() + self._period if self._period > 0 else float("inf")
        while not self._closing.is_set():
            msg = self._consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                self._dispatch(msg.value())
            if time.monotonic() >= next_report:
                next_report += self._period
                self._safely(self.publish_status)

    def _dispatch(self, raw: bytes | None) -> None:
        try:
            cmd = json.loads(raw or b"")
            target, command = cmd["target"], cmd["command"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed control message %r", (raw or b"")[:200])
            return
        if not self.component.matches(target):
            return
        reply: dict[str, Any] = {
            "v": 1, "type": "reply", "request_id": cmd.get("request_id", ""),
            "component": str(self.component), "command": command, "time": time.time(),
        }
        try:
            if command not in COMMANDS:
                raise ValueError(f"unknown command {command!r}; one of: {', '.join(COMMANDS)}")
            result = {"stopping": True} if command == "stop" else \
                self._handler(command, dict(cmd.get("args") or {}))
            reply.update(ok=True, result=dict(result or {}))
        except Exception as exc:
            log.warning("control command %s failed: %s", command, exc)
            reply.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        self._safely(self._send, reply)
        assert self._producer is not None
        self._producer.flush(5)
        if command == "stop":
            self._on_stop()

    @staticmethod
    def _safely(fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("status publishing failed")
