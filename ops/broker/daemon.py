"""The state file of a background broker (``broker.json`` in its data directory).

Why a file: ``pvaflow-broker start`` returns while the JVM keeps running, so a later
``stop``/``status`` (another process) must find it again. The pid alone is not trusted: a
recorded pid is only ours while its command line still names this data directory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .lifecycle import LocalBroker
from .procs import pid_alive

STATE = "broker.json"


def state_path(data_dir: Path) -> Path:
    return data_dir / STATE


def read_state(data_dir: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(state_path(data_dir).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def is_our_broker(pid: int, data_dir: Path) -> bool:
    """Guard against pid reuse: the process must be kafka.Kafka on this data dir."""
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    props = str(data_dir / "server.properties").encode()
    return b"kafka.Kafka" in cmdline and props in cmdline


def write_state(broker: LocalBroker, pid: int) -> None:
    """Record a started broker; written to a temporary file and renamed, so a concurrent
    ``status`` never reads half a file."""
    state = {
        "pid": pid,
        "bootstrap": broker.bootstrap,
        "port": broker.port,
        "controller_port": broker.controller_port,
        "kafka_version": broker.kafka_version,
        "log": str(broker.log_path),
        "stdout": str(broker.stdout_path),
        "started_at": time.time(),
    }
    tmp = state_path(broker.data_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.replace(state_path(broker.data_dir))


def clear_state(data_dir: Path) -> None:
    state_path(data_dir).unlink(missing_ok=True)


def running_pid(data_dir: Path) -> tuple[int, dict[str, Any]] | None:
    """(pid, state) of the recorded broker if it still runs, else None (stale state)."""
    state = read_state(data_dir)
    if state is None or not isinstance(state.get("pid"), int):
        return None
    if not is_our_broker(state["pid"], data_dir):
        return None
    return state["pid"], state


def describe(state: Mapping[str, Any]) -> str:
    """The ``key=value`` line ``start`` and ``status`` print, which scripts parse."""
    return f"bootstrap={state['bootstrap']} pid={state['pid']} log={state['log']}"
