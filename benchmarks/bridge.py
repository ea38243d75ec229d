"""Bridge benchmark: zero-loss rate against pvapy-hpc-consumer, and MB/s against a bare producer.

Run: ``.venv/bin/python -m benchmarks.bridge`` (uses ``$PVAFLOW_BOOTSTRAP`` or starts a local
broker). Everything runs side by side in one run on this machine: the sim server, the tool
under test and the broker share the same cores, and CPU per process is read from /proc.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
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

from benchmarks.report import IMG, table, write_section

VENV_BIN = Path(sys.executable).parent
TICK = os.sysconf("SC_CLK_TCK")
# Seconds a sim server stays up after publishing, as an IOC does. With -shd 0 it exited with
# frames still queued for a client a fraction of a second behind, and a trial that compares
# published with received counted them lost (a 4000 fps pipeline trial: 1,145 of 31,989, none
# missing in between).
SHUTDOWN_DELAY = 5

CASES: dict[str, dict[str, Any]] = {
    "128x128 uint8": {"nx": 128, "ny": 128, "dt": "uint8", "sqs": 1000,
                      "rates": [2000, 3000, 4000, 5000, 6000, 7000]},
    "1024x1024 uint16": {"nx": 1024, "ny": 1024, "dt": "uint16", "sqs": 200,
                         "rates": [50, 100, 150, 200, 300, 400, 500, 600]},
}


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pva_env() -> dict[str, str]:
    udp = str(free_udp_port())
    return {**os.environ, "EPICS_PVA_ADDR_LIST": "127.0.0.1", "EPICS_PVA_AUTO_ADDR_LIST": "NO",
            "EPICS_PVA_BROADCAST_PORT": udp, "EPICS_PVAS_BROADCAST_PORT": udp,
            "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1"}


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


class Trial:
    """One sim-server run at ``rate`` with one consumer tool; returns loss and CPU."""

    def __init__(self, tool: str, case: dict[str, Any], rate: float, seconds: float,
                 rqs: int, bootstrap: str, broker_pid: int | None, workdir: Path) -> None:
        self.tool, self.case, self.rate, self.seconds = tool, case, rate, seconds
        self.rqs, self.bootstrap = rqs, bootstrap
        self.broker_pid, self.workdir = broker_pid, workdir

    def run(self) -> dict[str, Any]:
        env = pva_env()
        channel = f"bench:{uuid.uuid4().hex[:6]}"
        port = free_tcp_port()
        c = self.case
        delay = 6.0
        sim_log = self.workdir / f"sim-{channel[-6:]}.log"
        out_path = self.workdir / f"{self.tool}-{channel[-6:]}.out"
        with open(sim_log, "wb") as sl:
            sim = subprocess.Popen(
                [str(VENV_BIN / "pvapy-ad-sim-server"), "-cn", channel, "-nx", str(c["nx"]),
                 "-ny", str(c["ny"]), "-dt", c["dt"], "-fps", str(self.rate), "-rt",
                 str(self.seconds), "-std", str(delay), "-shd", str(SHUTDOWN_DELAY), "-rp",
                 "0", "-nf", "20", "-dc"], env={**env, "EPICS_PVAS_SERVER_PORT": str(port),
                             "EPICS_PVA_SERVER_PORT": str(port)},
                stdout=sl, stderr=subprocess.STDOUT, start_new_session=True)
        time.sleep(1.0)
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        if self.tool == "bridge":
            cmd = [sys.executable, "-m", "pvaflow.bridge.cli", "--input-channel", channel,
                   "--topic", topic, "--bootstrap-servers", self.bootstrap,
                   "--server-queue-size", str(c["sqs"]), "--receiver-queue-size",
                   str(self.rqs), "--report-period", "1", "--log-level", "warning"]
        else:
            cmd = [str(VENV_BIN / "pvapy-hpc-consumer"), "--input-channel", channel,
                   "--processor-class", "pvapy.hpc.userDataProcessor.UserDataProcessor",
                   "--server-queue-size", str(c["sqs"]), "--receiver-queue-size",
                   str(self.rqs), "--report-period", "1000", "-dc"]
        with open(out_path, "wb") as out:
            # SIGINT ends both tools with their final report; a parent started in the
            # background (SIGINT ignored) would pass that on and the report would never come
            tool = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=_default_sigint)
        # measure CPU over the publishing window only
        time.sleep(max(delay - 1.0, 0) + 0.5)
        pids = {"sim": sim.pid, self.tool: tool.pid}
        if self.broker_pid:
            pids["broker"] = self.broker_pid
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        t0 = time.monotonic()
        time.sleep(max(self.seconds - 1.0, 0.5))  # read CPU while the sim still runs
        wall = time.monotonic() - t0
        cpu = {k: (cpu_seconds(p) - cpu0[k]) / wall * 100 for k, p in pids.items()}
        sim.wait(self.seconds + 60)
        time.sleep(3.0)  # let queues drain
        tool.send_signal(signal.SIGINT)
        try:
            tool.wait(90)
        except subprocess.TimeoutExpired:
            tool.kill()
            tool.wait()
        published = int(re.findall(r"Published frames:\s+(\d+)", sim_log.read_text())[-1])
        text = out_path.read_text(errors="replace")
        if self.tool == "bridge":
            line = next(x for x in text.splitlines() if x.startswith("pvaflow-bridge final "))
            s = json.loads(line.split(" ", 2)[2])[0]
            received, missed = s["received"], s["missed"]
            overruns, dropped = s["overruns"], s["dropped"] + s["delivery_errors"]
            mbps = [float(m) for m in re.findall(r"fps, ([\d.]+) MB/s\)", text)]
            steady = [m for m in mbps if m > 0][1:-1] or mbps
            rate_mb = statistics.median(steady) if steady else 0.0
        else:
            def last(key: str) -> int:
                vals = re.findall(rf"'{key}': (\d+)", text)
                return int(vals[-1]) if vals else -1
            received, missed, overruns = last("nProcessed"), last("nMissed"), last("nOverruns")
            dropped, rate_mb = 0, 0.0
        lost = max(published - received, 0) + missed + overruns + dropped
        return {"tool": self.tool, "rate": self.rate, "published": published,
                "received": received, "missed": missed, "overruns": overruns,
                "dropped": dropped, "lost": lost, "ok": lost <= 1 and received > 0,
                "cpu": cpu, "mb_per_s": rate_mb}


def sweep(tool: str, case: dict[str, Any], seconds: float, rqs: int, bootstrap: str,
          broker_pid: int | None, workdir: Path) -> list[dict[str, Any]]:
    results = []
    for rate in case["rates"]:
        r = Trial(tool, case, rate, seconds, rqs, bootstrap, broker_pid, workdir).run()
        if not r["ok"]:  # one retry: the machine is shared and noisy
            r = Trial(tool, case, rate, seconds, rqs, bootstrap, broker_pid, workdir).run()
        print(f"  {tool:8s} {rate:6.0f} fps: lost {r['lost']} (published {r['published']}, "
              f"received {r['received']}), cpu {({k: round(v) for k, v in r['cpu'].items()})}",
              flush=True)
        results.append(r)
        if not r["ok"]:
            break
    return results


def bare_producer(bootstrap: str, size: int, seconds: float) -> float:
    """MB/s of a plain confluent-kafka loop producing ``size``-byte numpy payloads."""
    from confluent_kafka import Producer

    from pvaflow.kafka.settings import producer_config
    from pvaflow.kafka.topics import ensure_topic

    topic = f"bench-bare-{uuid.uuid4().hex[:8]}"
    ensure_topic(topic, 1, bootstrap=bootstrap)
    p = Producer(producer_config(bootstrap))
    payloads = [np.random.randint(0, 255, size, dtype=np.uint8) for _ in range(8)]
    warm = time.monotonic() + 1.0
    n, t0 = 0, 0.0
    while True:
        now = time.monotonic()
        if t0 == 0.0 and now >= warm:
            p.flush()
            n, t0 = 0, time.monotonic()
        if t0 and now - t0 >= seconds:
            break
        try:
            p.produce(topic, payloads[n % 8], key=b"k" * 8)  # type: ignore[arg-type]
            n += 1
        except BufferError:
            p.poll(0.005)
        p.poll(0)
    p.flush()
    return n * size / (time.monotonic() - t0) / 1e6


def best(results: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [r for r in results if r["ok"]]
    return max(ok, key=lambda r: r["rate"]) if ok else None


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=6.0, help="publishing time per trial")
    ap.add_argument("--receiver-queue-size", type=int, default=-1,
                    help="client queue for both tools (default: -1, none)")
    ap.add_argument("--quick", action="store_true", help="two rates per case (smoke run)")
    ap.add_argument("--render", action="store_true",
                    help="only rewrite the doc section and plot from the last results JSON")
    args = ap.parse_args(argv)
    if args.render:
        from benchmarks.report import RESULTS

        _write(json.loads((RESULTS / "bridge.json").read_text()))
        return 0
    with ExitStack() as stack:
        from pvaflow.ops.broker import external_or_local

        bootstrap, broker = stack.enter_context(external_or_local())
        broker_pid = broker.pid if broker is not None else _pid_listening(
            int(bootstrap.rsplit(":", 1)[1]))
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-bridge-")))
        data: dict[str, Any] = {"receiver_queue_size": args.receiver_queue_size,
                                "seconds": args.seconds, "cases": {}}
        for name, case in CASES.items():
            if args.quick:
                case = {**case, "rates": case["rates"][1:3]}
            print(f"{name} (server queue {case['sqs']}):", flush=True)
            runs = {tool: sweep(tool, case, args.seconds, args.receiver_queue_size, bootstrap,
                                broker_pid, workdir) for tool in ("hpc", "bridge")}
            size = case["nx"] * case["ny"] * np.dtype(case["dt"]).itemsize
            bare = bare_producer(bootstrap, size, 5.0)
            # (b) offers the bridge the top rate, more than Kafka takes here: what it delivers
            # then is its throughput into Kafka (the surplus is dropped and counted)
            sat = Trial("bridge", case, case["rates"][-1], args.seconds,
                        args.receiver_queue_size, bootstrap, broker_pid, workdir).run()
            top = max((*runs["bridge"], sat), key=lambda r: r["mb_per_s"])
            data["cases"][name] = {"runs": runs, "bare_mb_per_s": bare, "saturation": sat,
                                   "bridge_mb_per_s": top["mb_per_s"], "frame_bytes": size}
            print(f"  bare producer {bare:.0f} MB/s, bridge {top['mb_per_s']:.0f} MB/s",
                  flush=True)
    _write(data)
    return 0


def _pid_listening(port: int) -> int | None:
    try:
        out = subprocess.run(["ss", "-tlnpH", f"sport = :{port}"], capture_output=True,
                             text=True, timeout=5).stdout
        m = re.search(r"pid=(\d+)", out)
        return int(m.group(1)) if m else None
    except (OSError, subprocess.SubprocessError):
        return None


def _write(data: dict[str, Any]) -> None:
    rows_a, rows_b, rows_cpu = [], [], []
    for name, d in data["cases"].items():
        hb, bb = best(d["runs"]["hpc"]), best(d["runs"]["bridge"])
        h_rate = hb["rate"] if hb else 0
        b_rate = bb["rate"] if bb else 0
        rows_a.append([name, h_rate, b_rate, f"{b_rate / h_rate:.2f}" if h_rate else "n/a"])
        ratio_b = d["bridge_mb_per_s"] / d["bare_mb_per_s"] if d["bare_mb_per_s"] else 0
        rows_b.append([name, f"{d['bare_mb_per_s']:.0f}", f"{d['bridge_mb_per_s']:.0f}",
                       f"{ratio_b:.2f}"])
        for tool, r in (("pvapy-hpc-consumer", hb), ("pvaflow-bridge", bb)):
            if r:
                cpu = r["cpu"]
                rows_cpu.append([name, tool, r["rate"], f"{cpu.get('sim', 0):.0f}",
                                 f"{cpu.get('hpc', cpu.get('bridge', 0)):.0f}",
                                 f"{cpu['broker']:.0f}" if "broker" in cpu else "n/a"])
    rqs = data["receiver_queue_size"]
    md = f"""## Bridge

