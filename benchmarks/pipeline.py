"""End to end: PvaPy's HPC pipeline against pvaflow's, and a bare-Kafka pipeline of the same shape.

One ``pvapy-ad-sim-server`` per trial feeds the pipeline under test:

* ``pvapy``: 2 x ``pvapy-hpc-consumer`` (``-nc 2 --distributor-updates 1``, the default
  ``UserDataProcessor`` republishing each frame on ``<tag>:p:<id>:output``) ->
  ``pvapy-hpc-collector -pid 1,2`` (reorders, publishes ``<tag>:c:1:output``) -> a PVA
  subscriber that counts frames and times them;
* ``pvaflow``: ``pvaflow bridge`` -> Kafka -> ``pvaflow consumer --n-consumers 2 --processor
  passthrough`` -> ``pvaflow collector --output-topic`` (the ordered topic is read after the
  trial for its records' timestamps, and, in latency trials, live by a read_committed reader,
  which sees each frame when the transaction holding it commits);
* ``bare``: a bare confluent-kafka producer (paced, the same frame bytes) -> 2 bare
  consume->produce processes -> a bare consumer: the Kafka ceiling on this machine; its relays
  and consumer take what is fetched without waiting for a batch to fill, as pvaflow's stages
  do (``pvaflow.kafka.consume.take``), so its latency is a floor too;
* ``pva-bare``: the same bare downstream fed from the sim server by a bare PVA monitor that
  produces each frame's pixels (``role_pva_produce``): the ceiling of any PVA-to-Kafka
  pipeline on this machine, which pays for the sim server and the pvAccess receive as
  pvaflow's does and the ``bare`` producer does not.

A rate passes when every published frame comes out of the collector (each component's own final
counts). Each ladder starts at its middle rung and goes up while trials pass, down while they
fail (a failure is retried once: the machine is shared). Latency (source timestamp -> out of
the collector) is measured in a separate trial at half the highest zero-loss rate. CPU per
process is read from /proc over the publishing
window (a process's children included), and the load average is recorded for each trial.
A failed trial's logs are kept (``pvaflow-bench-failed`` in the temporary directory; the path
is printed) so that a harness failure can be told from a limit.

    .venv/bin/python -m benchmarks.pipeline            # ~20 min on a loaded 2-core box
    .venv/bin/python -m benchmarks.pipeline --quick    # smoke run, 2-3 min
    .venv/bin/python -m benchmarks.pipeline --render   # rewrite the doc from the JSON
    # latency only, pipelines taking turns (on $PVAFLOW_BOOTSTRAP's broker, if set)
    .venv/bin/python -m benchmarks.pipeline --latency-only --latency-at 2000 --repeat 3 \
        --only pvaflow --only pva-bare --config '128x128 uint8' --label lat2000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bridge import (
    SHUTDOWN_DELAY,
    _default_sigint,
    _pid_listening,
    free_tcp_port,
    pva_env,
)
from benchmarks.report import (
    IMG,
    RESULTS,
    delete_topics,
    kafka_thread_cpu,
    load_average,
    percentile,
    process_tree_cpu,
    table,
    write_section,
)
from pvaflow.kafka.settings import ENV_PREFIX, parse_override

VENV_BIN = Path(sys.executable).parent
PY = sys.executable
PARTITIONS = 2
UDP = "pvapy.hpc.userDataProcessor.UserDataProcessor"

# source: "gen" = the sim server's random frames, "h5c" = the realistic HDF5 file's bslz4
# chunks sent as they are (-hcm), "h5" = the same file decompressed by the sim server
CONFIGS: dict[str, dict[str, Any]] = {
    "128x128 uint8": {"source": "gen", "nx": 128, "ny": 128, "dt": "uint8", "sqs": 1000,
                      "rates": [250, 500, 1000, 2000, 4000]},
    # Rungs above the rates every pipeline passed (100 and 200 until 2026-12-04): a ratio of
    # two pipelines that both pass the top rung says nothing about which one is faster.
    "1024x1024 uint16 random": {"source": "gen", "nx": 1024, "ny": 1024, "dt": "uint16",
                                "sqs": 200,
                                "rates": [10, 25, 50, 60, 70, 80, 90, 100, 120, 150, 200]},
    "1024x1024 uint16 realistic bslz4": {"source": "h5c", "nx": 1024, "ny": 1024,
                                         "dt": "uint16", "sqs": 200,
                                         "rates": [25, 50, 100, 200, 400, 800, 1400]},
}
# pvaflow only: the bridge compresses uncompressed sources (--codec bslz4) against raw
CODEC_ROWS: dict[str, dict[str, Any]] = {
    "1024x1024 uint16 random": {**CONFIGS["1024x1024 uint16 random"], "rates": [10, 25, 50]},
    "1024x1024 uint16 realistic (raw at the source)": {
        "source": "h5", "nx": 1024, "ny": 1024, "dt": "uint16", "sqs": 200,
        "rates": [10, 25, 50]},
}
PIPELINES = ("pvapy", "pvaflow", "bare", "pva-bare")
# The live reader of pvaflow's ordered topic in latency trials: its isolation.level, and the
# key of its figures in the trial's latency_ms ("committed" since the first such runs).
_READER_KEYS = {"read_committed": "committed", "read_uncommitted": "uncommitted"}


def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        # SIGINT ends every tool with its final report; a parent started in the background
        # (SIGINT ignored) would pass that on and the report would never come
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_default_sigint)


def stop(proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_until(cond: Callable[[], bool], timeout: float, poll: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(poll)
    return cond()


def last_int(pattern: str, text: str, default: int = -1) -> int:
    found = re.findall(pattern, text)
    return int(found[-1]) if found else default


class Trial:
    """One pipeline, one source, one rate."""

    def __init__(self, pipeline: str, cfg: dict[str, Any], rate: float, seconds: float,
                 bootstrap: str, broker_pid: int | None, workdir: Path, h5: Path,
                 bridge_args: Sequence[str] = (), latency: bool = False,
                 reorder_only: bool = False, collector_args: Sequence[str] = (),
                 latency_profile: bool = False, reader_isolation: str = "read_committed"
                 ) -> None:
        self.pipeline, self.cfg, self.rate, self.seconds = pipeline, cfg, rate, seconds
        self.bootstrap, self.broker_pid, self.workdir, self.h5 = (bootstrap, broker_pid,
                                                                  workdir, h5)
        self.bridge_args, self.latency = list(bridge_args), latency
        # --reorder-only: the collector writes no ordered topic, the bare pipeline's shape
        self.reorder_only = reorder_only
        self.collector_args = list(collector_args)
        self.latency_profile = latency_profile  # --latency on every pvaflow component
        self.reader_isolation = reader_isolation  # of the ordered topic's live reader
        self.tag = uuid.uuid4().hex[:6]
        self.kafka_cpu: dict[str, float] = {}
        # sim start delay: PvaPy's consumers connect in it; pvaflow and bare wait for their
        # groups' readiness before the sim starts, and then the bridge connects in it
        self.delay = 8.0 if pipeline == "pvapy" else 6.0

    def log(self, name: str) -> Path:
        return self.workdir / f"{self.pipeline}-{self.tag}-{name}.log"

    def sim_cmd(self, channel: str) -> list[str]:
        c = self.cfg
        cmd = [str(VENV_BIN / "pvapy-ad-sim-server"), "-cn", channel, "-fps", str(self.rate),
               "-rt", str(self.seconds), "-std", str(self.delay), "-shd", str(SHUTDOWN_DELAY),
               "-rp", "0", "-dc"]
        if c["source"] == "gen":
            return [*cmd, "-nx", str(c["nx"]), "-ny", str(c["ny"]), "-dt", c["dt"], "-nf", "20"]
        cmd += ["-if", str(self.h5), "-hds", "/entry/data/data", "-nf", "0"]
        return [*cmd, "-hcm"] if c["source"] == "h5c" else cmd

    def run(self) -> dict[str, Any]:
        load0 = load_average()
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            res = getattr(self, f"_run_{self.pipeline.replace('-', '_')}")(procs)
        finally:
            for p in procs.values():
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
            self._delete_topics()
        res.update(pipeline=self.pipeline, rate=self.rate, load=[load0, load_average()],
                   bridge_args=self.bridge_args)
        res["ok"] = bool(res["published"] > 0 and res["out"] >= res["published"]
                         and not res.get("lost"))
        if not res["ok"]:
            self._keep_logs()
        return res

    def _delete_topics(self) -> None:
        """This trial's topics (its tag is in their names), measured and no longer needed: a
        full run of 2 MiB frames left tens of GB on its broker and filled the disk."""
        from confluent_kafka.admin import AdminClient

        try:
            names = AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(
                timeout=30).topics
        except Exception as exc:  # a broker that is gone has nothing to delete
            print(f"warning: could not list topics: {exc}", file=sys.stderr)
            return
        delete_topics(self.bootstrap, [t for t in names if self.tag in t])

    def _keep_logs(self) -> None:
        """A failed trial's logs outlive the run's temporary folder: a failure that is the
        harness's (a component that never connected, or died) must be told from a limit."""
        kept = KEPT_LOGS / f"{self.pipeline}-{self.rate:g}-{self.tag}"
        kept.mkdir(parents=True, exist_ok=True)
        for log in self.workdir.glob(f"{self.pipeline}-{self.tag}-*.log"):
            shutil.copy2(log, kept)
        print(f"    logs of the failed trial: {kept}", flush=True)

    def _measure(self, procs: dict[str, subprocess.Popen[bytes]]) -> dict[str, float]:
        """CPU (% of one core) per process tree over the publishing window; blocks until then."""
        pids = {k: p.pid for k, p in procs.items() if k != "sim"}
        pids["sim"] = procs["sim"].pid
        if self.broker_pid:
            pids["broker"] = self.broker_pid
        # pvaflow's processes: also the part spent in librdkafka's own threads
        rdk = {k: p for k, p in pids.items() if k in ("bridge", "consumers", "collector")}
        time.sleep(self.delay + 0.5)
        cpu0 = {k: process_tree_cpu(p) for k, p in pids.items()}
        rdk0 = {k: kafka_thread_cpu(p) for k, p in rdk.items()}
        t0 = time.monotonic()
        time.sleep(max(self.seconds - 1.0, 0.5))
        wall = time.monotonic() - t0
        self.kafka_cpu = {k: round((kafka_thread_cpu(p) - rdk0[k]) / wall * 100, 1)
                          for k, p in rdk.items()}
        return {k: round((process_tree_cpu(p) - cpu0[k]) / wall * 100, 1)
                for k, p in pids.items()}

    def _published(self) -> int:
        return last_int(r"Published frames:\s+(\d+)", self.log("sim").read_text(), 0)

    def _publish(self, procs: dict[str, subprocess.Popen[bytes]], channel: str,
                 env: dict[str, str]) -> tuple[dict[str, float], int]:
        """Serves ``channel`` from a sim server on a port of its own, measures CPU over the
        publishing window and waits for the server's end: (CPU, frames published)."""
        port = str(free_tcp_port())
        procs["sim"] = spawn(self.sim_cmd(channel), self.log("sim"),
                             {**env, "EPICS_PVAS_SERVER_PORT": port,
                              "EPICS_PVA_SERVER_PORT": port})
        cpu = self._measure(procs)
        procs["sim"].wait(self.seconds + 120)
        return cpu, self._published()

    def _stop_bridge(self, procs: dict[str, subprocess.Popen[bytes]], published: int,
                     taken: Callable[[], int]) -> None:
        """The bridge may still be taking frames from its PVA queues: stop it once its own
        count (``taken``) has every published frame, or has stopped moving for 5 s."""
        took: list[int] = []

        def caught_up() -> bool:
            took.append(taken())
            return took[-1] >= published or (len(took) > 10 and took[-1] == took[-11])
        wait_until(caught_up, 60, 0.5)
        stop(procs["bridge"], 120)

    # -- PvaPy ---------------------------------------------------------------------------

    def _run_pvapy(self, procs: dict[str, subprocess.Popen[bytes]]) -> dict[str, Any]:
        env = pva_env()
        channel = f"b{self.tag}:image"
        sqs = str(self.cfg["sqs"])
        procs["sink"] = spawn([PY, "-m", "benchmarks.pipeline", "--role", "pva-sink",
                               "--channel", f"b{self.tag}:c:1:output"], self.log("sink"), env)
        procs["collector"] = spawn(
            [str(VENV_BIN / "pvapy-hpc-collector"), "-id", "1", "-pid", "1,2", "-ic",
             f"b{self.tag}:p:*:output", "-oc", f"b{self.tag}:c:*:output", "-pc", UDP,
             "-sqs", sqs, "-rp", "1000", "-dc"], self.log("collector"), env)
        procs["consumers"] = spawn(
            [str(VENV_BIN / "pvapy-hpc-consumer"), "-ic", channel, "-oc",
             f"b{self.tag}:p:*:output", "-pc", UDP, "-nc", "2", "-du", "1", "-sqs", sqs,
             "-rp", "1000", "-dc"], self.log("consumers"), env)
        cpu, published = self._publish(procs, channel, env)
        sink_count = _count_path(self.tag)
        # the sink samples the output for latency (its monitor may skip frames): wait
        # until it stops moving
        seen: list[int] = []

        def settled() -> bool:
            seen.append(_read_int(sink_count))
            return len(seen) > 4 and seen[-1] == seen[-5]
        wait_until(settled, 30)
        for name in ("consumers", "collector", "sink"):
            stop(procs[name])
        con = self.log("consumers").read_text(errors="replace")
        col = self.log("collector").read_text(errors="replace")
        sink = _json_line(self.log("sink").read_text(errors="replace"))
        # PvaPy's final statistics: one dict per consumer, then the combined one (last)
        processed = last_int(r"'nProcessed': (\d+)", con, 0)
        missed = last_int(r"'nMissed': (\d+)", con, 0)
        overruns = last_int(r"'nOverruns': (\d+)", con, 0)
        col = col[col.rfind("'collectorId'"):]
        # what the collector processed and published on its output (its first object is
        # the source's initial value, uniqueId 0)
        out = last_int(r"'nProcessed': (\d+)", col, 0)
        col_missed = sum(int(x) for x in re.findall(r"'n(?:Missed|Overruns)': (\d+)", col))
        return {"published": published, "out": out, "cpu": cpu,
                "lost": missed + overruns + max(col_missed, 0),
                "counts": {"consumers_processed": processed, "consumers_missed": missed,
                           "consumers_overruns": overruns, "collector_processed": out,
                           "collector_missed": col_missed, "sink": sink.get("count", 0)},
                "latency_ms": sink.get("latency_ms")}

    # -- pvaflow -------------------------------------------------------------------------

    def _run_pvaflow(self, procs: dict[str, subprocess.Popen[bytes]]) -> dict[str, Any]:
        env = pva_env()
        channel = f"f{self.tag}:image"
        frames, done, ordered = (f"bench-{self.tag}-{x}" for x in ("frames", "done", "ordered"))
        common = ["-b", self.bootstrap, "-rp", "1", "-ll", "warning",
                  *(["--latency"] if self.latency_profile else [])]
        pvaflow = [PY, "-m", "pvaflow.cli"]
        from pvaflow.kafka.topics import ensure_topic

        for t in (frames, done):
            ensure_topic(t, PARTITIONS, bootstrap=self.bootstrap)
        ports = [free_tcp_port(), free_tcp_port(), free_tcp_port()]
        procs["collector"] = spawn(
            [*pvaflow, "collector", "-it", done, *([] if self.reorder_only else ["-ot", ordered]),
             "-g", f"col-{self.tag}",
             "--status-topic", "", "--metrics-port", str(ports[0]), *self.collector_args,
             *common],
            self.log("collector"), env)
        procs["consumers"] = spawn(
            [*pvaflow, "consumer", "-it", frames, "-ot", done, "-g", f"con-{self.tag}",
             "--n-consumers", "2", "--processor", "passthrough", "--status-topic", "",
             "--metrics-port", str(ports[1]), *common], self.log("consumers"), env)
        procs["bridge"] = spawn(
            [*pvaflow, "bridge", "-ic", channel, "-t", frames, "--partitions", str(PARTITIONS),
             "-sqs", str(self.cfg["sqs"]), "--status-topic", "", "--metrics-port",
             str(ports[2]), *self.bridge_args, *common],
            self.log("bridge"), env)
        # publishing starts once the collector and both consumers hold their partitions
        wait_until(lambda: all(_ready(p) for p in (ports[0], ports[1], ports[1] + 1)), 120)
        reader = self.latency and not self.reorder_only
        if reader:  # what a downstream reader sees: frames as their transaction commits
            procs["reader"] = spawn([*self._role, "bare-sink", "--topic", ordered, "--tag",
                                     self.tag, "--isolation", self.reader_isolation],
                                    self.log("reader"))
            wait_until(lambda: "assigned" in self.log("reader").read_text(), 120)
        cpu, published = self._publish(procs, channel, env)
        self._stop_bridge(procs, published, lambda: _metric_total(
            ports[2], ("pvaflow_bridge_frames_received_total",
                       "pvaflow_bridge_source_missed_frames_total")))
        from pvaflow.bridge.stats import parse_final

        try:
            b = parse_final(self.log("bridge").read_text(errors="replace"))[0]
        except ValueError:
            b = {"received": 0, "missed": 0, "overruns": 0, "dropped": 0, "delivery_errors": 0}

        def emitted() -> int:
            return last_int(r"emitted (\d+)", self.log("collector").read_text(errors="replace"),
                            0)
        # drain: the collector has emitted all the bridge received, or stopped moving
        marks: list[int] = []

        def drained() -> bool:
            marks.append(emitted())
            return marks[-1] >= b["received"] or (len(marks) > 20 and marks[-1] == marks[-21])
        wait_until(drained, 90, 0.5)
        stop(procs["consumers"])
        stop(procs["collector"])
        if reader:
            wait_until(lambda: _read_int(_count_path(self.tag)) >= emitted(), 30)
            stop(procs["reader"])
        col_text = self.log("collector").read_text(errors="replace")
        m = re.search(r"final stats: (\{.*\})", col_text)
        col = json.loads(m.group(1)) if m else {"emitted": 0, "missed": 0}
        lost = (b["missed"] + b["overruns"] + b["dropped"] + b["delivery_errors"]
                + col.get("missed", 0))
        res: dict[str, Any] = {
            "published": published, "out": col.get("emitted", 0), "lost": lost, "cpu": cpu,
            "cpu_kafka_threads": self.kafka_cpu,
            "counts": {"bridge": {k: b.get(k) for k in ("received", "missed", "overruns",
                                                         "dropped", "delivery_errors")},
                       "collector": {k: col.get(k) for k in ("received", "emitted", "missed",
                                                              "late", "duplicates")}}}
        if self.latency:
            stages = {"bridge": frames, "consumer": done}
            res["latency_ms"] = {}
            if not self.reorder_only:  # the collector's ordered topic holds the last stamps
                stages["collector"] = ordered
                res["latency_ms"] = ordered_latency(self.bootstrap, ordered,
                                                    col.get("emitted", 0)) or {}
                res["latency_ms"][_READER_KEYS[self.reader_isolation]] = _json_line(
                    self.log("reader").read_text(errors="replace")).get("latency_ms")
            res["latency_ms"]["stages"] = stage_latency(self.bootstrap, stages,
                                                        col.get("emitted", 0))
        return res

    # -- bare Kafka ----------------------------------------------------------------------

    def _bare_downstream(self, procs: dict[str, subprocess.Popen[bytes]]) -> str:
        """The bare relays and sink, holding their partitions; returns the input topic."""
        from pvaflow.kafka.topics import ensure_topic

        src, mid = (f"{self.pipeline}-{self.tag}-{x}" for x in ("in", "out"))
        for t in (src, mid):
            ensure_topic(t, PARTITIONS, bootstrap=self.bootstrap)
        procs["sink"] = spawn([*self._role, "bare-sink", "--topic", mid, "--tag", self.tag],
                              self.log("sink"))
        procs["relays"] = spawn([*self._role, "bare-relays", "--topic", src, "--out", mid,
                                 "--tag", self.tag], self.log("relays"))
        # publishing starts once both relays and the sink hold partitions
        wait_until(lambda: self.log("relays").read_text().count("assigned") >= 2
                   and "assigned" in self.log("sink").read_text(), 120)
        return src

    def _bare_out(self, procs: dict[str, subprocess.Popen[bytes]], produced: int
                  ) -> dict[str, Any]:
        """Waits for the sink to count ``produced`` records (or 60 s), stops the downstream."""
        sink_count = _count_path(self.tag)
        wait_until(lambda: _read_int(sink_count) >= produced, 60)
        stop(procs["relays"])
        stop(procs["sink"])
        return _json_line(self.log("sink").read_text(errors="replace"))

    @property
    def _role(self) -> list[str]:
        return [PY, "-m", "benchmarks.pipeline", "-b", self.bootstrap, "--role"]

    def _run_bare(self, procs: dict[str, subprocess.Popen[bytes]]) -> dict[str, Any]:
        src = self._bare_downstream(procs)
        n = round(self.rate * self.seconds)
        procs["sim"] = spawn([*self._role, "bare-produce", "--topic", src, "--rate",
                              str(self.rate), "--frames", str(n), "--delay", str(self.delay),
                              "--source", self.cfg["source"], "--h5", str(self.h5), "--shape",
                              f"{self.cfg['ny']}x{self.cfg['nx']}x{self.cfg['dt']}"],
                             self.log("sim"))
        cpu = self._measure(procs)
        cpu["producer"] = cpu.pop("sim")
        procs["sim"].wait(self.seconds + 120)
        prod = _json_line(self.log("sim").read_text(errors="replace"))
        sink = self._bare_out(procs, prod.get("produced", 0))
        behind = prod.get("behind_s", 99.0)
        return {"published": prod.get("produced", 0), "out": sink.get("count", 0), "cpu": cpu,
                "lost": int(behind > 1.0), "counts": {"producer": prod, "sink": sink.get(
                    "count", 0), "sink_duplicates": sink.get("duplicates")},
                "latency_ms": sink.get("latency_ms")}

    # -- bare Kafka fed by PVA -----------------------------------------------------------

    def _run_pva_bare(self, procs: dict[str, subprocess.Popen[bytes]]) -> dict[str, Any]:
        env = pva_env()
        channel = f"p{self.tag}:image"
        src = self._bare_downstream(procs)
        procs["bridge"] = spawn([*self._role, "pva-produce", "--channel", channel, "--topic",
                                 src, "--tag", self.tag, "--sqs", str(self.cfg["sqs"])],
                                self.log("bridge"), env)
        wait_until(lambda: "subscribed" in self.log("bridge").read_text(), 60)
        cpu, published = self._publish(procs, channel, env)
        self._stop_bridge(procs, published,
                          lambda: _read_int(_count_path(self.tag, "bridge")))
        bridge = _json_line(self.log("bridge").read_text(errors="replace"))
        sink = self._bare_out(procs, bridge.get("produced", 0))
        return {"published": published, "out": sink.get("count", 0), "cpu": cpu,
                "cpu_kafka_threads": self.kafka_cpu,
                "lost": bridge.get("overruns", 0),
                "counts": {"bridge": bridge, "sink": sink.get("count", 0),
                           "sink_duplicates": sink.get("duplicates")},
                "latency_ms": sink.get("latency_ms")}


