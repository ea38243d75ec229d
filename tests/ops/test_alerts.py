"""The alert rules: one source (helm/pvaflow/files/alerts.yaml), two outputs (the chart's
PrometheusRule and the plain alerts/pvaflow.rules.yaml), checked and unit-tested by promtool.

promtool comes from Debian's prometheus package that ``make tools`` unpacks; the promtool unit
tests (tests/ops/alerts.test.yaml) feed synthetic series to every alert and check it fires when
it should and stays silent when it should not.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from . import crds
from .conftest import CHART, REPO, HelmError, find, render
from .rules import PLAIN, SOURCE, default_thresholds, fill, plain_rules

UNIT_TESTS = Path(__file__).with_name("alerts.test.yaml")
RULE_ON = {"monitoring": {"prometheusRule": {"enabled": True}}}
# Where the metrics come from: the alerts may use only names these files export.
EXPORTERS = [REPO / p for p in ("bridge/stats.py", "processors/stats.py", "collectors/stats.py",
                                "ops/monitor.py")]
# Metrics of Prometheus itself and of kube-state-metrics.
FOREIGN = {"up", "kube_deployment_status_replicas_unavailable"}
PROMQL_WORDS = {"sum", "increase", "rate", "deriv", "and", "or", "unless", "max",
                "on", "ignoring", "offset", "bool"}


def rules_of(groups: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [r for g in groups["groups"] for r in g["rules"]]


def plain() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(PLAIN.read_text())
    return doc


def promtool_run(promtool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool), *args], capture_output=True, text=True, timeout=120)


def unit_test(promtool: Path, tmp: Path, rules_text: str) -> subprocess.CompletedProcess[str]:
    """promtool test rules of alerts.test.yaml against ``rules_text``, annotations other than
    ``summary`` removed (the tests compare the summary; the rest is prose)."""
    rules = yaml.safe_load(rules_text)
    for rule in rules_of(rules):
        rule["annotations"] = {"summary": rule["annotations"]["summary"]}
    (tmp / "rules.yaml").write_text(yaml.safe_dump(rules))
    tests = yaml.safe_load(UNIT_TESTS.read_text())
    assert tests["rule_files"] == ["RULES"]
    tests["rule_files"] = ["rules.yaml"]
    (tmp / "tests.yaml").write_text(yaml.safe_dump(tests))
    return promtool_run(promtool, "test", "rules", str(tmp / "tests.yaml"))


def test_plain_rules_file_is_generated_from_the_source() -> None:
    assert PLAIN.read_text() == plain_rules(), \
        f"{PLAIN.relative_to(REPO)} is stale: run `make alerts`"


def test_prometheus_rule_agrees_with_plain_file(helm: Path, tmp_path: Path) -> None:
    """The chart with default thresholds renders exactly the plain file's rules."""
    docs = render(helm, tmp_path, RULE_ON)
    (rule,) = find(docs, "PrometheusRule")
    assert rule["spec"] == plain()
    assert rule["metadata"]["name"] == "rel-pvaflow"
    assert not find(render(helm, tmp_path), "PrometheusRule"), "off by default"


def test_thresholds_come_from_values(helm: Path, tmp_path: Path) -> None:
    values = {"window": "10m", "dlqPerSecond": 2.5, "lagGrowingFor": "1h30m",
              "producerQueueMessages": 150, "jobSelector": 'job="pvaflow"'}
    docs = render(helm, tmp_path, RULE_ON, {"monitoring": {
        "alerts": values, "prometheusRule": {"labels": {"release": "kps"},
                                             "alertLabels": {"team": "detectors"}}}})
    (rule,) = find(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kps"
    expected = yaml.safe_load(fill(SOURCE.read_text(), {**default_thresholds(), **values}))
    for r in rules_of(expected):
        r["labels"] = {**r["labels"], "team": "detectors"}
    assert rule["spec"] == expected
    by_name = {r["alert"]: r for r in rules_of(rule["spec"])}
    assert "rate(pvaflow_dlq_frames_total[10m])) > 2.5" in by_name["PvaflowDeadLetterRate"]["expr"]
    assert by_name["PvaflowConsumerLagGrowing"]["for"] == "1h30m"
    assert by_name["PvaflowComponentDown"]["expr"].strip() == 'up{job="pvaflow"} == 0'
    assert "> 150" in by_name["PvaflowProducerQueueNearFull"]["expr"]


@pytest.mark.parametrize("alerts", [
    {"dlqFor": "five minutes"}, {"lostFrames": -1}, {"dlqPerSecond": "often"},
    {"jobSelector": "pvaflow"}, {"unknownThreshold": 3}, {"window": None},
], ids=lambda a: ",".join(a))
def test_values_schema_rejects_bad_thresholds(helm: Path, tmp_path: Path,
                                             alerts: dict[str, Any]) -> None:
    with pytest.raises(HelmError, match=r"monitoring\.alerts|values don't meet"):
        render(helm, tmp_path, RULE_ON, {"monitoring": {"alerts": alerts}})


def test_missing_threshold_fails_without_schema(helm: Path, tmp_path: Path) -> None:
    """A placeholder without a value is an error even with schema validation skipped."""
    with pytest.raises(HelmError, match=r"\$\{window\}.*monitoring\.alerts does not set"):
        render(helm, tmp_path, RULE_ON, {"monitoring": {"alerts": {"window": None}}},
               extra=["--skip-schema-validation"])


def test_every_alert_is_explained() -> None:
    rules = rules_of(plain())
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)) and all(n.startswith("Pvaflow") for n in names)
    for r in rules:
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        for key in ("summary", "description", "runbook"):
            assert len(r["annotations"].get(key, "").strip()) > 20, (r["alert"], key)


