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

from .cluster import LocalCluster
from .lifecycle import LocalBroker
from .procs import pid_alive
from .security import SecurityFiles

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
    """Guard against pid reuse: the process must be kafka.Kafka on this data dir (or on a
    ``node-<id>`` directory in it, for a cluster)."""
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if b"kafka.Kafka" not in cmdline:
        return False
    props = str(data_dir / "server.properties").encode()
    nodes = str(data_dir / "node-").encode()
    return any(arg == props or (arg.startswith(nodes) and arg.endswith(b"/server.properties"))
               for arg in cmdline)


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
        **_security_state(broker.security_files, broker.internal_port),
    }
    _write(broker.data_dir, state)


def write_cluster_state(cluster: LocalCluster, pids: list[int]) -> None:
    """Record a started cluster: ``pids`` lists every member, ``pid`` is the first one."""
    state = {
        "pid": pids[0],
        "pids": pids,
        "brokers": len(cluster.brokers),
        "bootstrap": cluster.bootstrap,
        "ports": [b.port for b in cluster.brokers],
        "controller_ports": [b.controller_port for b in cluster.brokers],
        "kafka_version": cluster.kafka_version,
        "log": str(cluster.brokers[0].log_path),
        "logs": [str(b.log_path) for b in cluster.brokers],
        "started_at": time.time(),
        **_security_state(cluster.security_files, None),
    }
    if cluster.security_files is not None:
        state["internal_ports"] = [b.internal_port for b in cluster.brokers]
    _write(cluster.data_dir, state)


def _security_state(files: SecurityFiles | None, internal_port: int | None) -> dict[str, Any]:
    """Where a secured broker's client files are (paths only, never the password)."""
    if files is None:
        return {}
    state: dict[str, Any] = {
        "security": "sasl_ssl",
        "client_config": str(files.client_properties_path),
        "client_env": str(files.client_env_path),
        "password_file": str(files.password_path),
        "ca": str(files.ca_path),
    }
    if internal_port is not None:
        state["internal_port"] = internal_port
    return state


def _write(data_dir: Path, state: Mapping[str, Any]) -> None:
    tmp = state_path(data_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.replace(state_path(data_dir))


def clear_state(data_dir: Path) -> None:
    state_path(data_dir).unlink(missing_ok=True)


def running_pids(data_dir: Path) -> tuple[list[int], dict[str, Any]] | None:
    """(pids still running, state) of the recorded broker or cluster members, else None
    (stale state)."""
    state = read_state(data_dir)
    if state is None:
        return None
    recorded = state.get("pids", [state.get("pid")])
    if not isinstance(recorded, list):
        return None
    pids = [p for p in recorded if isinstance(p, int) and is_our_broker(p, data_dir)]
    return (pids, state) if pids else None


def describe(state: Mapping[str, Any]) -> str:
    """The ``key=value`` line ``start`` and ``status`` print, which scripts parse."""
    secured = (f" security={state['security']} client_config={state['client_config']}"
               if state.get("security") else "")
    if "pids" in state:
        pids = ",".join(map(str, state["pids"]))
        return f"bootstrap={state['bootstrap']} pids={pids} log={state['log']}{secured}"
    return f"bootstrap={state['bootstrap']} pid={state['pid']} log={state['log']}{secured}"
