"""What a user reads when the bridge or the mirror cannot work: one line, the right exit code,
no traceback (a refused -X setting, Kafka not there at start, Kafka gone for good mid-run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pvaflow.ops.broker import LocalBroker

from pvaflow.kafka.topics import ensure_topic
from pvaflow.process import free_port

pytestmark = pytest.mark.integration

MODULES = {"bridge": "pvaflow.bridge.cli", "mirror": "pvaflow.bridge.mirror_cli"}


def command(kind: str, bootstrap: str, *extra: str, topic: str = "frames") -> list[str]:
    """The least each command needs to start: the bridge an input channel (any name: Kafka is
    checked first), the mirror a topic and a channel to serve."""
    own = (["--input-channel", f"nobody:{uuid.uuid4().hex[:6]}", "--topic", topic]
           if kind == "bridge" else
           ["--topic", topic, "--output-channel", f"mirror:{uuid.uuid4().hex[:6]}"])
    return [sys.executable, "-m", MODULES[kind], *own, "--bootstrap-servers", bootstrap,
            "--report-period", "0", *extra]


def env() -> dict[str, str]:
    port = str(free_port())  # the mirror's PVA server: never the port of another test's
    return {**os.environ, "EPICS_PVAS_SERVER_PORT": port, "EPICS_PVA_SERVER_PORT": port}


def the_one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("kind", sorted(MODULES))
@pytest.mark.parametrize("setting, name", [("no.such.property=1", "no.such.property"),
                                           ("linger.ms=abc", "linger.ms")])
def test_a_refused_setting_is_one_line_naming_it(
    kind: str, setting: str, name: str, kafka_bootstrap: str, make_topic: Callable[..., str],
) -> None:
    topic = make_topic(1)
    done = subprocess.run(command(kind, kafka_bootstrap, "-X", setting, topic=topic),
                          capture_output=True, text=True, timeout=60, env=env())
    line = the_one_line(done.stderr)
    assert done.returncode == 2, done.stderr
    assert line.startswith(f"pvaflow-{kind}: error:") and name in line


@pytest.mark.parametrize("kind", sorted(MODULES))
def test_unreachable_bootstrap_is_one_line_naming_it(kind: str) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = subprocess.run(command(kind, bootstrap), capture_output=True, text=True,
                          timeout=60, env=env())
    elapsed = time.monotonic() - started
    line = the_one_line(done.stderr)
    assert done.returncode == 3, done.stderr
    assert bootstrap in line and "pvaflow broker run" in line
    assert elapsed < 15, f"took {elapsed:.1f} s"


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(args: list[str]) -> subprocess.Popen[bytes]:
        err = open(tmp_path / f"cmd-{len(procs)}.err", "wb")  # noqa: SIM115 (closed below)
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, env=env(),
                             start_new_session=True)
        err.close()
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


def wait_in(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        assert proc.poll() is None, path.read_text(errors="replace")
        assert time.monotonic() < deadline, f"no {text!r}:\n{path.read_text(errors='replace')}"
        time.sleep(0.1)


@pytest.mark.parametrize("kind", sorted(MODULES))
def test_kafka_gone_for_good_mid_run_ends_with_one_error_line(
    kind: str, private_broker: Callable[..., LocalBroker],
    running: Callable[..., subprocess.Popen[bytes]], tmp_path: Path,
) -> None:
    kafka = private_broker()
    topic = f"gone-{uuid.uuid4().hex[:6]}"
    ensure_topic(topic, 1, bootstrap=kafka.bootstrap)
    proc = running(command(kind, kafka.bootstrap, "--kafka-timeout", "8", topic=topic))
    stderr = tmp_path / "cmd-0.err"
    wait_in(stderr, "monitoring" if kind == "bridge" else "serving", proc, timeout=60)
    stopped = time.monotonic()  # the --kafka-timeout clock may start while the broker stops
    kafka.stop()
    code = proc.wait(90)
    text = stderr.read_text(errors="replace")
    assert code == 3, text
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if ": error:" in line]
    assert len(errors) == 1, text
    assert errors[0].startswith(f"pvaflow-{kind}: error: lost Kafka")
    assert kafka.bootstrap in errors[0]
    assert time.monotonic() - stopped >= 8