def _get(port: int, path: str) -> str | None:
    """A component's HTTP page on 127.0.0.1, or None if it does not answer 200."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.read().decode() if r.status == 200 else None
    except OSError:
        return None


def _ready(port: int) -> bool:
    return _get(port, "/readyz") is not None


def _metric_total(port: int, names: Sequence[str]) -> int:
    """The sum of the named counters' samples on a component's /metrics (0 if unreachable)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = _get(port, "/metrics") or ""
    return int(sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name in names))


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (OSError, ValueError):
        return 0


def _json_line(text: str) -> dict[str, Any]:
    for line in reversed(text.splitlines()):
        if line.startswith("{") and line.endswith("}"):
            try:
                result: dict[str, Any] = json.loads(line)
                return result
            except ValueError:
                continue
    return {}


STEADY_AFTER_MS = 6000.0  # start-up: group joins, first fetches, warm caches


def summary(pairs: Sequence[tuple[float, float]]) -> dict[str, float] | None:
    """Percentiles of (source ms, latency ms) pairs: all of them, and the steady state: frames
    sourced more than STEADY_AFTER_MS after the first one (before that, the consumers and
    the collector are still joining their groups and making their first fetches)."""
    if not pairs:
        return None
    lat = [x for _, x in pairs]
    first = min(t for t, _ in pairs)
    steady = [x for t, x in pairs if t - first > STEADY_AFTER_MS]
    out = {"p50": round(percentile(lat, 50), 2), "p99": round(percentile(lat, 99), 2),
           "n": len(lat)}
    if steady:
        out.update(p50_steady=round(percentile(steady, 50), 2),
                   p99_steady=round(percentile(steady, 99), 2), n_steady=len(steady))
    return out