`benchmarks/bridge.py`: a real `pvapy-ad-sim-server`, a real broker and the tool under test
share this machine's cores. Each trial publishes for {data['seconds']:g} s; a rate passes when
nothing is lost (uniqueId gaps + overruns + drops, and every published frame received); the
rates are swept upwards and the highest passing one is reported. Both tools use the same server
queue (1000 for small frames, 200 for 2 MiB frames) and client queue ({rqs}; -1 = none).

(a) Highest zero-loss rate (fps):

{table(["frames", "pvapy-hpc-consumer", "pvaflow-bridge", "ratio"], rows_a)}

(b) Throughput into Kafka (MB/s): the bridge's delivered MB/s (median of its 1 s delivery
reports; the best of the sweep and of one extra trial at the top rate of the sweep, which
offers more than Kafka takes here, so the surplus is dropped and counted) against a bare
confluent-kafka producer loop writing payloads of the same size with the same producer
settings:

{table(["frames", "bare producer", "bridge", "ratio"], rows_b)}

Reading the numbers: both tools pass every small-frame rate up to the top of the sweep, where
`pvapy-ad-sim-server` itself saturates (it publishes a little under the requested rate there),
so ratio (a) for 128x128 is a lower bound; the small-frame MB/s of the bridge is likewise capped
by the sim rate (7000 x 16 KiB), not by the bridge. For 2 MiB frames `pvapy-hpc-consumer`
only has to receive; the bridge must also hand every frame to a Kafka broker running on the
same 2 cores, and a bare producer alone reaches only the MB/s in table (b) - far below the
1.2 GB/s that 600 fps of 2 MiB frames needs - so no PVA-to-Kafka tool can reach ratio (a) for
2 MiB frames here; the bridge's zero-loss rate is where the broker stops keeping up while the
sim server and the bridge share its cores. Ratio (b) is the bridge's own cost against that
Kafka limit. The bare producer's MB/s moves a lot between measurements on this machine (the
broker flushes what earlier trials wrote while it runs): compare both rows of table (b), and
repeat the measurement where the broker has its own cores and disks.

CPU per process (% of one core) during publishing, at the highest zero-loss rate:

{table(["frames", "tool", "fps", "sim server", "tool", "broker"], rows_cpu)}

![bridge](img/bridge.png)
"""
    write_section("bridge", md, data)
    _plot(data)


def _plot(data: dict[str, Any]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(data["cases"]), figsize=(10, 4))
    for ax, (name, d) in zip(np.atleast_1d(axes), data["cases"].items(), strict=False):
        for tool, label in (("hpc", "pvapy-hpc-consumer"), ("bridge", "pvaflow-bridge")):
            runs = d["runs"][tool]
            ax.plot([r["rate"] for r in runs], [r["received"] / max(r["published"], 1) * 100
                                                for r in runs], "o-", label=label)
        ax.set_title(name)
        ax.set_xlabel("sim server rate (fps)")
        ax.set_ylabel("frames received (%)")
        ax.legend()
    fig.tight_layout()
    IMG.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG / "bridge.png", dpi=90)


if __name__ == "__main__":
    sys.exit(main())
