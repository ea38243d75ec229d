"""The bridge under the lifecycle's control agent: status carries its schema, commands work."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from pvaflow.bridge.stats import STATUS_SCHEMA

from pvaflow.control import command_message
from pvaflow.status import StatusSchema

from .conftest import BridgeProcess

pytestmark = pytest.mark.integration


def next_message(consumer: Consumer, want: Callable[[dict[str, Any]], bool],
                 timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = consumer.poll(0.2)
        if msg is None or msg.error() is not None:
            continue
        value = json.loads(msg.value())
        if want(value):
            return value
    raise AssertionError("no such message on the status topic")


def test_status_carries_the_schema_and_commands_reach_the_bridge(
    sim_server: Callable[..., Any], bridge_process: Callable[..., BridgeProcess],
    make_topic: Callable[..., str], kafka_bootstrap: str,
) -> None:
    topic, control, status = make_topic(1), make_topic(1), make_topic(1)
    bridge_id = uuid.uuid4().hex[:6]
    sim = sim_server(nx=16, ny=16, fps=20, start_delay=3)
    bridge = bridge_process("-ic", sim.channel, "-t", topic, "-id", bridge_id,
                            "--control-topic", control, "--status-topic", status)
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": uuid.uuid4().hex})
    consumer.assign([TopicPartition(status, 0, 0)])
    try:
        me = f"bridge/bridge/{bridge_id}"
        bridge.wait_stats("delivered", 10)
        first = next_message(consumer, lambda m: m.get("component") == me
                             and m.get("type") == "status")
        schema = StatusSchema.from_json(first["schema"])
        assert schema == STATUS_SCHEMA
        schema.check(first["stats"])

        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        for command, args in (("configure", {"x": 1}), ("reset_stats", {}), ("stop", {})):
            producer.produce(control, json.dumps(command_message(me, command, args)).encode())
            producer.flush(10)
            reply = next_message(consumer, lambda m, c=command: m.get("type") == "reply"
                                 and m.get("command") == c)
            assert reply["ok"] is (command != "configure"), reply
            if command == "configure":
                assert "nothing to configure" in reply["error"]
        assert bridge.proc.wait(60) == 0, bridge.stderr[-3000:]
        final = next_message(consumer, lambda m: m.get("component") == me and m.get("final"))
        schema.check(final["stats"])
    finally:
        consumer.close()
