"""``--log-format json``: every stderr line of every long-running command is one JSON object.

bridge, mirror, consumer, collector and monitor run briefly on the real broker (the bridge on
a real sim server) at ``-ll info``; each line must parse, carry time, level, logger and
message, and, once the process knows who it is, component, group and id. A record the
consumer and the collector dead-letter is logged with its frame's ``unique_id``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from pvaflow.codec import encode_key
from pvaflow.process import free_port

from .test_probes_live import feed, own_pva_port

pytestmark = pytest.mark.integration

REQUIRED = ("time", "level", "logger", "message")
IDENTITY = ("component", "group", "id")
BAD_UID = {"consumer": 4242, "collector": 777}


def json_lines(name: str, stderr: str) -> list[dict[str, Any]]:
    """Every line parsed; identity keys on every line after the first that has them."""
    records: list[dict[str, Any]] = []
    known = False
    for n, line in enumerate(stderr.splitlines(), 1):
        try:
            rec = json.loads(line)
        except ValueError:
            raise AssertionError(f"{name} stderr line {n} is not JSON: {line!r}") from None
        assert isinstance(rec, dict), (name, line)
        for key in REQUIRED:
            assert key in rec, f"{name} line {n} has no {key!r}: {line}"
        assert rec["time"].endswith("Z") and "T" in rec["time"], (name, line)
        known = known or all(k in rec for k in IDENTITY)
        if known:
            for key in IDENTITY:
                assert rec.get(key), f"{name} line {n} lost {key!r}: {line}"
        records.append(rec)
    return records


def bad_record(bootstrap: str, topic: str, uid: int) -> None:
    """A record with a frame's key whose value is not a frame: dead-lettered on decode."""
    p = Producer({"bootstrap.servers": bootstrap})
    p.produce(topic, b"not a frame", encode_key(uid), partition=0)
    assert p.flush(30) == 0


def test_every_long_running_command_logs_json_lines(
    tmp_path: Path, make_topic: Callable[..., str], kafka_bootstrap: str,
    sim_server: Callable[..., Any], pva_env: dict[str, str],
) -> None:
    run = uuid.uuid4().hex[:6]
    frames = make_topic(1, suffix="frames")
    inp, out = make_topic(1, suffix="in"), make_topic(1, suffix="out")
    cin = make_topic(1, suffix="collector-in")
    status = f"logs-{run}-status"
    sim = sim_server(nx=16, ny=16, fps=20, n_frames=5)
    feed(kafka_bootstrap, inp, 3)
    bad_record(kafka_bootstrap, inp, BAD_UID["consumer"])
    bad_record(kafka_bootstrap, cin, BAD_UID["collector"])
    common = ["-b", kafka_bootstrap, "--log-format", "json", "-ll", "info", "--runtime", "15"]
    stages = ["--status-topic", status, "--control-topic", f"logs-{run}-control",
              "--report-period", "2", "--metrics-port", "0"]
    commands: dict[str, tuple[list[str], dict[str, str]]] = {
        "bridge": (["bridge", "--input-channel", sim.channel, "--topic", frames, *stages],
                   pva_env),
        "consumer": (["consume", "--input-topic", inp, "--processor", "rotate",
                      "--group", f"logs-{run}-rotate", "--output-topic", out, *stages],
                     own_pva_port()),
        # a collector plugin decodes what it emits: the bad record is dead-lettered then
        "collector": (["collect", "--input-topic", cin, "--output-topic", f"logs-{run}-ord",
                       "--processor", "rotate", "--group", f"logs-{run}-collector", *stages],
                      own_pva_port()),
        "mirror": (["mirror", "--topic", frames, "--output-channel", f"logs:{run}:mirror",
                    "--metrics-port", "0"], own_pva_port()),
        "monitor": (["monitor", "--status-topic", status, "--app-id", f"logs-{run}-monitor",
                     "--web-port", str(free_port()), "--data-dir", str(tmp_path / "monitor")],
                    {}),
    }
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        for name, (args, env) in commands.items():
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "pvaflow.cli", *args, *common], cwd=tmp_path,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                text=True, env={**os.environ, **pva_env, **env, "PYTHONUNBUFFERED": "1"})
        results = {name: p.communicate(timeout=180) for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)
    for name, p in procs.items():
        stderr = results[name][1]
        assert p.returncode == 0, f"{name} exited {p.returncode}:\n{stderr[-3000:]}"
        records = json_lines(name, stderr)
        assert records, f"{name} logged nothing at -ll info"
        assert any(r.get("component") == name for r in records), (name, records[:3])
        if name in BAD_UID:
            dead = [r for r in records if r.get("unique_id") == BAD_UID[name]]
            assert dead and dead[0]["level"] == "warning", (name, stderr[-3000:])
    monitor = json_lines("monitor", results["monitor"][1])
    assert any(r["logger"].startswith(("faust", "mode", "aiokafka")) for r in monitor), \
        "faust's own lines go through the JSON handler too"
