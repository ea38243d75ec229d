"""pvaflow-monitor: stage aggregation (pure) and, against real components, totals that match
each component's own final stats and survive a monitor restart (Table changelog)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
from pvaflow.ops.monitor import latest_from_messages, metrics_text, pipeline_view
from pvaflow.ops.status_cli import read_status_topic

from tests.collectors.helpers import PLUGIN, ctl, procs, produce_frames, wait_for  # noqa: F401


def status(kind, group, cid, t, final=False, **stats):
    return {"v": 1, "type": "status", "component": f"{kind}/{group}/{cid}", "kind": kind,
            "group": group, "id": cid, "time": t, "stats": stats, "final": final}


def test_view_sums_stages_and_losses_and_rates():
    msgs = [
        status("bridge", "bridge", "1", 0, received=100, delivered=98, missed=3, dropped=2),
        status("consumer", "g", "1", 0, received=40, processed=40, dlq=1, lag=5),
        status("consumer", "g", "1", 10, received=60, processed=59, dlq=1, lag=5),
        status("consumer", "g", "2", 10, final=True, received=38, processed=38, sequence_gaps=2),
        status("collector", "c", "1", 10, received=97, emitted=90, missed=4, late=1,
               duplicates=3),
    ]
    view = pipeline_view(latest_from_messages(msgs), now=12)
    stages = {s["stage"]: s for s in view["stages"]}
    assert [s["kind"] for s in view["stages"]] == ["bridge", "consumer", "collector"]
    assert stages["bridge/bridge"]["lost"] == {
        "source_gaps": 3, "overruns": 0, "dropped": 2, "delivery_errors": 0}
    g = stages["consumer/g"]
    assert (g["frames_in"], g["frames_out"], g["lost_total"], g["lag"]) == (98, 97, 3, 5)
    assert (g["running"], g["components"], g["rate_out"]) == (1, 2, 1.9)
    c = stages["collector/c"]
    assert (c["frames_out"], c["lost"], c["duplicates"]) == (90, {"missed": 4, "late": 1}, 3)
    assert view["lost_total"] == 5 + 3 + 5
    text = metrics_text(view).decode()
    assert 'pvaflow_stage_frames_lost_total{group="c",kind="collector",reason="missed",' \
           'stage="collector/c"} 4.0' in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return json.load(r)
    except OSError:
        return None


@pytest.mark.integration
def test_status_totals_match_final_stats_and_survive_monitor_restart(
        kafka_bootstrap, make_topic, procs, ctl):  # noqa: F811 (fixtures)
    from tests.collectors.test_collector_kafka import collector

    frames, processed, ordered = make_topic(4), make_topic(4), make_topic(1)
    status_topic, port, app_id = ctl[3], _free_port(), f"mon-{uuid.uuid4().hex[:8]}"
    url = f"http://127.0.0.1:{port}"
    mon_args = ("pvaflow-monitor", "-b", kafka_bootstrap, "--status-topic", status_topic,
                "--app-id", app_id, "--web-port", str(port))
    mon = procs("monitor", *mon_args)
    for cid in ("1", "2"):
        procs(f"consumer{cid}", "pvaflow-consumer", "--input-topic", frames, "--output-topic",
              processed, "--group", "g", "--consumer-id", cid, "--processor-file", PLUGIN,
              "--processor-class", "Jitter", "--report-period", "1", "-b", kafka_bootstrap,
              *ctl)
    collector(procs, kafka_bootstrap, processed, ordered, f"g-{ordered}", ctl, "--max-delay", "10")
    produce_frames(kafka_bootstrap, frames, range(1, 301), partitions=4)
    wait_for(lambda: (_get(url + "/status") or {}).get("stages") and any(
        s["kind"] == "collector" and s["frames_out"] == 300
        for s in _get(url + "/status")["stages"]), 120, "collector total in the monitor")
    assert not Path(f"{app_id}-data").exists(), "faust's app dir belongs in <tmp>, not the cwd"
    for p in reversed(procs.started[1:]):  # components first, the monitor last
        assert p.stop() == 0
    finals = {m["component"]: m["stats"] for m in read_status_topic(status_topic, kafka_bootstrap)
              if m.get("type") == "status" and m.get("final")}
    assert len(finals) == 3

    def totals(view):
        return {s["stage"]: (s["frames_in"], s["frames_out"], s["lost_total"])
                for s in view["stages"]}

    expected = {
        "consumer/g": (sum(finals[f"consumer/g/{i}"]["received"] for i in "12"),
                       sum(finals[f"consumer/g/{i}"]["processed"] for i in "12"), 0),
        f"collector/g-{ordered}": (300, 300, 0),
    }
    wait_for(lambda: totals(_get(url + "/status") or {"stages": []}) == expected, 30,
             "final totals in the monitor")
    mon.kill()  # SIGKILL: only the changelog can bring the table back
    mon.wait()
    procs("monitor2", *mon_args)

    def recovered() -> bool:  # the table fills in while the changelog replays
        view = _get(url + "/status") or {"stages": [], "components": []}
        states = [c["state"] for c in view["components"]]
        return totals(view) == expected and states == ["stopped"] * 3

    assert wait_for(recovered, 120, "totals and stopped states after the monitor restart")
    # What an operator types: `pvaflow status` as JSON and as the table.
    cli = [sys.executable, "-m", "pvaflow.cli", "status", "--monitor", url]
    out = subprocess.run([*cli, "--json"], capture_output=True, text=True, timeout=60, check=True)
    assert totals(json.loads(out.stdout)) == expected
    table = subprocess.run(cli, capture_output=True, text=True, timeout=60, check=True).stdout
    for stage, (n_in, n_out, lost) in expected.items():
        row = next(line.split() for line in table.splitlines() if line.startswith(stage + " "))
        assert row[2:5] == [f"{n_in:,}", f"{n_out:,}", str(lost)], table
