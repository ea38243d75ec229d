"""One of the chart's alerts fired for real: Prometheus with the plain rules file (thresholds
made short) scrapes a running consumer; the consumer stops; PvaflowComponentDown goes pending,
then firing, in Prometheus' own ``/api/v1/alerts``."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pvaflow.process import free_port

from .rules import default_thresholds, plain_rules
from .test_dashboards_live import Procs, get_json, pvaflow, wait_until
from .test_probes_live import own_pva_port

pytestmark = pytest.mark.integration

SHORT = {"downFor": "5s", "window": "30s"}


def alerts(base: str, name: str) -> list[dict[str, Any]]:
    body = get_json(f"{base}/api/v1/alerts")
    assert body["status"] == "success", body
    return [a for a in body["data"]["alerts"] if a["labels"].get("alertname") == name]


def test_a_stopped_consumer_fires_component_down(
    tmp_path: Path, live: Procs, prometheus_bin: Path, make_topic: Callable[..., str],
    kafka_bootstrap: str,
) -> None:
    frames = make_topic(1, suffix="frames")
    port = free_port()
    prom_port = free_port(exclude=[port])
    consumer = live.start("consumer", pvaflow(
        "consume", "-b", kafka_bootstrap, "--input-topic", frames, "--processor", "rotate",
        "--group", f"alert-{uuid.uuid4().hex[:6]}", "--control-topic", "",
        "--status-topic", "", "--report-period", "0", "--metrics-port", str(port)),
        env=own_pva_port())

    rules = tmp_path / "pvaflow.rules.yaml"
    rules.write_text(plain_rules({**default_thresholds(), **SHORT}))
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms",
                   "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "pvaflow-consumer",
                            "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    live.start("prometheus", [
        str(prometheus_bin), f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"])
    base = f"http://127.0.0.1:{prom_port}"

    def rule_loaded() -> bool:
        groups = get_json(f"{base}/api/v1/rules")["data"]["groups"]
        return any(r["name"] == "PvaflowComponentDown" for g in groups for r in g["rules"])

    def target_up() -> bool:
        targets = get_json(f"{base}/api/v1/targets")["data"]["activeTargets"]
        return len(targets) == 1 and targets[0]["health"] == "up"

    wait_until(rule_loaded, 60, "the rules loaded", live)
    wait_until(target_up, 90, "the consumer scraped", live)
    assert alerts(base, "PvaflowComponentDown") == []

    live.running = [(n, p) for n, p in live.running if p is not consumer]
    consumer.terminate()
    assert consumer.wait(60) == 0, live.log("consumer")[-3000:]

    states: list[str] = []

    def fired() -> bool:
        found = alerts(base, "PvaflowComponentDown")
        states.extend(a["state"] for a in found if a["state"] not in states)
        return any(a["state"] == "firing" for a in found)

    wait_until(fired, 90, "PvaflowComponentDown firing", live)
    (alert,) = alerts(base, "PvaflowComponentDown")
    assert alert["labels"]["instance"] == f"127.0.0.1:{port}"
    assert alert["labels"]["severity"] == "critical"
    assert states[0] == "pending", states  # held for downFor before it fired
