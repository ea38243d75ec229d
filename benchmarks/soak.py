"""Soak: the whole pipeline for 10 minutes at half its zero-loss rate, RSS of every process.

``pvapy-ad-sim-server`` -> ``pvaflow bridge`` -> Kafka -> ``pvaflow consumer --n-consumers 2``
(passthrough) -> ``pvaflow collector`` (ordered output topic), with ``pvaflow monitor`` watching
the status topic and the local broker's JVM. Every 5 s the resident set size of each process
(each consumer child on its own) is read from /proc. At the end every component's final
status says what it received, delivered and lost; the run passes when every published frame
left the collector, once.

What the plot is for: a leak shows as a slope after the warm-up (the first two minutes fill
the queues, caches and the allocator's pools up to their bounds; docs/operations.md "Bounded
memory" lists them). The table gives each process's RSS after warm-up, at the end and its
peak, and the slope between (MiB per minute, least squares).

    .venv/bin/python -m benchmarks.soak                     # 10 min at 500 fps, 128x128
    .venv/bin/python -m benchmarks.soak --minutes 1 --rate 50   # a smoke run
    .venv/bin/python -m benchmarks.soak --render            # rewrite the doc from the JSON
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bridge import SHUTDOWN_DELAY, free_tcp_port, pva_env
from benchmarks.pipeline import PY, VENV_BIN, _ready, last_int, spawn, stop, wait_until
from benchmarks.report import (
    IMG,
    RESULTS,
    children,
    load_average,
    rss_mib,
    table,
    write_section,
)

SAMPLE_EVERY = 5.0
WARM_UP = 120.0  # seconds before the slope is fitted: queues and pools fill up first
PARTITIONS = 2


def final_statuses(bootstrap: str, status_topic: str) -> list[dict[str, Any]]:
    """The newest status message of each component on the status topic."""
    from pvaflow.ops.status_cli import read_status_topic

    newest: dict[str, dict[str, Any]] = {}
    for m in read_status_topic(status_topic, bootstrap, tail=2000, timeout=60):
        if m.get("type") == "status" and m.get("component"):
            newest[str(m["component"])] = m
    return list(newest.values())


def soak(minutes: float, rate: float, nx: int, workdir: Path, bootstrap: str,
         broker_pid: int | None) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    env = pva_env()
    channel = f"soak{tag}:image"
    frames, done, ordered, st = (f"soak-{tag}-{x}" for x in ("frames", "done", "ordered",
                                                             "status"))
    seconds = minutes * 60
    common = ["-b", bootstrap, "-rp", "5", "-ll", "warning", "--status-topic", st,
              "--control-topic", f"soak-{tag}-control"]
    pvaflow = [PY, "-m", "pvaflow.cli"]
    from pvaflow.kafka.topics import ensure_topic

    for t in (frames, done):
        ensure_topic(t, PARTITIONS, bootstrap=bootstrap)
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def log(name: str) -> Path:
        return workdir / f"{name}.log"

    try:
        ports = [free_tcp_port(), free_tcp_port(), free_tcp_port()]
        procs["monitor"] = spawn(
            [*pvaflow, "monitor", "-b", bootstrap, "--status-topic", st, "--app-id",
             f"soak-{tag}", "--web-port", str(ports[2]), "--data-dir",
             str(workdir / "monitor"), "-ll", "warning"], log("monitor"), env)
        procs["collector"] = spawn(
            [*pvaflow, "collector", "-it", done, "-ot", ordered, "-g", f"col-{tag}",
             "--metrics-port", str(ports[0]), *common], log("collector"), env)
        procs["consumers"] = spawn(
            [*pvaflow, "consumer", "-it", frames, "-ot", done, "-g", f"con-{tag}",
             "--n-consumers", "2", "--processor", "passthrough", "--metrics-port",
             str(ports[1]), *common], log("consumers"), env)
        procs["bridge"] = spawn(
            [*pvaflow, "bridge", "-ic", channel, "-t", frames, "--partitions", str(PARTITIONS),
             *common], log("bridge"), env)
        if not wait_until(lambda: all(_ready(p) for p in (ports[0], ports[1], ports[1] + 1)),
                          180):
            raise SystemExit("soak: the consumers and the collector never became ready")
        port = str(free_tcp_port())
        procs["sim"] = spawn(
            [str(VENV_BIN / "pvapy-ad-sim-server"), "-cn", channel, "-fps", str(rate),
             "-rt", str(seconds), "-std", "6", "-shd", str(SHUTDOWN_DELAY), "-rp", "0",
             "-dc", "-nx", str(nx), "-ny", str(nx), "-dt", "uint8", "-nf", "20"], log("sim"),
            {**env, "EPICS_PVAS_SERVER_PORT": port, "EPICS_PVA_SERVER_PORT": port})
        watched = {k: p.pid for k, p in procs.items() if k != "consumers"}
        if broker_pid:
            watched["broker"] = broker_pid
        wait_until(lambda: len(children(procs["consumers"].pid)) >= 2, 60)
        for i, kid in enumerate(sorted(children(procs["consumers"].pid)), 1):
            watched[f"consumer-{i}"] = kid
        samples: dict[str, list[tuple[float, float]]] = {k: [] for k in watched}
        loads: list[float] = []
        t0 = time.monotonic()
        next_print = t0
        while procs["sim"].poll() is None:
            now = time.monotonic() - t0
            for name, pid in watched.items():
                with contextlib.suppress(OSError):  # gone (ended early): no sample
                    samples[name].append((round(now, 1), round(rss_mib("VmRSS", pid), 1)))
            loads.append(load_average())
            if time.monotonic() >= next_print:
                row = "  ".join(f"{k} {v[-1][1]:.0f}" for k, v in samples.items() if v)
                print(f"  {now / 60:5.1f} min  RSS MiB: {row}", flush=True)
                next_print += 60
            time.sleep(SAMPLE_EVERY)
        published = last_int(r"Published frames:\s+(\d+)", log("sim").read_text(), 0)
        # the bridge has nothing more once the sim server is gone: stop it, then let the
        # consumers and the collector drain what is in Kafka
        time.sleep(2.0)
        stop(procs["bridge"], 120)

        def emitted() -> int:
            found = [c for c in final_statuses(bootstrap, st) if c["kind"] == "collector"]
            return int(found[0]["stats"]["emitted"]) if found else 0
        marks: list[int] = []

        def drained() -> bool:
            marks.append(emitted())
            return marks[-1] >= published or (len(marks) > 6 and marks[-1] == marks[-7])
        wait_until(drained, 300, 5.0)
        for name in ("consumers", "collector", "monitor"):
            stop(procs[name])
        statuses = final_statuses(bootstrap, st)
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return {"minutes": minutes, "rate": rate, "shape": f"{nx}x{nx} uint8",
            "published": published, "samples": samples, "load": loads,
            "final": {str(c["component"]): c["stats"] for c in statuses
                      if c["kind"] in ("bridge", "consumer", "collector")}}


def summarise(data: dict[str, Any]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, pts in data["samples"].items():
        if not pts:
            continue
        t = np.array([p[0] for p in pts])
        r = np.array([p[1] for p in pts])
        after = t >= min(WARM_UP, t[-1] / 2)
        slope = float(np.polyfit(t[after] / 60, r[after], 1)[0]) if after.sum() > 2 else 0.0
        out[name] = {"warm": float(r[after][0]), "end": float(r[-1]), "peak": float(r.max()),
                     "slope": slope}
    return out


def accounting(data: dict[str, Any]) -> dict[str, int]:
    f = data["final"]
    bridge = [s for k, s in f.items() if k.startswith("bridge")]
    consumers = [s for k, s in f.items() if k.startswith("consumer")]
    collector = [s for k, s in f.items() if k.startswith("collector")]

    def total(stats: list[dict[str, Any]], key: str) -> int:
        return sum(int(s.get(key) or 0) for s in stats)
    return {"published": int(data["published"]),
            "bridge received": total(bridge, "received"),
            "bridge delivered": total(bridge, "delivered"),
            "bridge lost (missed + dropped + errors)": total(bridge, "missed")
            + total(bridge, "dropped") + total(bridge, "delivery_errors"),
            "consumers processed": total(consumers, "processed"),
            "collector emitted": total(collector, "emitted"),
            "collector missed": total(collector, "missed"),
            "collector duplicates": total(collector, "duplicates")}


def render(data: dict[str, Any]) -> None:
    s = summarise(data)
    acc = accounting(data)
    ok = acc["collector emitted"] == acc["published"] and acc["collector missed"] == 0
    rows = [[name, v["warm"], v["end"], v["peak"], f"{v['slope']:+.2f}"]
            for name, v in sorted(s.items())]
    md = [
        "## Soak: ten minutes of the whole pipeline",
        "",
        f"`python -m benchmarks.soak`: {data['shape']} frames at {data['rate']:g} fps (half "
        f"the zero-loss rate measured above) for {data['minutes']:g} min through bridge -> "
        "2 consumers -> collector, with the monitor watching; RSS of every process sampled "
        f"every {SAMPLE_EVERY:g} s. The slope is fitted after the {WARM_UP / 60:g}-minute "
        "warm-up, in which queues, caches and allocator pools fill to their bounds "
        "([operations](operations.md#bounded-memory)). Load average during the run: median "
        f"{float(np.median(data['load'])):.2f}.",
        "",
        "![RSS per process over the soak](img/soak_rss.png)",
        "",
        table(["process", "RSS after warm-up (MiB)", "at the end", "peak", "slope (MiB/min)"],
              rows),
        "",
        "Accounting (every component's final status):",
        "",
        table(["", "frames"], [[k, v] for k, v in acc.items()]),
        "",
        "Result: " + ("every published frame left the collector once, nothing lost." if ok
                      else "FRAMES LOST: see the accounting."),
    ]
    write_section("soak", "\n".join(md), data)
    _plot(data)


def _plot(data: dict[str, Any]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for name, pts in sorted(data["samples"].items()):
        if pts:
            ax.plot([p[0] / 60 for p in pts], [p[1] for p in pts], label=name)
    ax.axvline(WARM_UP / 60, color="grey", ls=":", lw=1)
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MiB)")
    ax.set_yscale("log")
    ax.set_title(f"Soak: {data['shape']} at {data['rate']:g} fps")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    IMG.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG / "soak_rss.png", dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="publishing time (default 10)")
    ap.add_argument("--rate", type=float, default=500.0,
                    help="frames per second (default 500: half the 128x128 zero-loss rate)")
    ap.add_argument("--size", type=int, default=128, help="frame side in pixels (default 128)")
    ap.add_argument("--render", action="store_true", help="only rewrite doc and plot")
    a = ap.parse_args(argv)
    if a.render:
        render(json.loads((RESULTS / "soak.json").read_text()))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with ExitStack() as stack:
        from pvaflow.ops.broker import external_or_local

        bootstrap, broker = stack.enter_context(external_or_local())
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        data = soak(a.minutes, a.rate, a.size, workdir, bootstrap,
                    broker.pid if broker is not None else None)
    render(data)
    acc = accounting(data)
    print(json.dumps({"accounting": acc, "rss": summarise(data)}, indent=2))
    return 0 if acc["collector emitted"] == acc["published"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
