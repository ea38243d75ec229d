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
status. Commands are the PvaPy ones: configure, reset_stats, get_stats, stop.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from .kafka.settings import consumer_config, producer_config
from .kafka.topics import ensure_topic, watermarks

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


class ControlAgent:
    """Background thread: runs commands addressed to this component, publishes its status.

    ``handler(command, args)`` runs on the agent thread; components guard shared state with
    their own lock. ``stop`` sets :attr:`stop_requested` after the reply is sent.
    """

    def __init__(
        self,
        component: ComponentId,
        *,
        handler: Handler,
        stats: StatsFn,
        bootstrap: str | None = None,
        overrides: Any = None,
        control_topic: str = CONTROL_TOPIC,
        status_topic: str = STATUS_TOPIC,
        report_period: float = 10.0,
    ) -> None:
        self.component = component
        self._handler = handler
        self._stats = stats
        self._control_topic = control_topic
        self._status_topic = status_topic
        self._period = report_period
        self.stop_requested = threading.Event()
        self._closing = threading.Event()
        for topic in (control_topic, status_topic):
            ensure_topic(topic, 1, bootstrap=bootstrap, overrides=overrides, strict=False)
        self._producer = Producer(producer_config(
            bootstrap, overrides, enable_idempotence=False, linger_ms=0,
            queue_buffering_max_kbytes=4096,
        ))
        self._consumer = Consumer(consumer_config(
            f"pvaflow-control-{component}-{uuid.uuid4().hex[:8]}", bootstrap, overrides,
            queued_max_messages_kbytes=1024,
        ))
        _low, high = watermarks(self._consumer, control_topic)
        self._consumer.assign([TopicPartition(control_topic, 0, high if high >= 0 else OFFSET_END)])
        self._thread = threading.Thread(target=self._run, name=f"control-{component}", daemon=True)
        self._thread.start()

    def publish_status(self, final: bool = False) -> None:
        c = self.component
        self._send({
            "v": 1, "type": "status", "component": str(c), "kind": c.kind, "group": c.group,
            "id": c.id, "time": time.time(), "stats": dict(self._stats()), "final": final,
        })

    def close(self) -> None:
        """Publish a final status and stop the thread."""
        self._closing.set()
        self._thread.join(timeout=10)
        self.publish_status(final=True)
        self._producer.flush(10)
        self._consumer.close()

    def _send(self, message: dict[str, Any]) -> None:
        self._producer.produce(
            self._status_topic, key=str(self.component).encode(), value=json.dumps(message).encode()
        )
        self._producer.poll(0)

    def _run(self) -> None:
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
            result = self._handler(command, dict(cmd.get("args") or {}))
            reply.update(ok=True, result=dict(result or {}))
        except Exception as exc:
            log.warning("control command %s failed: %s", command, exc)
            reply.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        self._safely(self._send, reply)
        self._producer.flush(5)
        if command == "stop" and reply["ok"]:
            self.stop_requested.set()

    @staticmethod
    def _safely(fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("status publishing failed")
