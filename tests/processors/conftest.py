"""Helpers for the processors' integration tests: real consumer and bridge processes (stopped
by pid), a codec-based frame feeder standing in for the bridge where the PVA side is not the
point, an output-topic reader, and the entry-point test package installed for the session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
from confluent_kafka import Consumer, Producer

from pvaflow.codec import encode
from pvaflow.frame import Frame
from tests.procs import Proc, wait_for

__all__ = ["Proc", "wait_for"]  # the processor tests import them from here

HERE = Path(__file__).parent
PLUGIN_PKG = HERE / "plugin_pkg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Record:
    uid: int
    partition: int
    offset: int
    headers: dict[str, bytes]
    value: bytes
    key: bytes | None = None

    @property
    def proc(self) -> str:
        return self.headers.get("pf.proc", b"").decode()


@pytest.fixture
def run_proc(tmp_path: Path, pva_env: dict[str, str],
             kafka_bootstrap: str) -> Iterator[Callable[..., Proc]]:
    """``run_proc(module, *args, name=..., env=..., pva_server=False)`` starts ``python -m
    module args`` with the broker (and, for PVA servers, a private TCP port); every process is
    stopped (by pid) at teardown."""
    procs: list[Proc] = []

    def factory(module: str, *args: str, name: str = "proc",
                env: dict[str, str] | None = None, pva_server: bool = False) -> Proc:
        full_env = {**os.environ, **pva_env, "PVAFLOW_BOOTSTRAP": kafka_bootstrap,
                    "PYTHONUNBUFFERED": "1", **(env or {})}
        if pva_server:  # its own TCP port (a PVA client must not get one: it changes search)
            port = str(free_port())
            full_env.update(EPICS_PVA_SERVER_PORT=port, EPICS_PVAS_SERVER_PORT=port)
        log = tmp_path / f"{name}.log"
        log.unlink(missing_ok=True)  # a restart under the same name: its log is its own
        p = Proc([sys.executable, "-m", module, *args], log, full_env)
        procs.append(p)
        return p

    yield factory
    for p in reversed(procs):
        p.stop()


@pytest.fixture
def consumer(run_proc: Callable[..., Proc]) -> Callable[..., Proc]:
    """``consumer(*cli_args, name=...)``: a ``pvaflow-consumer`` process."""
    def factory(*args: str, name: str = "consumer", env: dict[str, str] | None = None) -> Proc:
        # The shared control topic is left out unless asked for: another test's "stop all"
        # must not reach this test's consumers.
        extra = () if "--control-topic" in args else ("--control-topic", "", "--status-topic", "")
        return run_proc("pvaflow.processors.cli", *args, *extra, name=name, env=env,
                        pva_server=True)
    return factory


def feed(bootstrap: str, topic: str, frames: Iterable[Frame],
         partition_of: Callable[[Frame], int] | None = None) -> int:
    """Produce frames as the bridge would (codec, key = uniqueId, pf.seq per partition)."""
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    seqs: dict[int, int] = {}
    n = 0
    for f in frames:
        part = partition_of(f) if partition_of else 0
        seq = seqs.get(part, 0)
        seqs[part] = seq + 1
        key, value, headers = encode(f, sequence=seq)
        p.produce(topic, cast(bytes, value), key, headers=headers, partition=part)
        p.poll(0)
        n += 1
    assert p.flush(30) == 0
    return n


def produce_raw(bootstrap: str, topic: str, value: bytes, key: bytes | None = None,
                headers: list[tuple[str, bytes]] | None = None, partition: int = 0) -> None:
    p = Producer({"bootstrap.servers": bootstrap})
    p.produce(topic, value, key, headers=headers, partition=partition)
    assert p.flush(30) == 0


def read_topic(bootstrap: str, topic: str, *, count: int, timeout: float = 60.0,
               read_committed: bool = False, settle: float = 0.0,
               until: Callable[[list[Record]], bool] | None = None) -> list[Record]:
    """Read from the beginning until ``count`` records (or ``until``) or ``timeout``; with
    ``settle`` keep reading that long afterwards to catch unexpected extra records."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "isolation.level": "read_committed" if read_committed else
                  "read_uncommitted"})
    c.subscribe([topic])
    out: list[Record] = []
    deadline = time.monotonic() + timeout
    done_at: float | None = None
    try:
        while time.monotonic() < deadline:
            for m in c.consume(100, 0.2):
                if m.error():
                    continue
                headers = {k: v for k, v in (m.headers() or []) if v is not None}
                key = m.key()
                uid = int.from_bytes(key, "big") if key and len(key) == 8 else -1
                out.append(Record(uid, cast(int, m.partition()), cast(int, m.offset()),
                                  headers, m.value() or b"", key))
            finished = until(out) if until else len(out) >= count
            if finished and done_at is None:
                done_at = time.monotonic()
            if done_at is not None and time.monotonic() - done_at >= settle:
                break
    finally:
        c.close()
    return out


def read_exactly(bootstrap: str, topic: str, count: int, *, timeout: float = 90.0,
                 settle: float = 2.0, read_committed: bool = False) -> list[Record]:
    """Wait (up to ``timeout``) for ``count`` records, keep reading ``settle`` seconds for
    extras, then fail unless there are exactly ``count``: a short or long topic is a failed
    test, never a loop of assertions over fewer records than expected."""
    got = read_topic(bootstrap, topic, count=count, timeout=timeout, settle=settle,
                     read_committed=read_committed)
    assert len(got) == count, f"{topic}: expected exactly {count} records, got {len(got)}"
    return got


@pytest.fixture(scope="session")
def plugin_package(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Install tests/processors/plugin_pkg (entry point ``test-scale``) into this venv for
    the session, as a user would ``pip install`` a plugin package; uninstalled afterwards."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    src = tmp_path_factory.mktemp("plugin_pkg") / "src"
    shutil.copytree(PLUGIN_PKG, src)  # pip builds in the source tree: keep the repo clean
    subprocess.run([*pip, "install", "--no-deps", str(src)],
                   check=True, capture_output=True, timeout=300)
    import importlib

    importlib.invalidate_caches()
    try:
        yield "test-scale"
    finally:
        subprocess.run([*pip, "uninstall", "-y", "pvaflow-test-plugins"], check=False,
                       capture_output=True, timeout=120)