def _source_ms(headers: Any) -> float | None:
    """A frame's EPICS timestamp (``pf.ts``) in ms since the epoch, if the record has one."""
    ts = dict(headers or []).get("pf.ts")
    if ts is None:
        return None
    sec, ns, _ = (ts if isinstance(ts, bytes) else ts.encode()).split(b".")
    return int(sec) * 1e3 + int(ns) / 1e6


def ordered_latency(bootstrap: str, topic: str, n: int) -> dict[str, float] | None:
    """Source (EPICS) timestamp -> the record's Kafka timestamp in the collector's ordered
    topic (set when the collector produced it), for every frame there."""
    from confluent_kafka import Consumer

    from pvaflow.kafka.settings import consumer_config

    c = Consumer(consumer_config(f"lat-{uuid.uuid4().hex[:6]}", bootstrap))
    c.subscribe([topic])
    lat: list[tuple[float, float]] = []
    deadline = time.monotonic() + 60
    while len(lat) < n and time.monotonic() < deadline:
        for m in c.consume(200, 1.0):
            if m.error() is not None:
                continue
            src = _source_ms(m.headers())
            if src is not None:
                lat.append((src, m.timestamp()[1] - src))
    c.close()
    return summary(lat)


def stage_latency(bootstrap: str, topics: dict[str, str], n: int) -> dict[str, Any]:
    """Where the latency comes from: for each stage, the Kafka timestamp of a frame's record
    on the stage's output topic minus the previous stage's (the source's EPICS timestamp for
    the first stage), matched by key (uniqueId); steady-state percentiles (see summary)."""
    from confluent_kafka import Consumer, TopicPartition

    from pvaflow.kafka.settings import consumer_config

    stamps: dict[str, dict[bytes, float]] = {}
    src: dict[bytes, float] = {}
    for stage, topic in topics.items():
        c = Consumer(consumer_config(f"lat-{uuid.uuid4().hex[:6]}", bootstrap))
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        seen: dict[bytes, float] = {}
        deadline = time.monotonic() + 60
        while len(seen) < n and time.monotonic() < deadline:
            for m in c.consume(500, 1.0):
                key = m.key()
                if m.error() is not None or key is None:
                    continue
                seen.setdefault(key, float(m.timestamp()[1]))
                if key not in src:
                    ms = _source_ms(m.headers())
                    if ms is not None:
                        src[key] = ms
        c.close()
        stamps[stage] = seen
    out: dict[str, Any] = {}
    prev = src
    for stage, seen in stamps.items():
        pairs = [(src[k], t - prev[k]) for k, t in seen.items() if k in prev and k in src]
        out[stage] = summary(pairs)
        prev = seen
    return out


