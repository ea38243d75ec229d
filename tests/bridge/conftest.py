"""Bridge test helpers: run a bridge (in-process or as the real CLI) and read topics back."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from pvaflow.bridge.stats import parse_final
from pvaflow.ops.simulator import SimServer

from tests.procs import wait_for


@dataclass
class Record:
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]

    def header(self, name: str) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    @property
    def uid(self) -> int:
        return int(self.header("pf.uid") or int.from_bytes(self.key, "big"))


def read_topic(
    bootstrap: str, topic: str, *, expect: int | None = None, timeout: float = 20.0,
    settle: float = 1.0,
) -> list[Record]:
    """Every record of ``topic`` from the start: until ``expect`` records arrived, or until
    nothing new came for ``settle`` seconds (or ``timeout``)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{time.time_ns()}",
                  "enable.auto.commit": False, "fetch.max.bytes": 64 << 20,
                  "max.partition.fetch.bytes": 40 << 20})
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        c.assign([TopicPartition(topic, p, 0) for p in md.partitions])
        out: list[Record] = []
        deadline = time.monotonic() + timeout
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            if expect is not None and len(out) >= expect:
                break
            if expect is None and time.monotonic() - last_new > settle:
                break
            msg = c.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            last_new = time.monotonic()
            out.append(Record(msg.partition(), msg.offset(), msg.key(), msg.value(),
                              list(msg.headers() or [])))
        return out
    finally:
        c.close()


def by_partition(records: Sequence[Record]) -> dict[int, list[int]]:
    out: dict[int, list[tuple[int, int]]] = {}
    for r in records:
        out.setdefault(r.partition, []).append((r.offset, r.uid))
    return {p: [u for _, u in sorted(v)] for p, v in sorted(out.items())}


CLIENT = Path(__file__).with_name("pva_client.py")


def start_client(tmp_path: Path, out: Path, frames: int, timeout: float, *channels: str,
                 script: Sequence[str] = (str(CLIENT),)) -> subprocess.Popen[bytes]:
    """A direct PVA client (``pva_client.py``, or ``script``'s ``python`` arguments taking
    the same command line) in the background; its output goes to ``client.out``."""
    with open(tmp_path / "client.out", "wb") as log:
        return subprocess.Popen([sys.executable, *script, str(out), str(frames), str(timeout),
                                 *channels], env=dict(os.environ), stdout=log,
                                stderr=subprocess.STDOUT)


class BridgeProcess:
    """The real ``pvaflow-bridge`` command in a subprocess (SIGINT, exit code, stdout)."""

    def __init__(self, args: Sequence[str], log_dir: Path) -> None:
        self.stdout_path = log_dir / f"bridge-{time.time_ns()}.out"
        self.stderr_path = self.stdout_path.with_suffix(".err")
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pvaflow.bridge.cli", *args], stdout=out, stderr=err,
                env=dict(os.environ), start_new_session=True)

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stderr:
            if self.proc.poll() is not None:
                raise AssertionError(f"bridge exited ({self.proc.returncode}):\n"
                                     f"{self.stderr[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} from the bridge:\n{self.stderr[-3000:]}")
            time.sleep(0.1)

    def wait_stats(self, key: str, n: int, timeout: float = 30.0) -> None:
        """Wait until the periodic report shows ``key: >= n`` (e.g. ``received``)."""
        deadline = time.monotonic() + timeout
        while True:
            values = [int(v) for v in re.findall(rf"{key}: (\d+)", self.stdout)]
            if values and values[-1] >= n:
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{key} never reached {n}:\n{self.stdout[-2000:]}\n"
                                     f"{self.stderr[-2000:]}")
            time.sleep(0.1)

    def final(self, timeout: float = 60.0) -> dict[str, Any]:
        """SIGINT, expect exit 0, return the first channel's final statistics."""
        code = self.interrupt(timeout)
        assert code == 0, f"bridge exit {code}:\n{self.stderr[-3000:]}"
        return parse_final(self.stdout)[0]

    def interrupt(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def bridge_process(tmp_path: Path, kafka_bootstrap: str) -> Iterator[Callable[..., BridgeProcess]]:
    procs: list[BridgeProcess] = []

    def start(*args: str, bootstrap: str | None = None,
              report_period: float = 0.5) -> BridgeProcess:
        full = [*args, "--bootstrap-servers", bootstrap or kafka_bootstrap,
                "--report-period", str(report_period)]
        p = BridgeProcess(full, tmp_path)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()


def release_when_subscribed(sim: SimServer, bridge: BridgeProcess,
                            client: subprocess.Popen[bytes], tmp_path: Path) -> None:
    """Release a gated sim server once the bridge has its channel and the direct client
    (:func:`start_client`) says every monitor has started: both then see frame 1 on."""
    bridge.wait_for(f"channel {sim.channel} connected", timeout=90)
    log = tmp_path / "client.out"

    def subscribed() -> bool:
        assert client.poll() is None, f"the direct client exited:\n{log.read_text()}"
        return "subscribed" in log.read_text(errors="replace")

    wait_for(subscribed, 90, f"the direct client to subscribe (its output: {log})")
    sim.release()
