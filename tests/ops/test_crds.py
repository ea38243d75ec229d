"""The chart's custom resources validated against the real CRDs of KEDA and prometheus-operator.

``scripts/tools`` copies the CRDs out of the projects' Go modules (fetched through the Go module
proxy) into ``.cache/tools/crds``; tests/ops/crds.py checks a resource against its CRD's
openAPIV3Schema with unknown fields rejected, as an API server with strict field validation
does. Every values combination the chart supports is rendered and every ScaledObject,
TriggerAuthentication, ServiceMonitor, PodMonitor and PrometheusRule in it must validate;
deliberately broken resources must not.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from . import crds
from .conftest import find, render
from .test_chart import (
    EXAMPLE,
    HPA_ON,
    KEDA_ON,
    PIPELINE,
    POD_MONITOR,
    SASL,
    SERVICE_MONITOR,
    VALUE_SETS,
)

RULE_ON = {"monitoring": {"prometheusRule": {
    "enabled": True, "labels": {"release": "kps"}, "alertLabels": {"team": "detectors"}}}}
KEDA_ALL = {"deploy": {"stageDefaults": {"autoscaling": {"keda": {"enabled": True}}}}}
TLS_ONLY = {"kafka": {"tls": {"enabled": True, "existingSecret": "kafka-ca"}}}
SASL_ONLY = {"kafka": {"sasl": {"enabled": True, "existingSecret": "kafka-user",
                                "mechanism": "PLAIN"}}}
THRESHOLDS = {"monitoring": {"alerts": {"window": "10m", "dlqPerSecond": 2.5,
                                        "lagGrowingFor": "1h30m", "producerQueueMessages": 150}}}
# Every custom-resource switch of the chart, alone and together.
CR_SETS: dict[str, list[Mapping[str, Any]]] = {
    **VALUE_SETS,
    "rule": [RULE_ON],
    "rule-thresholds": [EXAMPLE, RULE_ON, THRESHOLDS],
    "keda-every-stage": [yaml.safe_load(PIPELINE), KEDA_ALL],
    "keda-tls": [EXAMPLE, KEDA_ON, TLS_ONLY],
    "keda-sasl-plain": [EXAMPLE, KEDA_ON, SASL_ONLY],
    "keda-hpa-split": [yaml.safe_load(PIPELINE), KEDA_ON, {"deploy": {"stages": {
        "rot-a": HPA_ON["deploy"]["stages"]["rotate"]}}}],
    "pod-monitor-rule-keda-sasl": [EXAMPLE, KEDA_ON, SASL, POD_MONITOR, RULE_ON],
    "service-monitor-rule": [EXAMPLE, SERVICE_MONITOR, RULE_ON],
}
KINDS = {kind for _, kind in crds.CRD_FILES}


def custom(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in KINDS]


@pytest.mark.parametrize("name", sorted(CR_SETS))
def test_custom_resources_validate(helm: Path, crd_dir: Path, tmp_path: Path, name: str) -> None:
    docs = render(helm, tmp_path, *CR_SETS[name])
    for doc in custom(docs):
        assert crds.is_custom(doc), f"{doc['apiVersion']} {doc['kind']}: not a known CRD version"
        crds.validate(doc)


def test_every_custom_kind_is_covered(helm: Path, crd_dir: Path, tmp_path: Path) -> None:
    """The value sets above render each kind the CRD directory holds at least once."""
    seen = set()
    for values in CR_SETS.values():
        seen |= {d["kind"] for d in custom(render(helm, tmp_path, *values))}
    assert seen == KINDS


def _rendered(helm: Path, tmp_path: Path) -> dict[str, dict[str, Any]]:
    docs = render(helm, tmp_path, EXAMPLE, KEDA_ON, SASL, SERVICE_MONITOR, RULE_ON)
    out = {d["kind"]: d for d in custom(docs)}
    out["PodMonitor"] = find(render(helm, tmp_path, EXAMPLE, POD_MONITOR), "PodMonitor")[0]
    assert set(out) == KINDS
    return out


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``doc`` with the dotted ``path`` (list indexes as numbers) set, or deleted
    when ``value`` is ``DELETE``."""
    doc = copy.deepcopy(doc)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: Any = doc
    for p in parents:
        node = node[p]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


DELETE = object()
BROKEN = [
    ("ScaledObject", "spec.triggers.0.metadata", DELETE, "'metadata' is a required property"),
    ("ScaledObject", "spec.triggers.0.metadata.lagThreshold", 50, "is not of type 'string'"),
    ("ScaledObject", "spec.triggers.0.authenticationRef.secret", "x", "Additional properties"),
    ("ScaledObject", "spec.scaleTargetRef", DELETE, "'scaleTargetRef' is a required property"),
    ("ScaledObject", "spec.maxReplicaCount", "four", "is not of type 'integer'"),
    ("ScaledObject", "spec.pollingIntervall", 15, "Additional properties"),
    ("TriggerAuthentication", "spec.secretTargetRef.0.key", DELETE, "'key' is a required"),
    ("ServiceMonitor", "spec.endpoints", "metrics", "is not of type 'array'"),
    ("ServiceMonitor", "spec.endpoints.0.interval", "15 seconds", "does not match"),
    ("ServiceMonitor", "spec.endpoints.0.portName", "metrics", "Additional properties"),
    ("ServiceMonitor", "spec.selector", DELETE, "'selector' is a required property"),
    ("PodMonitor", "spec.podMetricsEndpoints.0.path", ["/metrics"], "is not of type 'string'"),
    ("PodMonitor", "spec.selektor", {}, "Additional properties"),
    ("PrometheusRule", "spec.groups.0.rules.0.for", "ten minutes", "does not match"),
    ("PrometheusRule", "spec.groups.0.rules.0.expr", DELETE, "'expr' is a required property"),
    ("PrometheusRule", "spec.groups.0.rules.0.annotation", {}, "Additional properties"),
    ("PrometheusRule", "spec.groups.0.name", DELETE, "'name' is a required property"),
    ("PrometheusRule", "metadata.name", "Pvaflow_Rules", "does not match"),
    ("PrometheusRule", "apiVersion", "monitoring.coreos.com/v2", "not served"),
]


@pytest.mark.parametrize(("kind", "path", "value", "message"), BROKEN,
                         ids=[f"{k}:{p}" for k, p, _, _ in BROKEN])
def test_bad_field_fails(helm: Path, crd_dir: Path, tmp_path: Path, kind: str, path: str,
                         value: Any, message: str) -> None:
    good = _rendered(helm, tmp_path)[kind]
    crds.validate(good)
    with pytest.raises(jsonschema.ValidationError, match=message) as info:
        crds.validate(_set(good, path, value))
    where = path.rsplit(".", 1)[0] if value is DELETE or "Additional" in message else path
    if kind != "PrometheusRule" or not path.startswith("apiVersion"):
        assert where.replace(".", "/") in str(info.value), str(info.value)


def test_strict_keeps_open_maps_open() -> None:
    """Maps the CRD declares open (labels, trigger metadata) still accept any key; a schema
    with properties but no additionalProperties becomes closed."""
    schema = crds.strict({"type": "object", "properties": {
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                 "properties": {"a": {"type": "string"}}},
        "port": {"x-kubernetes-int-or-string": True},
        "opt": {"type": "string", "nullable": True}}})
    v = jsonschema.Draft7Validator(schema)
    assert v.is_valid({"labels": {"any": "x"}, "free": {"b": 1}, "port": 80, "opt": None})
    assert v.is_valid({"port": "metrics"})
    assert not v.is_valid({"port": 1.5})
    assert not v.is_valid({"other": 1})