# -- child roles ---------------------------------------------------------------------------

def _stopper() -> list[bool]:
    flag = [False]

    def handler(*_: Any) -> None:
        flag[0] = True
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return flag


def role_pva_sink(channel: str, count_file: Path) -> None:
    import pvaccess as pva

    stopped = _stopper()
    lat: list[tuple[float, float]] = []

    def on(pv: Any) -> None:
        ts = pv["timeStamp"]
        if not ts["secondsPastEpoch"]:  # the source's initial value (uniqueId 0)
            return
        src = ts["secondsPastEpoch"] * 1e3 + ts["nanoseconds"] / 1e6
        lat.append((src, time.time() * 1e3 - src))
    ch = pva.Channel(channel)
    ch.subscribe("s", on)
    ch.startMonitor()
    while not stopped[0]:
        time.sleep(0.2)
        count_file.write_text(str(len(lat)))
    ch.stopMonitor()
    print(json.dumps({"count": len(lat), "latency_ms": summary(lat)}), flush=True)


def _frame_payloads(source: str, h5: str, shape: str) -> list[bytes]:
    ny, nx, dt = shape.split("x")
    if source == "gen":
        rng = np.random.default_rng(0)
        info = np.iinfo(np.dtype(dt))
        return [rng.integers(0, info.max, (int(ny), int(nx)), dtype=dt).tobytes()
                for _ in range(20)]
    import h5py

    with h5py.File(h5, "r") as f:
        d = f["/entry/data/data"]
        if source == "h5c":
            return [bytes(d.id.read_direct_chunk((i, 0, 0))[1]) for i in range(d.shape[0])]
        return [d[i].tobytes() for i in range(d.shape[0])]


def role_bare_produce(bootstrap: str, topic: str, rate: float, n: int, delay: float,
                      source: str, h5: str, shape: str) -> None:
    from confluent_kafka import Producer

    from pvaflow.kafka.settings import producer_config

    payloads = _frame_payloads(source, h5, shape)
    p = Producer(producer_config(bootstrap))
    time.sleep(delay)
    t0 = time.monotonic()
    behind = 0.0
    for i in range(n):
        due = t0 + i / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        else:
            behind = max(behind, now - due)
        while True:
            try:
                p.produce(topic, payloads[i % len(payloads)], key=(i + 1).to_bytes(8, "big"),
                          partition=i % PARTITIONS)
                break
            except BufferError:
                p.poll(0.005)
        p.poll(0)
    p.flush(120)
    print(json.dumps({"produced": n, "behind_s": round(behind, 3),
                      "seconds": round(time.monotonic() - t0, 3)}), flush=True)


def role_pva_produce(bootstrap: str, topic: str, channel: str, sqs: int,
                     count_file: Path) -> None:
    """The least any PVA-to-Kafka bridge does, and nothing more: pvaflow's monitor request and
    client settings, the frame's pixels as the record (no header, attributes or codec), keyed
    and partitioned by uniqueId, stamped with the source time; waits while the buffer is full.
    What this costs on the machine is the floor under pvaflow's bridge."""
    import pvaccess as pva
    from confluent_kafka import Producer

    from pvaflow.kafka.settings import producer_config

    stopped = _stopper()
    p = Producer(producer_config(bootstrap))
    got = [0]

    def on(nt: Any) -> None:
        uid = nt.getInt("uniqueId")
        if not uid:  # the record's initial, never-published value
            return
        field = nt.getSelectedUnionFieldName("value")
        data: Any = np.asarray(nt.getUnion("value").getScalarArray(field))  # a buffer: no copy
        t = nt.getStructure("timeStamp")
        stamp = t["secondsPastEpoch"] * 1000 + t["nanoseconds"] // 1_000_000
        while True:
            try:
                p.produce(topic, data, key=uid.to_bytes(8, "big"), partition=uid % PARTITIONS,
                          timestamp=stamp)
                break
            except BufferError:
                p.poll(0.005)
        p.poll(0)
        got[0] += 1
    ch = pva.Channel(channel, pva.PVA)
    ch.monitor(on, f"record[queueSize={sqs}]field()")
    print("subscribed", flush=True)
    while not stopped[0]:
        p.poll(0.2)
        count_file.write_text(str(got[0]))
    ch.stopMonitor()
    p.flush(120)
    overruns = int(ch.getMonitorCounters().get("nOverruns", 0))
    print(json.dumps({"produced": got[0], "overruns": overruns, "unsent": len(p)}), flush=True)


