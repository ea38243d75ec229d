"""``/healthz`` and ``/readyz`` of real processes, turned red and back by real faults.

* a consumer whose plugin sleeps on a frame longer than ``--stall-after``: ``/healthz`` goes
  200 -> 503 while the loop is stuck, and back to 200 once the frame is done;
* a bridge whose PVA sim server stops: ``/readyz`` names the channel, back when it restarts;
* a consumer, a collector and the monitor on a broker that stops: ``/readyz`` says Kafka is
  unreachable, and all are ready again after the broker restarts.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from confluent_kafka import Producer

from pvaflow.codec import encode
from pvaflow.kafka.topics import ensure_topic
from pvaflow.process import free_port
from pvaflow.testing import make_frames

from .conftest import REPO, wait_for_answer
from .test_dashboards_live import Procs, pvaflow

pytestmark = pytest.mark.integration

SLOW_PLUGIN = REPO / "tests" / "processors" / "slow_plugin.py"


def own_pva_port() -> dict[str, str]:
    """A component that may serve PVA gets its own TCP port (never the bridge)."""
    port = str(free_port())
    return {"EPICS_PVA_SERVER_PORT": port, "EPICS_PVAS_SERVER_PORT": port}


def url(port: int, path: str) -> str:
    return f"http://127.0.0.1:{port}{path}"


def feed(bootstrap: str, topic: str, n: int) -> None:
    p = Producer({"bootstrap.servers": bootstrap})
    for seq, frame in enumerate(make_frames(n, (4, 4))):
        key, value, headers = encode(frame, sequence=seq)
        p.produce(topic, cast(bytes, value), key, headers=headers, partition=0)
    assert p.flush(30) == 0


def test_a_stalled_loop_turns_healthz_red_and_back(
    live: Procs, make_topic: Callable[..., str], kafka_bootstrap: str,
) -> None:
    frames = make_topic(1, suffix="frames")
    port = free_port()
    live.start("consumer", pvaflow(
        "consume", "-b", kafka_bootstrap, "--input-topic", frames,
        "--group", f"probe-{uuid.uuid4().hex[:6]}", "--dlq-topic", "",
        "--processor-file", str(SLOW_PLUGIN), "--processor-class", "Slow",
        "--processor-args", '{"delay": 10}', "--batch-size", "1",
        "--control-topic", "", "--status-topic", "", "--report-period", "0",
        "--metrics-port", str(port), "--stall-after", "3"), env=own_pva_port())
    health = url(port, "/healthz")
    wait_for_answer(live, url(port, "/readyz"), 200, 90)
    assert wait_for_answer(live, health, 200, 10) == "ok\n"
    feed(kafka_bootstrap, frames, 1)  # one frame: the plugin sleeps 10 s on it
    body = wait_for_answer(live, health, 503, 60, contains="stalled")
    assert "has not come round" in body
    assert wait_for_answer(live, health, 200, 60) == "ok\n"


def test_bridge_readyz_follows_its_pva_channel(
    live: Procs, make_topic: Callable[..., str], kafka_bootstrap: str,
    sim_server: Callable[..., Any], pva_env: dict[str, str],
) -> None:
    frames = make_topic(1, suffix="frames")
    sim = sim_server(nx=16, ny=16, fps=20, n_frames=5)
    port = free_port()
    live.start("bridge", pvaflow(
        "bridge", "-b", kafka_bootstrap, "--input-channel", sim.channel, "--topic", frames,
        "--control-topic", "", "--status-topic", "", "--report-period", "0",
        "--metrics-port", str(port)), env=pva_env)
    ready = url(port, "/readyz")
    assert wait_for_answer(live, ready, 200, 90) == "ok\n"
    sim.stop()
    body = wait_for_answer(live, ready, 503, 90, contains="not connected")
    assert sim.channel in body
    assert wait_for_answer(live, url(port, "/healthz"), 200, 10) == "ok\n"  # alive, waiting
    sim.restart()
    assert wait_for_answer(live, ready, 200, 120) == "ok\n"


def test_readyz_names_kafka_while_the_broker_is_down(
    live: Procs, private_broker: Callable[..., Any], tmp_path: Path,
) -> None:
    broker = private_broker()
    boot = broker.bootstrap
    run = uuid.uuid4().hex[:6]
    frames, out, status = f"probe-{run}-frames", f"probe-{run}-out", f"probe-{run}-status"
    for name in (frames, out):  # the stages wait for their input topics
        ensure_topic(name, 1, bootstrap=boot)
    ports = {name: free_port() for name in ("consumer", "collector", "monitor")}
    common = ["-b", boot, "--kafka-timeout", "0", "--control-topic", "",
              "--status-topic", "", "--report-period", "0"]
    live.start("monitor", pvaflow(
        "monitor", "-b", boot, "--status-topic", status, "--app-id", f"probe-{run}-monitor",
        "--web-host", "127.0.0.1", "--web-port", str(ports["monitor"]),
        "--data-dir", str(tmp_path / "monitor")), cwd=tmp_path)
    live.start("consumer", pvaflow(
        "consume", "--input-topic", frames, "--processor", "rotate", "--output-topic", out,
        "--group", f"probe-{run}-rotate", "--metrics-port", str(ports["consumer"]), *common),
        env=own_pva_port())
    live.start("collector", pvaflow(
        "collect", "--input-topic", out, "--output-topic", f"probe-{run}-ordered",
        "--group", f"probe-{run}-collector", "--metrics-port", str(ports["collector"]),
        *common), env=own_pva_port())
    ready = {name: url(port, "/readyz") for name, port in ports.items()}
    for name, u in ready.items():
        assert wait_for_answer(live, u, 200, 120) == "ok\n", name
    assert wait_for_answer(live, url(ports["monitor"], "/healthz"), 200, 10) == "ok\n"

    broker.stop()
    for name in ("consumer", "collector"):
        body = wait_for_answer(live, ready[name], 503, 120, contains="Kafka")
        assert boot in body and "unreachable" in body, (name, body)
    body = wait_for_answer(live, ready["monitor"], 503, 120, contains="Kafka")
    assert boot in body
    for name, port in ports.items():  # down is not dead: no restart wanted
        assert wait_for_answer(live, url(port, "/healthz"), 200, 30) == "ok\n", name

    broker.start()
    for name, u in ready.items():
        assert wait_for_answer(live, u, 200, 120) == "ok\n", name