def exported_name(name: str, source: str) -> bool:
    """``name`` appears as a string in the exporters' source (prometheus-client adds _total to
    counters; the bridge writes its counters as f"pvaflow_bridge_{name}")."""
    base = name.removesuffix("_total")
    if f'"{base}"' in source or f'"{name}"' in source:
        return True
    short = base.removeprefix("pvaflow_bridge_")
    return short != base and f'("{short}", ' in source and 'f"pvaflow_bridge_{name}"' in source


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (plain names and __name__ matchers)."""
    names = set(re.findall(r"\bpvaflow_[a-z_]+\b", expr))
    bare = re.sub(r'"[^"]*"|\{[^}]*\}|\[[^]]*\]', " ", expr)  # label values, matchers, ranges
    bare = re.sub(r"\b(by|without)\s*\([^)]*\)", " ", bare)     # grouping labels
    words = set(re.findall(r"\b[a-zA-Z_][a-zA-Z0-9_]*\b", bare))
    return names | {w for w in words - PROMQL_WORDS if not w.startswith("pvaflow_")}


def test_alerts_use_exported_metric_names() -> None:
    """Every pvaflow_* series an alert reads is one a component or the monitor exports; the
    others are Prometheus' up and kube-state-metrics."""
    source = "\n".join(p.read_text() for p in EXPORTERS)
    for r in rules_of(plain()):
        names = metric_names(r["expr"])
        assert names, r["alert"]
        for name in names:
            assert name in FOREIGN or exported_name(name, source), (r["alert"], name)
    assert not exported_name("pvaflow_frames_lost_total", source)
    assert exported_name("pvaflow_bridge_source_missed_frames_total", source)
    assert metric_names('sum by (group) (rate(pvaflow_dlq_frames_total{a="b"}[5m])) > 1') == {
        "pvaflow_dlq_frames_total"}


def test_promtool_check_rules(promtool: Path, helm: Path, tmp_path: Path) -> None:
    """The plain file and the chart's rules with other thresholds pass promtool check rules."""
    proc = promtool_run(promtool, "check", "rules", str(PLAIN))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules_of(plain()))} rules found" in proc.stdout
    (rule,) = find(render(helm, tmp_path, RULE_ON, {"monitoring": {"alerts": {
        "window": "30s", "dlqPerSecond": 0.001, "downFor": "0s"}}}), "PrometheusRule")
    (tmp_path / "chart.rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    proc = promtool_run(promtool, "check", "rules", str(tmp_path / "chart.rules.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests(promtool: Path, tmp_path: Path) -> None:
    proc = unit_test(promtool, tmp_path, PLAIN.read_text())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_unit_tests_cover_every_alert() -> None:
    """Each alert has a case where it fires and one where it is silent."""
    cases: dict[str, set[bool]] = {}
    for group in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for case in group["alert_rule_test"]:
            cases.setdefault(case["alertname"], set()).add(bool(case["exp_alerts"]))
    assert cases == {r["alert"]: {True, False} for r in rules_of(plain())}


def test_unit_tests_fail_when_the_alerts_cannot_fire(promtool: Path, tmp_path: Path) -> None:
    """With thresholds no test series reaches, every alert's firing case fails: the unit
    tests do check the thresholds."""
    unreachable = {**default_thresholds(), "lostFrames": 10**6, "lagMinMessages": 10**9,
                   "dlqPerSecond": 1000, "downFor": "1h", "collectorMissedFrames": 10**6,
                   "collectorLateFrames": 10**6, "producerQueueMessages": 10**9,
                   "bridgeProducerQueueMessages": 10**9}
    text = fill(SOURCE.read_text(), unreachable)
    proc = unit_test(promtool, tmp_path, text)
    assert proc.returncode != 0
    for r in rules_of(yaml.safe_load(text)):
        assert f"alertname: {r['alert']}," in proc.stdout + proc.stderr, r["alert"]


def test_prometheus_rule_validates_against_crd(helm: Path, crd_dir: Path, tmp_path: Path) -> None:
    (rule,) = find(render(helm, tmp_path, RULE_ON), "PrometheusRule")
    crds.validate(rule)


def test_chart_file_is_packaged() -> None:
    """files/alerts.yaml is inside the chart (not ignored), so .Files.Get sees it."""
    ignore = CHART / ".helmignore"
    patterns = ignore.read_text().split() if ignore.is_file() else []
    assert not any(p.strip("/") in ("files", "files/*", "*.yaml") for p in patterns)
    assert SOURCE.is_file() and SOURCE.parent.parent == CHART