def _assigned(_c: Any, parts: Sequence[Any]) -> None:
    if parts:
        print(f"assigned {len(parts)}", flush=True)


def _relay(bootstrap: str, topic: str, out: str, tag: str) -> None:
    from confluent_kafka import Consumer, Producer

    from pvaflow.kafka.consume import take
    from pvaflow.kafka.settings import consumer_config, producer_config

    stopped = _stopper()
    c = Consumer(consumer_config(f"bare-relay-{tag}", bootstrap))
    p = Producer(producer_config(bootstrap))
    c.subscribe([topic], on_assign=_assigned)
    while not stopped[0]:
        for m in take(c, 32, 0.2):
            if m.error() is not None:
                continue
            while True:
                try:
                    p.produce(out, m.value(), key=m.key(), timestamp=m.timestamp()[1])
                    break
                except BufferError:
                    p.poll(0.005)
            p.poll(0)
    p.flush(60)
    c.close()


def role_bare_relays(bootstrap: str, topic: str, out: str, tag: str) -> None:
    kids = [subprocess.Popen([PY, "-m", "benchmarks.pipeline", "-b", bootstrap, "--role",
                              "bare-relay", "--topic", topic, "--out", out, "--tag", tag])
            for _ in range(2)]
    stopped = _stopper()
    while not stopped[0] and all(k.poll() is None for k in kids):
        time.sleep(0.2)
    for k in kids:
        k.send_signal(signal.SIGINT)
        k.wait(60)


def role_bare_sink(bootstrap: str, topic: str, tag: str, count_file: Path,
                   isolation: str | None = None) -> None:
    """Counts distinct frames and times each one's arrival here from its source time: the
    record's timestamp, or the frame's EPICS timestamp (``pf.ts``) where it has one.
    ``isolation``: as a reader of pvaflow's ordered topic, the ``isolation.level``. With
    read_committed (librdkafka's default) a frame arrives once the collector's transaction
    holding it commits; with read_uncommitted, as it is written."""
    from confluent_kafka import Consumer

    from pvaflow.kafka.consume import take
    from pvaflow.kafka.settings import consumer_config

    stopped = _stopper()
    c = Consumer(consumer_config(f"bare-sink-{tag}", bootstrap,
                                 {"isolation.level": isolation} if isolation else None))
    c.subscribe([topic], on_assign=_assigned)
    lat: list[tuple[float, float]] = []
    # distinct frames: the bare relays are at-least-once (a rebalance repeats what they had
    # not committed), and a repeat must not stand in for a frame that never came
    seen: set[bytes | str | None] = set()
    duplicates = 0
    while not stopped[0]:
        for m in take(c, 200, 0.2):
            if m.error() is not None:
                continue
            if m.key() in seen:
                duplicates += 1
                continue
            seen.add(m.key())
            src = _source_ms(m.headers()) or m.timestamp()[1]
            lat.append((src, time.time() * 1e3 - src))
        count_file.write_text(str(len(lat)))
    c.close()
    print(json.dumps({"count": len(lat), "duplicates": duplicates,
                      "latency_ms": summary(lat)}), flush=True)


# -- the run -------------------------------------------------------------------------------

def ladder(make: Callable[[float], Trial], rates: Sequence[float], label: str
           ) -> list[dict[str, Any]]:
    """Middle out: start at the middle rung, go up while it passes, down while it fails."""
    results: list[dict[str, Any]] = []
    rates = sorted(rates)
    i = len(rates) // 2
    step = 0
    while 0 <= i < len(rates):
        rate = rates[i]
        r = make(rate).run()
        if not r["ok"]:  # one retry: the machine is shared and noisy
            print(f"    retry {label} {rate:g} fps: {r['out']}/{r['published']} out", flush=True)
            first = r
            r = make(rate).run()
            r["first_try"] = first  # kept and shown: a rung that passed on its retry says so
        print(f"  {label:26s} {rate:6g} fps: {'ok  ' if r['ok'] else 'LOSS'} out "
              f"{r['out']}/{r['published']} lost {r.get('lost')} cpu {r['cpu']} load "
              f"{r['load'][1]:.1f}", flush=True)
        results.append(r)
        step = step or (1 if r["ok"] else -1)
        if r["ok"] != (step == 1):  # passed going down, or failed going up: found the edge
            break
        i += step
    return sorted(results, key=lambda r: r["rate"])


