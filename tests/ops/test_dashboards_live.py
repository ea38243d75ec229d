"""Every Grafana panel query against a real Prometheus scraping a real pipeline.

sim server -> ``pvaflow bridge`` -> ``pvaflow consume`` (rotate) -> ``pvaflow collect``, plus
``pvaflow monitor``, on the real broker; Debian's Prometheus scrapes each ``/metrics`` every
second. Then every ``expr`` of every dashboard (``$group`` -> ``.*``) runs through
``/api/v1/query`` and must return data: a renamed or misspelled metric fails here.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from pvaflow.process import die_with_parent, free_port

from .conftest import dashboards, panel_queries

pytestmark = pytest.mark.integration


class Procs:
    """Child processes of one test, each logging to a file; stopped by pid, newest first."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, args: Sequence[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "wb") as log:
            p = subprocess.Popen(list(args), stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, cwd=cwd, preexec_fn=die_with_parent,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.running.append((name, p))
        return p

    def check_alive(self) -> None:
        for name, p in self.running:
            if p.poll() is not None:
                raise AssertionError(f"{name} exited with {p.returncode}:\n"
                                     + self.log(name)[-3000:])

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for _name, p in reversed(self.running):
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)
        for _name, p in reversed(self.running):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                p.wait(10)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


def pvaflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "pvaflow.cli", *args]


def get_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


class Prom:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def query(self, expr: str) -> list[dict[str, Any]]:
        q = urllib.parse.urlencode({"query": expr, "time": f"{time.time():.3f}"})
        body = get_json(f"{self.base}/api/v1/query?{q}")
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def label_values(self, label: str, match: str) -> list[str]:
        q = urllib.parse.urlencode({"match[]": match})
        body = get_json(f"{self.base}/api/v1/label/{label}/values?{q}")
        assert body["status"] == "success", body
        values: list[str] = body["data"]
        return values

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = get_json(f"{self.base}/api/v1/targets")["data"][
            "activeTargets"]
        return active


def wait_until(cond: Callable[[], Any], timeout: float, what: str, procs: Procs) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        procs.check_alive()
        with contextlib.suppress(OSError, ValueError):
            last = cond()
            if last:
                return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def expressions() -> list[tuple[str, str, str]]:
    """(dashboard, panel, expr) with template variables set to match everything."""
    out = []
    for fname, board in dashboards().items():
        for title, expr in panel_queries(board):
            out.append((fname, title, expr.replace("$group", ".*")))
    return out


def test_dashboard_inventory() -> None:
    """The dashboards query pvaflow metrics of every component (not an empty file)."""
    exprs = " ".join(e for _, _, e in expressions())
    for metric in ("pvaflow_bridge_frames_received_total", "pvaflow_frames_processed_total",
                   "pvaflow_collector_frames_emitted_total", "pvaflow_stage_frames_lost_total",
                   "pvaflow_consumer_lag_messages", "pvaflow_end_to_end_latency_seconds_bucket"):
        assert metric in exprs, metric
    assert len(expressions()) >= 40


def test_every_panel_query_returns_data(
    tmp_path: Path, procs: Procs, prometheus_bin: Path, sim_server: Callable[..., Any],
    make_topic: Callable[..., str], kafka_bootstrap: str, pva_env: dict[str, str],
) -> None:
    run = uuid.uuid4().hex[:6]
    frames = make_topic(2, suffix="frames")
    rotated, ordered = f"ops-{run}-rotated", f"ops-{run}-ordered"
    status, control = f"ops-{run}-status", f"ops-{run}-control"
    group, cgroup = f"ops-{run}-rotate", f"ops-{run}-collector"
    sim = sim_server(nx=32, ny=32, fps=50, n_frames=20)
    ports = {name: free_port() for name in ("bridge", "consumer", "collector", "monitor")}
    prom_port = free_port(exclude=list(ports.values()))
    common = ["-b", kafka_bootstrap, "--status-topic", status, "--control-topic", control,
              "--report-period", "1", "--log-level", "warning"]

    def own_pva_port() -> dict[str, str]:
        """Components that may serve PVA get their own TCP port (never the bridge: a PVA
        client with a server port set changes its search)."""
        port = str(free_port())
        return {"EPICS_PVA_SERVER_PORT": port, "EPICS_PVAS_SERVER_PORT": port}

    procs.start("monitor", pvaflow(
        "monitor", "-b", kafka_bootstrap, "--status-topic", status, "--app-id",
        f"ops-{run}-monitor", "--web-host", "127.0.0.1", "--web-port", str(ports["monitor"]),
        "--stale-after", "10", "--log-level", "warning"), cwd=tmp_path)
    procs.start("collector", pvaflow(
        "collect", "--input-topic", rotated, "--output-topic", ordered, "--group", cgroup,
        "--metrics-port", str(ports["collector"]), *common), env=own_pva_port())
    procs.start("consumer", pvaflow(
        "consume", "--input-topic", frames, "--processor", "rotate", "--group", group,
        "--output-topic", rotated, "--output-partitions", "2",
        "--metrics-port", str(ports["consumer"]), *common), env=own_pva_port())
    procs.start("bridge", pvaflow(
        "bridge", "--input-channel", sim.channel, "--topic", frames, "--partitions", "2",
        "--metrics-port", str(ports["bridge"]), *common), env=pva_env)

    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms",
                   "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": f"pvaflow-{name}",
             "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for name, port in ports.items()],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    procs.start("prometheus", [
        str(prometheus_bin), f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"])
    prom = Prom(prom_port)

    def all_up() -> bool:
        targets = prom.targets()
        return len(targets) == len(ports) and all(t["health"] == "up" for t in targets)

    wait_until(all_up, 60, "every scrape target up", procs)

    def emitted() -> float:
        r = prom.query("sum(pvaflow_collector_frames_emitted_total)")
        return float(r[0]["value"][1]) if r else 0.0

    # Frames flow end to end, and rate() windows hold several samples of the flowing counters.
    wait_until(lambda: emitted() >= 100, 60, "100 frames through the collector", procs)
    wait_until(lambda: prom.query("pvaflow_stage_components"), 30,
               "the monitor's stage metrics", procs)
    time.sleep(5)

    # A misspelled metric returns nothing: the check below can fail.
    assert prom.query("sum(rate(pvaflow_no_such_metric_total[30s]))") == []
    exprs = expressions()
    empty: list[str] = []
    for _ in range(20):  # a late first sample (lag, monitor) gets a few more scrapes
        procs.check_alive()
        empty = [f"{d} / {t}: {e}" for d, t, e in exprs if not prom.query(e)]
        if not empty:
            break
        time.sleep(1)
    assert not empty, "panel queries without data:\n" + "\n".join(empty)

    for board in dashboards().values():
        for var in board["templating"]["list"]:
            if var["type"] != "query":
                continue
            q = var["query"]["query"]
            assert q.startswith("label_values(") and q.endswith(")"), q
            metric, label = (s.strip() for s in q[len("label_values("):-1].split(","))
            assert group in prom.label_values(label, metric), q

    # The numbers behind the panels are the pipeline's: frames went through every stage.
    through = {e: float(prom.query(e)[0]["value"][1]) for e in (
        "sum(pvaflow_bridge_frames_delivered_total)", "sum(pvaflow_frames_processed_total)",
        "sum(pvaflow_collector_frames_emitted_total)")}
    assert all(v >= 100 for v in through.values()), through