def best(runs: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [r for r in runs if r["ok"]]
    return max(ok, key=lambda r: r["rate"]) if ok else None


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=None,
                    help="publishing time per trial (default 8, --quick 3)")
    ap.add_argument("--quick", action="store_true",
                    help="the lowest rate of each ladder only, latency from that trial")
    ap.add_argument("--render", action="store_true", help="only rewrite doc and plots")
    ap.add_argument("--only", action="append", choices=PIPELINES, help="pipelines to run")
    ap.add_argument("--config", action="append", choices=list(CONFIGS), metavar="FRAMES",
                    help="frame configurations to run, repeatable (default: all, and the "
                         "--codec rows); one of: " + "; ".join(CONFIGS))
    ap.add_argument("--label", default=None,
                    help="keep the results as benchmarks/results/pipeline-LABEL.json and "
                         "leave the doc's end-to-end section alone (for before/after runs)")
    ap.add_argument("--compare", nargs="+", metavar="LABEL",
                    help="only write the before/after section from two or more --label runs, "
                         "oldest first")
    ap.add_argument("--latency-at", action="append", type=float, metavar="FPS",
                    help="also measure latency at FPS (repeatable), below the half-rate "
                         "trial's saturation; kept in the JSON as latency_at")
    ap.add_argument("--latency-only", action="store_true",
                    help="skip the ladders: only the --latency-at trials, the pipelines "
                         "taking turns (A/B runs; needs --label)")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="with --latency-only: N turns of every pipeline (default 1)")
    ap.add_argument("--kafka-setting", action="append", default=[], type=parse_override,
                    metavar="KEY=VALUE",
                    help="a librdkafka setting for every pvaflow component of the run (as "
                         "PVAFLOW_KAFKA_*), repeatable; kept in the JSON (for A/B runs with "
                         "--label)")
    ap.add_argument("--reorder-only", action="store_true",
                    help="pvaflow's collector reorders without writing its ordered topic: "
                         "the bare pipeline's shape, whose last stage writes nothing (kept "
                         "in the JSON; use with --label)")
    ap.add_argument("--collector-arg", action="append", default=[], metavar="ARG",
                    help="an option for pvaflow's collector, repeatable, e.g. "
                         "--collector-arg=--commit-interval=0.05 (kept in the JSON)")
    ap.add_argument("--latency-profile", action="store_true",
                    help="every pvaflow component with --latency (kept in the JSON)")
    ap.add_argument("--reader-isolation", choices=list(_READER_KEYS), default="read_committed",
                    help="isolation.level of the live reader of pvaflow's ordered topic in "
                         "latency trials (default: read_committed, librdkafka's; kept in "
                         "the JSON)")
    ap.add_argument("--role", help=argparse.SUPPRESS)
    ap.add_argument("-b", dest="bootstrap", help=argparse.SUPPRESS)
    for hidden in ("--channel", "--topic", "--out", "--tag", "--source", "--h5", "--shape"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    for hidden in ("--rate", "--delay"):
        ap.add_argument(hidden, type=float, help=argparse.SUPPRESS)
    ap.add_argument("--frames", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--sqs", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--isolation", choices=list(_READER_KEYS), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.role:
        return child(a)
    if a.render:
        render(json.loads((RESULTS / "pipeline.json").read_text()))
        return 0
    if a.compare:
        if len(a.compare) < 2:
            ap.error("--compare needs two or more labels, oldest first")
        render_compare(*a.compare)
        return 0
    if a.latency_only and not (a.latency_at and a.label):
        # without a label its partial results would replace the full run's pipeline.json
        ap.error("--latency-only needs --latency-at FPS and --label LABEL")
    for key, value in a.kafka_setting:
        os.environ[ENV_PREFIX + key.upper().replace(".", "_")] = value
    # stopped by a signal, the run still ends every process it started (finally blocks)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    seconds = a.seconds or (3.0 if a.quick else 8.0)
    pipelines = a.only or list(PIPELINES)
    data: dict[str, Any] = {"seconds": seconds, "quick": a.quick, "partitions": PARTITIONS,
                            "kafka_settings": dict(a.kafka_setting),
                            "reorder_only": a.reorder_only, "collector_args": a.collector_arg,
                            "latency_profile": a.latency_profile,
                            "reader_isolation": a.reader_isolation,
                            "configs": {},
                            "codec": {}}
    t_start = time.monotonic()
    with ExitStack() as stack:
        from pvaflow.ops.broker import external_or_local
        from pvaflow.ops.synthetic import write_hdf5

        bootstrap, broker = stack.enter_context(external_or_local())
        broker_pid = broker.pid if broker is not None else _pid_listening(
            int(bootstrap.rsplit(":", 1)[1]))
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-pipe-")))
        h5 = workdir / "realistic.h5"
        write_hdf5(h5, n=20)
        data["realistic_frame_bytes"] = statistics.median(
            len(x) for x in _frame_payloads("h5c", str(h5), "1024x1024xuint16"))

        def trial(pipe: str, cfg: dict[str, Any], bridge_args: Sequence[str] = (),
                  latency: bool = False) -> Callable[[float], Trial]:
            return lambda rate: Trial(pipe, cfg, rate, seconds, bootstrap, broker_pid, workdir,
                                      h5, bridge_args, latency, a.reorder_only,
                                      a.collector_arg, a.latency_profile,
                                      a.reader_isolation)

        def latency_trial(pipe: str, cfg: dict[str, Any], rate: float) -> dict[str, Any]:
            t = trial(pipe, cfg, latency=True)(rate)
            t.seconds = max(seconds, 15.0)  # room for a steady state after start-up
            r = t.run()
            print(f"  {pipe:26s} latency at {rate:g} fps: {r.get('latency_ms')}", flush=True)
            return {"rate": rate, "ok": r["ok"], "load": r["load"], "cpu": r["cpu"],
                    "cpu_kafka_threads": r.get("cpu_kafka_threads"),
                    **(r.get("latency_ms") or {})}

        for name, cfg in CONFIGS.items():
            if a.config and name not in a.config:
                continue
            rates = cfg["rates"][:1] if a.quick else cfg["rates"]
            print(f"{name}:", flush=True)
            entry: dict[str, Any] = {"frame_bytes": cfg["nx"] * cfg["ny"] * np.dtype(
                cfg["dt"]).itemsize, "runs": {}, "latency": {}}
            if a.latency_only:  # turns, so that a slow spell of the machine hits them all
                # a fresh broker's first trial runs on a cold JVM (p99 4-25x a warm one's):
                # one trial first, kept apart, so that no pipeline's first turn pays for it
                if broker is not None:
                    entry["warm_up"] = latency_trial(pipelines[0], cfg, a.latency_at[0])
                for _ in range(a.repeat):
                    for pipe in pipelines:
                        entry.setdefault("latency_at", {}).setdefault(pipe, []).extend(
                            latency_trial(pipe, cfg, rate) for rate in a.latency_at)
                data["configs"][name] = entry
                continue
            for pipe in pipelines:
                runs = ladder(trial(pipe, cfg, latency=a.quick), rates, pipe)
                entry["runs"][pipe] = runs
                top = best(runs)
                if top is None:
                    continue
                if a.quick:
                    entry["latency"][pipe] = {"rate": top["rate"], **(top.get("latency_ms")
                                                                       or {})}
                else:
                    entry["latency"][pipe] = latency_trial(pipe, cfg, top["rate"] / 2)
                if a.latency_at:
                    entry.setdefault("latency_at", {})[pipe] = [
                        latency_trial(pipe, cfg, rate) for rate in a.latency_at]
            data["configs"][name] = entry
        if "pvaflow" in pipelines and not a.config and not a.latency_only:
            for name, cfg in CODEC_ROWS.items():
                rates = cfg["rates"][:1] if a.quick else cfg["rates"]
                print(f"{name} (pvaflow, raw vs bridge --codec bslz4):", flush=True)
                raw = (data["configs"].get(name, {}).get("runs", {}).get("pvaflow")
                       or ladder(trial("pvaflow", cfg), rates, "pvaflow raw"))
                comp = ladder(trial("pvaflow", cfg, ["--codec", "bslz4"]), rates,
                              "pvaflow --codec bslz4")
                data["codec"][name] = {"raw": raw, "bslz4": comp}
    data["wall_seconds"] = round(time.monotonic() - t_start)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if a.label:
        data["label"], data["argv"] = a.label, list(argv if argv is not None else sys.argv[1:])
        (RESULTS / f"pipeline-{a.label}.json").write_text(json.dumps(data, indent=2,
                                                                    default=str))
        return 0
    (RESULTS / "pipeline.json").write_text(json.dumps(data, indent=2, default=str))
    render(data)
    return 0


def child(a: argparse.Namespace) -> int:
    if a.role == "pva-sink":
        tag = a.channel[1:7]
        role_pva_sink(a.channel, _count_path(tag))
    elif a.role == "bare-produce":
        role_bare_produce(a.bootstrap, a.topic, a.rate, a.frames, a.delay, a.source, a.h5,
                          a.shape)
    elif a.role == "pva-produce":
        role_pva_produce(a.bootstrap, a.topic, a.channel, a.sqs, _count_path(a.tag, "bridge"))
    elif a.role == "bare-relays":
        role_bare_relays(a.bootstrap, a.topic, a.out, a.tag)
    elif a.role == "bare-relay":
        _relay(a.bootstrap, a.topic, a.out, a.tag)
    elif a.role == "bare-sink":
        role_bare_sink(a.bootstrap, a.topic, a.tag, _count_path(a.tag), a.isolation)
    else:
        raise SystemExit(f"unknown role {a.role}")
    return 0


def _count_path(tag: str, who: str = "sink") -> Path:
    return COUNT_DIR / f"{who}-{tag}.count"


COUNT_DIR = Path(tempfile.gettempdir())
KEPT_LOGS = COUNT_DIR / "pvaflow-bench-failed"


# -- the report ----------------------------------------------------------------------------

NAMES = {"pvapy": "PvaPy (2 x hpc-consumer + hpc-collector)",
         "pvaflow": "pvaflow (bridge + 2 consumers + collector)",
         "bare": "bare Kafka (producer + 2 relays + consumer)",
         "pva-bare": "bare Kafka fed by PVA (monitor -> producer + 2 relays + consumer)"}


def _rate(runs: Sequence[dict[str, Any]] | None, seconds: float) -> str:
    """The highest passing requested rate; in brackets what the sim server published (it
    falls short of high requested rates on this machine), and whether the ladder ended there."""
    if not runs:
        return "not run"
    top = best(runs)
    tried = max(r["rate"] for r in runs)
    if top is None:
        return f"< {min(r['rate'] for r in runs):g}"
    text = f"{top['rate']:g} ({top['published'] / seconds:,.0f} published)"
    return text + (", highest tried" if top["rate"] == tried and all(
        r["ok"] for r in runs) else "")


def _cpu_row(name: str, pipe: str, r: dict[str, Any], seconds: float) -> list[Any]:
    cpu = {k: v for k, v in r["cpu"].items() if k != "broker"}
    total = sum(cpu.values())
    fps = r["published"] / seconds if r["published"] else r["rate"]
    per_frame = total / 100 / fps * 1e3 if fps else 0.0
    parts = ", ".join(f"{k} {v:.0f}" for k, v in cpu.items())
    return [name, pipe, f"{r['rate']:g}", parts, f"{r['cpu'].get('broker', 0):.0f}",
            f"{per_frame:.2f}", f"{r['load'][0]:.1f} / {r['load'][1]:.1f}"]


def _lat_row(name: str, pipe: str, rate: float, lat: dict[str, Any]) -> list[Any]:
    steady = (f"{lat['p50_steady']:.0f}", f"{lat['p99_steady']:.0f}",
              lat["n_steady"]) if "p50_steady" in lat else ("n/a",) * 3
    return [name, pipe, f"{rate:g}", *steady, f"{lat['p50']:.0f}", f"{lat['p99']:.0f}",
            lat.get("n", "")]


def _loss_detail(pipe: str, c: dict[str, Any]) -> dict[str, Any]:
    if pipe == "pvaflow":
        b, col = c.get("bridge", {}), c.get("collector", {})
        return {"bridge missed (ids never received)": b.get("missed"),
                "bridge overruns": b.get("overruns"), "bridge dropped": b.get("dropped"),
                "collector missed": col.get("missed")}
    if pipe == "pvapy":
        return {"consumers missed": c.get("consumers_missed"),
                "consumers overruns": c.get("consumers_overruns"),
                "collector missed+overruns": c.get("collector_missed")}
    if pipe == "pva-bare":
        return {"monitor overruns": c.get("bridge", {}).get("overruns")}
    prod = c.get("producer", {})
    return {"producer behind schedule (s)": prod.get("behind_s") if prod.get(
        "behind_s", 0) > 1 else 0}


def render(data: dict[str, Any]) -> None:
    rows_rate, rows_cpu, rows_lat, rows_codec = [], [], [], []
    for name, e in data["configs"].items():
        runs = e["runs"]
        rows_rate.append([name, *(_rate(runs.get(p), data["seconds"]) for p in PIPELINES)])
        for p in PIPELINES:
            top = best(runs.get(p) or [])
            if top:
                rows_cpu.append(_cpu_row(name, p, top, data["seconds"]))
            lat = e["latency"].get(p)
            if lat and "p50" in lat:
                rows_lat.append(_lat_row(name, p, lat["rate"], lat))
            for isolation, key in _READER_KEYS.items():
                if lat and lat.get(key):
                    rows_lat.append(_lat_row(name, f"{p}, {isolation} reader", lat["rate"],
                                             lat[key]))
    rows_loss = []
    for name, e in [*data["configs"].items(), *(
            (f"{n} (--codec bslz4)", {"runs": {"pvaflow": c["bslz4"]}})
            for n, c in data.get("codec", {}).items())]:
        for p, runs in e["runs"].items():
            tries = [(t, f"{p} (first try; the retry {'passed' if r['ok'] else 'failed'})")
                     for r in runs if (t := r.get("first_try"))]
            for r, label in [*tries, *((r, p) for r in runs if not r["ok"])]:
                c = r.get("counts", {})
                where = ", ".join(f"{k} {v}" for k, v in _loss_detail(p, c).items() if v)
                rows_loss.append([name, label, f"{r['rate']:g}", f"{r['out']}/{r['published']}",
                                  where or "frames not out by the end of the drain",
                                  " / ".join(f"{x:.1f}" for x in r.get("load") or ()) or "-"])
    loads = [x for e in data["configs"].values() for runs in e["runs"].values()
             for r in runs for x in r["load"]]
    for name, c in data.get("codec", {}).items():
        rows_codec.append([name, _rate(c["raw"], data["seconds"]),
                           _rate(c["bslz4"], data["seconds"])])
    quick = ("**This is a `--quick` smoke run** (the lowest rung of each ladder only, short "
             "trials, latency taken from that trial): the rates are lower bounds, not limits. "
             if data.get("quick") else "")
    md = f"""## End to end

`benchmarks/pipeline.py` runs four pipelines of the same shape, one after the other, each fed by
its own `pvapy-ad-sim-server` on this machine:

* **PvaPy**: `pvapy-hpc-consumer -nc 2 --distributor-updates 1` (the default
  `UserDataProcessor`, which republishes each frame on `<tag>:p:<id>:output`) ->
  `pvapy-hpc-collector -pid 1,2 -ic '<tag>:p:*:output' -oc '<tag>:c:*:output'` -> a PVA
  subscriber on the collector's output (for latency);
* **pvaflow**: `pvaflow bridge --partitions {data['partitions']}` -> Kafka ->
  `pvaflow consumer --n-consumers 2 --processor passthrough` -> `pvaflow collector
  --output-topic` (ordered topic);
* **bare Kafka**: a bare confluent-kafka producer paced at the same rate with the same frame
  bytes -> 2 bare consume->produce processes -> a bare consumer: the ceiling Kafka itself sets
  on this machine, with the same client settings (`pvaflow.kafka.settings`) and the same way
  of taking records (whatever is fetched, no wait for a batch to fill);
* **bare Kafka fed by PVA**: the same bare downstream, fed by a bare PVA monitor that
  produces each frame's pixels as they arrive (pvaflow's monitor request and client
  settings): what any PVA-to-Kafka pipeline pays on this machine, sim server and pvAccess
  receive included.

Sources: 128x128 uint8 and 1024x1024 uint16 random frames generated by the sim server, and
1024x1024 uint16 realistic diffraction frames (`pvaflow.ops.synthetic.write_hdf5`, bslz4
chunks of median {data.get('realistic_frame_bytes', 0) / 1024:.0f} KiB against 2048 KiB raw)
served compressed at the source (`-if file.h5 -hds /entry/data/data -hcm`). Server queue 1000
for small frames, 200 for large; the server stays up {SHUTDOWN_DELAY} s after publishing (as an
IOC would), so a client's last queued frames still reach it (runs before 2026-12-04 used 0 s,
which counted a client's last fraction of a second of lag as loss); everything else at each
tool's defaults. Each trial publishes
for {data['seconds']:g} s. A rate passes when every published frame comes out of the collector,
by each component's own final counts (PvaPy's final statistics: consumers' and collector's
`nMissed`/`nOverruns` and the collector's `nProcessed`; pvaflow's bridge final stats and the
collector's `final stats:` line; the bare producer's count, on schedule, against the bare
consumer's). Each ladder starts at its middle rung and goes up while trials pass, down while
they fail (a failure is retried once, and the failed first try is kept and listed below).

{quick}Command: `.venv/bin/python -m benchmarks.pipeline` (`--quick` for a 2-3 minute smoke run;
`--render` rewrites this section from `benchmarks/results/pipeline.json`). Run time:
{data.get('wall_seconds', 0) / 60:.0f} min.

**The machine:** 2 cores shared with other work while this ran; the 1-minute load average is
recorded before and after every trial (below and in the JSON) and ranged from
{min(loads, default=0):.1f} to {max(loads, default=0):.1f} in this run (2.0 = both cores busy),
so every number here is what is left of 2 shared cores for a sim server, a broker and the
pipeline together. Read them as a comparison made under the same conditions, not as limits
of the tools: see [capacity.md](capacity.md) for what they do and do not say about a cluster.

Highest zero-loss rate (requested fps; in brackets the frames per second the source actually
published in that trial):

{table(["frames", *[NAMES[p] for p in PIPELINES]], rows_rate)}

CPU at that rate (% of one core, per process tree, over the publishing window; the broker
apart), pipeline CPU per published frame (ms, all the processes but the broker: sim server or
bare producer included), and the load average
before / after the trial:

{table(["frames", "pipeline", "fps", "CPU % per process", "broker %", "ms CPU / frame",
        "load"], rows_cpu)}

Latency, source timestamp -> out of the collector, at half the zero-loss rate (ms): PvaPy:
arrival in a PVA subscriber of the collector's output channel (the subscriber's monitor may
skip frames under load: `n` is what it saw); pvaflow: the Kafka timestamp of the frame's
record in the collector's ordered topic (set when the collector produced it) minus the frame's
EPICS timestamp, and, in runs since 2026-12-04, "read_committed reader": arrival in a reader
of the ordered topic with librdkafka's default `isolation.level=read_committed`, which sees a
frame only once the collector's transaction holding it commits (every `--commit-interval`,
0.2 s by default), or, in runs with `--reader-isolation read_uncommitted`, "read_uncommitted
reader": arrival as the frame is written; bare: arrival in the bare consumer minus the
producer's record timestamp
(for bare Kafka fed by PVA, the frame's EPICS timestamp).

Steady state counts the frames sourced more than {STEADY_AFTER_MS / 1000:g} s after the first
(before that, consumers and collector are still joining their groups; "all" includes that
start-up, and, in runs before the collector's merge rule, its hold of the first frames until
its cache filled or `--max-delay` passed). Latency
trials publish for {max(data['seconds'], 15.0) if not data.get('quick') else data['seconds']:g} s.

{table(["frames", "pipeline", "fps", "p50 steady", "p99 steady", "n steady", "p50 all",
        "p99 all", "n all"], rows_lat)}

Where the failing trials lost their frames (each component's own counters):

{table(["frames", "pipeline", "fps", "out / published", "lost at", "load"], rows_loss)
 if rows_loss else "No trial lost a frame, first tries included."}

`pvaflow bridge --codec bslz4` on uncompressed sources (highest zero-loss fps, pvaflow only):

{table(["source", "raw", "--codec bslz4"], rows_codec)}

![zero-loss rate per pipeline](img/pipeline.png)
![latency per pipeline](img/pipeline-latency.png)
"""
    write_section("pipeline", md)
    _plot(data)


def _ms_per_frame(runs: Sequence[dict[str, Any]], proc: str, seconds: float,
                  rate: float | None = None) -> float | None:
    """One process tree's CPU ms per published frame: at ``rate``, or the median over the
    passing trials (CPU per frame falls as the rate rises: fixed costs spread thinner)."""
    vals = [r["cpu"][proc] / 100 / (r["published"] / seconds) * 1e3
            for r in runs if r["ok"] and r["published"] and proc in r["cpu"]
            and (rate is None or r["rate"] == rate)]
    return statistics.median(vals) if vals else None


def _cpu_compare(flow: Sequence[dict[str, Any]], pvapy: Sequence[dict[str, Any]],
                 seconds: float) -> tuple[str, float | None, float | None]:
    """Bridge and pvapy-hpc-consumer CPU per frame at the highest rate both passed, else the
    medians over each one's passing trials."""
    common = ({r["rate"] for r in flow if r["ok"]} & {r["rate"] for r in pvapy if r["ok"]})
    rate = max(common) if common else None
    return (f"{rate:g}" if rate else "medians", _ms_per_frame(flow, "bridge", seconds, rate),
            _ms_per_frame(pvapy, "consumers", seconds, rate))


def render_compare(*labels: str) -> None:
    """The before/after section from ``--label`` runs, oldest first (each ran PvaPy and pvaflow
    side by side: the ratios within a run are what compares, the machine being shared)."""
    runs = {lab: json.loads((RESULTS / f"pipeline-{lab}.json").read_text()) for lab in labels}
    rows_rate, rows_cpu, rows_lat, rows_stage = [], [], [], []
    loads: dict[str, list[float]] = {}
    for lab, data in runs.items():
        sec = data["seconds"]
        for name, e in data["configs"].items():
            r = e["runs"]
            loads.setdefault(lab, []).extend(x for rs in r.values() for t in rs for x in t["load"])
            top = {p: best(r.get(p) or []) for p in ("pvapy", "pvaflow")}
            fps = {p: (t["rate"] if t else 0) for p, t in top.items()}
            ratio = f"{fps['pvaflow'] / fps['pvapy']:.2f}" if fps["pvapy"] else "n/a"
            rows_rate.append([name, lab, _rate(r.get("pvapy"), sec), _rate(r.get("pvaflow"), sec),
                              ratio])
            at, b, c = _cpu_compare(r.get("pvaflow") or [], r.get("pvapy") or [], sec)
            rows_cpu.append([name, lab, at, f"{b:.3f}" if b else "n/a",
                             f"{c:.3f}" if c else "n/a", f"{b / c:.1f}" if b and c else "n/a"])
            for p in ("pvapy", "pvaflow"):
                lat = e["latency"].get(p) or {}
                if "p50" in lat:
                    rows_lat.append([name, lab, p, f"{lat['rate']:g}",
                                     f"{lat.get('p50_steady', lat['p50']):.0f}",
                                     f"{lat.get('p99_steady', lat['p99']):.0f}",
                                     f"{lat['p99']:.0f}"])
                for stage, st in (lat.get("stages") or {}).items():
                    if st:
                        rows_stage.append([name, lab, stage,
                                           f"{st.get('p50_steady', st['p50']):.0f}",
                                           f"{st.get('p99_steady', st['p99']):.0f}"])
    cmds = "\n".join("    .venv/bin/python -m benchmarks.pipeline "
                     + " ".join(_quote(x) for x in d.get("argv", [])) for d in runs.values())
    load_text = "; ".join(f"{lab} {min(v):.1f}-{max(v):.1f}" for lab, v in loads.items())
    md = f"""## End to end: the bridge before and after its speed-up

The same command run at several points of pvaflow's history, oldest first
({" / ".join(labels)}: see the reading below for what changed between them); each run puts
PvaPy's pipeline and pvaflow's side by side on the same machine, so the ratios within a run
are what compares. 1-minute load average over the trials: {load_text} (2.0 = both cores busy).

{cmds}

Highest zero-loss rate (requested fps; in brackets what the source published) and pvaflow's
rate as a fraction of PvaPy's:

{table(["frames", "run", "PvaPy", "pvaflow", "pvaflow / PvaPy"], rows_rate)}

CPU per published frame (ms): the bridge against the 2 `pvapy-hpc-consumer` processes
(which receive the same frames and republish them), at the highest rate both passed ("fps"),
else ("medians") the median over each one's passing trials (per-frame CPU falls as the rate
rises, so medians over different rates favour the faster pipeline):

{table(["frames", "run", "fps", "bridge", "pvapy-hpc-consumer x 2", "bridge / consumer"],
       rows_cpu)}

Latency at half the zero-loss rate, source timestamp -> out of the collector (ms; steady
state as above, "p99 all" includes start-up):

{table(["frames", "run", "pipeline", "fps", "p50", "p99", "p99 all"], rows_lat)}

Where pvaflow's latency comes from (ms, steady state): each stage's record timestamp on its
output topic minus the previous stage's (bridge: minus the source's EPICS timestamp):

{table(["frames", "run", "stage", "p50", "p99"], rows_stage)}
"""
    write_section("pipeline-compare", md)


def _quote(x: str) -> str:
    return f"'{x}'" if " " in x else x


def _plot(data: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(data["configs"])
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, p in enumerate(PIPELINES):
        vals = [(best(data["configs"][n]["runs"].get(p) or []) or {"rate": 0})["rate"]
                for n in names]
        ax.bar(x + (i - 1) * 0.27, vals, 0.27, label=p)
    ax.set_xticks(x, [n.replace(" uint", "\nuint") for n in names])
    ax.set_yscale("log")
    ax.set_ylabel("highest zero-loss rate (fps)")
    ax.set_title("End to end, 2 shared cores")
    ax.legend()
    fig.tight_layout()
    IMG.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG / "pipeline.png", dpi=90)
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, p in enumerate(PIPELINES):
        lats = [data["configs"][n]["latency"].get(p) or {} for n in names]
        ax.bar(x + (i - 1) * 0.27, [lat.get("p50_steady", lat.get("p50", 0)) for lat in lats],
               0.27, label=f"{p} p50")
        ax.scatter(x + (i - 1) * 0.27, [lat.get("p99_steady", lat.get("p99", 0))
                                        for lat in lats], marker="_", s=200, color="k")
    ax.set_xticks(x, [n.replace(" uint", "\nuint") for n in names])
    ax.set_ylabel("source -> collector (ms): p50 bars, p99 dashes")
    ax.set_title("Latency at half the zero-loss rate (steady state where measured)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(IMG / "pipeline-latency.png", dpi=90)


if __name__ == "__main__":
    sys.exit(main())
