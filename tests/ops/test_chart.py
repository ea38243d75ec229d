"""The Helm chart, rendered by a real ``helm`` and validated offline with kubernetes-validate.

Each value set is linted and rendered; every built-in resource must validate strictly against
the Kubernetes 1.31 schemas bundled with kubernetes-validate. Custom resources (KEDA
ScaledObject/TriggerAuthentication, prometheus-operator ServiceMonitor/PodMonitor/
PrometheusRule) are validated against their CRDs in test_crds.py; here their content is
asserted field by field.
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pvaflow.ops.pipeline import components

from pvaflow.kafka.settings import producer_config

from .conftest import CHART, REPO, HelmError, dashboards, find, render, run_helm

KUBE_VERSION = "1.31.0"
CRDS = {
    ("keda.sh/v1alpha1", "ScaledObject"), ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}

EXAMPLE = yaml.safe_load((CHART / "examples" / "pipeline.yaml").read_text())
KEDA_ON = {"deploy": {"stages": {"rotate": {"autoscaling": {"keda": {
    "enabled": True, "lagThreshold": 50, "maxReplicaCount": 4}}}}}}
HPA_ON = {"deploy": {"stages": {"rotate": {
    "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
    "autoscaling": {"hpa": {"enabled": True, "maxReplicas": 6}}}}}}
SASL = {"kafka": {
    "sasl": {"enabled": True, "existingSecret": "kafka-user", "mechanism": "SCRAM-SHA-256"},
    "tls": {"enabled": True, "existingSecret": "kafka-ca", "certKey": "tls.crt",
            "keyKey": "tls.key"},
    "config": {"ssl.endpoint.identification.algorithm": "none", "linger.ms": 5}}}
SERVICE_MONITOR = {"monitoring": {"serviceMonitor": {"enabled": True,
                                                     "labels": {"release": "kps"}}}}
POD_MONITOR = {"monitoring": {"podMonitor": {"enabled": True}}}
VALUE_SETS: dict[str, list[Mapping[str, Any]]] = {
    "defaults": [],
    "example": [EXAMPLE],
    "keda": [EXAMPLE, KEDA_ON],
    "hpa": [EXAMPLE, HPA_ON],
    "sasl-tls": [EXAMPLE, SASL],
    "service-monitor": [EXAMPLE, SERVICE_MONITOR],
    "pod-monitor": [EXAMPLE, POD_MONITOR],
    "keda-sasl-monitor": [EXAMPLE, KEDA_ON, SASL, SERVICE_MONITOR],
}


def pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Deployment name -> pod spec."""
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"]
            for d in find(docs, "Deployment")}


def container(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    spec = pods(docs)[name]
    assert len(spec["containers"]) == 1
    c: dict[str, Any] = spec["containers"][0]
    return c


def env_of(c: Mapping[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in c.get("env", [])}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_and_validate(helm: Path, tmp_path: Path, name: str) -> None:
    """helm lint --strict passes; every built-in resource validates against Kubernetes 1.31."""
    values = VALUE_SETS[name]
    run_helm(helm, "lint", "--strict", str(CHART), values=values, tmp=tmp_path)
    docs = render(helm, tmp_path, *values)
    assert find(docs, "Deployment", "rel-pvaflow-monitor"), "nothing rendered"
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']}: {exc}") from exc


def test_defaults_deploy_only_the_monitor(helm: Path, tmp_path: Path) -> None:
    """No pipeline defaults (helm would merge them into the user's pipeline file)."""
    docs = render(helm, tmp_path)
    assert sorted(pods(docs)) == ["rel-pvaflow-monitor"]
    assert len(find(docs, "ConfigMap")) == len(dashboards())


def test_example_render(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, tmp_path, EXAMPLE)
    assert sorted(pods(docs)) == ["rel-pvaflow-bridge", "rel-pvaflow-collector",
                                  "rel-pvaflow-monitor", "rel-pvaflow-stage-rotate"]
    assert sorted(s["metadata"]["name"] for s in find(docs, "Service")) == [
        "rel-pvaflow-bridge", "rel-pvaflow-collector", "rel-pvaflow-monitor",
        "rel-pvaflow-stage-rotate"]
    for kind in ("ScaledObject", "HorizontalPodAutoscaler", "ServiceMonitor", "PodMonitor"):
        assert not find(docs, kind), kind
    stage = find(docs, "Deployment", "rel-pvaflow-stage-rotate")[0]
    assert stage["spec"]["replicas"] == 2  # n_consumers: 2 -> two pods, one consumer each
    args = container(docs, "rel-pvaflow-stage-rotate")["args"]
    assert args[0] == "consumer" and "--n-consumers" not in args
    assert args[args.index("--group") + 1] == "rotate"  # group defaults to the stage name
    monitor = container(docs, "rel-pvaflow-monitor")["args"]
    assert monitor[monitor.index("--web-host") + 1] == "0.0.0.0"
    assert "--control-topic" not in monitor  # the monitor has no such option
    for c in (container(docs, n) for n in pods(docs)):
        assert env_of(c).keys().isdisjoint({"PVAFLOW_KAFKA_SECURITY_PROTOCOL"})


def test_security_context_and_probes(helm: Path, tmp_path: Path) -> None:
    """Non-root, read-only root, no capabilities, writable /tmp; probes are HTTP only (a TCP
    connect would wedge a pvapy PVA server): /healthz for liveness, /readyz for readiness."""
    docs = render(helm, tmp_path, EXAMPLE,
                  {"mirror": {"topic": "ordered", "output_channel": "m:img"}})
    specs = pods(docs)
    assert "rel-pvaflow-mirror" in specs
    for name, spec in specs.items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        assert spec["automountServiceAccountToken"] is False, name
        tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "add" not in sc["capabilities"], name
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert mounts.get("/tmp") in tmp_volumes, name
            assert c["workingDir"] == "/tmp", name
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            # liveness: the loop comes round; readiness: connected (the monitor: on its web
            # port, everyone else on the metrics port)
            paths = {"startupProbe": "/healthz", "livenessProbe": "/healthz",
                     "readinessProbe": "/readyz"}
            for probe, path in paths.items():
                p = c[probe]
                assert "tcpSocket" not in p and "exec" not in p, (name, probe)
                assert p["httpGet"]["port"] == (
                    "http" if name.endswith("-monitor") else "metrics"), (name, probe)
                assert p["httpGet"]["port"] in ports, (name, probe)
                assert p["httpGet"]["path"] == path, (name, probe)
        if name.endswith("-mirror"):
            assert "--metrics-port" in spec["containers"][0]["args"], name


def test_keda_scaled_object(helm: Path, tmp_path: Path) -> None:
    values = copy.deepcopy(KEDA_ON)
    docs = render(helm, tmp_path, values, {"stages": [
        {"name": "rotate", "input_topic": "frames", "distributor_set": "A",
         "processor": "rotate", "group": "rot-a", "output_topic": "rotated"}]})
    (so,) = find(docs, "ScaledObject")
    deployment = find(docs, "Deployment", "rel-pvaflow-stage-rotate")[0]
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    assert so["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                            "name": "rel-pvaflow-stage-rotate"}
    assert so["spec"]["maxReplicaCount"] == 4
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"] == {
        "bootstrapServers": "kafka-bootstrap:9092", "consumerGroup": "rot-a",
        "topic": "frames.A", "lagThreshold": "50", "offsetResetPolicy": "earliest"}
    assert "authenticationRef" not in trigger
    assert not find(docs, "HorizontalPodAutoscaler")
    assert not find(docs, "TriggerAuthentication")


def test_keda_with_sasl_uses_trigger_authentication(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, tmp_path, EXAMPLE, KEDA_ON, SASL)
    (so,) = find(docs, "ScaledObject")
    (auth,) = find(docs, "TriggerAuthentication")
    trigger = so["spec"]["triggers"][0]
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    assert trigger["metadata"]["sasl"] == "scram_sha_256"
    assert trigger["metadata"]["tls"] == "enable"
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs == {"username": ("kafka-user", "username"), "password": ("kafka-user", "password"),
                    "ca": ("kafka-ca", "ca.crt"), "cert": ("kafka-ca", "tls.crt"),
                    "key": ("kafka-ca", "tls.key")}


def test_hpa(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, tmp_path, EXAMPLE, HPA_ON)
    (hpa,) = find(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "rel-pvaflow-stage-rotate"
    assert hpa["spec"]["maxReplicas"] == 6
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in find(docs, "Deployment", "rel-pvaflow-stage-rotate")[0]["spec"]
    assert not find(docs, "ScaledObject")


def test_keda_and_hpa_are_mutually_exclusive(helm: Path, tmp_path: Path) -> None:
    both = {"deploy": {"stages": {"rotate": {"autoscaling": {
        "keda": {"enabled": True}, "hpa": {"enabled": True}}}}}}
    with pytest.raises(HelmError, match=r"autoscaling\.hpa\.enabled"):  # values.schema.json
        render(helm, tmp_path, EXAMPLE, both)
    with pytest.raises(HelmError, match=r'stage "rotate".*keda and hpa.*mutually exclusive'):
        render(helm, tmp_path, EXAMPLE, both, extra=["--skip-schema-validation"])
    # Each map alone passes the schema; the merged settings still must not enable both.
    split = {"deploy": {"stageDefaults": {"autoscaling": {"keda": {"enabled": True}}},
                        "stages": {"rotate": {"autoscaling": {"hpa": {"enabled": True}}}}}}
    with pytest.raises(HelmError, match="mutually exclusive"):
        render(helm, tmp_path, EXAMPLE, split)


def test_service_and_pod_monitor(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, tmp_path, EXAMPLE, SERVICE_MONITOR)
    (sm,) = find(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kps"
    selector = sm["spec"]["selector"]["matchLabels"]
    services = find(docs, "Service")
    assert services and all(
        selector.items() <= s["metadata"]["labels"].items() for s in services)
    endpoints = {e["port"]: e["path"] for e in sm["spec"]["endpoints"]}
    assert endpoints == {"metrics": "/metrics", "http": "/metrics"}
    port_names = {p["name"] for s in services for p in s["spec"]["ports"]}
    assert port_names == {"metrics", "http"}
    docs = render(helm, tmp_path, EXAMPLE, POD_MONITOR)
    (pm,) = find(docs, "PodMonitor")
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in find(docs, "Deployment")]
    assert all(pm["spec"]["selector"]["matchLabels"].items() <= lab.items()
               for lab in pod_labels)
    with pytest.raises(HelmError, match="enable one"):
        render(helm, tmp_path, SERVICE_MONITOR, POD_MONITOR)


def test_kafka_auth_env_gives_librdkafka_settings(
    helm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rendered env, with the Secret files where the pod mounts them, makes
    pvaflow.kafka.settings produce the SASL/TLS client configuration."""
    docs = render(helm, tmp_path, EXAMPLE, SASL)
    c = container(docs, "rel-pvaflow-stage-rotate")
    spec = pods(docs)["rel-pvaflow-stage-rotate"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["kafka-sasl"]["secret"]["secretName"] == "kafka-user"
    assert volumes["kafka-tls"]["secret"]["secretName"] == "kafka-ca"
    assert mounts["kafka-sasl"]["readOnly"] is True
    secret_files = {"kafka-sasl": {"username": "alice", "password": "s3cret"},
                    "kafka-tls": {"ca.crt": "CA", "tls.crt": "CRT", "tls.key": "KEY"}}
    local: dict[str, Path] = {}
    for vol, files in secret_files.items():
        d = tmp_path / vol
        d.mkdir()
        for f, text in files.items():
            (d / f).write_text(text + "\n")
        local[mounts[vol]["mountPath"]] = d
    for name in list(os.environ):
        if name.startswith("PVAFLOW_KAFKA_"):
            monkeypatch.delenv(name)
    for name, value in env_of(c).items():
        if name.startswith("PVAFLOW_KAFKA_"):
            for mount, d in local.items():
                value = value.replace(mount, str(d))
            monkeypatch.setenv(name, value)
    conf = producer_config("kafka:9092")
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-256"
    assert (conf["sasl.username"], conf["sasl.password"]) == ("alice", "s3cret")
    assert conf["ssl.ca.location"] == str(local["/etc/pvaflow/kafka-tls"] / "ca.crt")
    assert conf["ssl.key.location"].endswith("tls.key")
    assert conf["ssl.endpoint.identification.algorithm"] == "none"
    assert conf["linger.ms"] == "5"
    assert not any("s3cret" in json.dumps(d) for d in docs), "secret value leaked"


def test_secrets_required(helm: Path, tmp_path: Path) -> None:
    with pytest.raises(HelmError, match="existingSecret"):
        render(helm, tmp_path, {"kafka": {"sasl": {"enabled": True}}})
    with pytest.raises(HelmError, match="existingSecret"):
        render(helm, tmp_path, {"kafka": {"sasl": {"enabled": True}}},
               extra=["--skip-schema-validation"])
    with pytest.raises(HelmError, match="bootstrap_servers"):
        render(helm, tmp_path, {"bootstrap_servers": ""})


PIPELINE = """
bootstrap_servers: broker-0:9092
status_topic: lab.status
bridge:
  input_channel: [13SIM1:Pva1:Image, 13SIM1:Pva2:Image]
  topic: [frames1, frames2]
  partitions: 4
  distributor_updates: 3
  distributor_sets: A,B
  topic_config: [retention.ms=3600000]
  metrics_port: 9200
stages:
  - name: rot-a
    input_topic: frames1
    distributor_set: A
    processor: rotate
    processor_args: {angle: 90, scale: 1.5}
    n_consumers: 3
    output_topic: rotated
    exactly_once: true
    max_queue_size: 200
  - input_topic: rotated
    processor: passthrough
    output_topic: final
collector:
  input_topic: [final]
  output_topic: ordered
  collector_cache_size: 1000000
  max_delay: 2.5
monitor:
  stale_after: 20
"""


def option_pairs(args: list[str]) -> list[tuple[str, Any]]:
    """Arguments as sorted (flag, value) pairs; JSON values parsed, so spacing is irrelevant."""
    pairs, i = [], 0
    while i < len(args):
        flag = args[i]
        assert flag.startswith("--"), args
        if i + 1 < len(args) and not args[i + 1].startswith("--"):
            value: Any = args[i + 1]
            if value.startswith("{"):
                value = json.loads(value)
            pairs.append((flag, value))
            i += 2
        else:
            pairs.append((flag, True))
            i += 1
    return sorted(pairs, key=lambda p: (p[0], json.dumps(p[1], sort_keys=True)))


def test_pipeline_file_is_values_file(helm: Path, tmp_path: Path) -> None:
    """A `pvaflow run` pipeline file passed with -f renders the same command lines `pvaflow run`
    starts, except what Kubernetes does differently (n_consumers -> replicas, ports)."""
    spec = yaml.safe_load(PIPELINE)
    local = {c.name: c.args for c in components(spec)}
    docs = render(helm, tmp_path, spec)
    chart_names = {"bridge": "rel-pvaflow-bridge", "collector": "rel-pvaflow-collector",
                   "monitor": "rel-pvaflow-monitor", "rot-a": "rel-pvaflow-stage-rot-a",
                   "stage2": "rel-pvaflow-stage-stage2"}
    assert set(local) == set(chart_names)
    k8s_only = {"--metrics-port", "--web-host", "--web-port", "--n-consumers"}
    for name, deployment in chart_names.items():
        c = container(docs, deployment)
        ours = [a for a in option_pairs(c["args"][1:]) if a[0] not in k8s_only]
        theirs = [a for a in option_pairs(local[name]) if a[0] not in k8s_only]
        assert ours == theirs, name
    assert find(docs, "Deployment", "rel-pvaflow-stage-rot-a")[0]["spec"]["replicas"] == 3
    bridge = container(docs, "rel-pvaflow-bridge")
    assert bridge["ports"] == [{"name": "metrics", "containerPort": 9200}]
    collector = container(docs, "rel-pvaflow-collector")["args"]
    assert collector[collector.index("--collector-cache-size") + 1] == "1000000"


def test_consumer_id_from_pod_name(helm: Path, tmp_path: Path) -> None:
    """Pods of one stage get distinct integer consumer ids from their names (the shell line
    the container runs), unless the stage sets consumer_id."""
    c = container(render(helm, tmp_path, EXAMPLE), "rel-pvaflow-stage-rotate")
    command = c["command"]
    assert command[:2] == ["/bin/sh", "-c"]
    fake = tmp_path / "bin" / "pvaflow"  # stands in for the image's pvaflow: prints its argv
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    ids = set()
    for suffix in ("7d9f8b6c5-abcde", "7d9f8b6c5-xyz12"):
        out = subprocess.run(
            [*command, *c["args"]], capture_output=True, text=True, check=True,
            env={"POD_NAME": f"rel-pvaflow-stage-rotate-{suffix}",
                 "PATH": f"{fake.parent}:/usr/bin:/bin"}).stdout.split()
        assert out[:-2] == c["args"] and out[-2] == "--consumer-id", out
        ids.add(int(out[-1]))
    assert len(ids) == 2 and all(1 <= i <= 1_000_000 for i in ids)
    fixed = container(render(helm, tmp_path, {"stages": [
        {"name": "rotate", "input_topic": "frames", "processor": "rotate", "consumer_id": 4}]}),
        "rel-pvaflow-stage-rotate")
    assert "command" not in fixed and shlex.join(fixed["args"]).count("--consumer-id 4") == 1


def test_dashboard_copies_identical(helm: Path, tmp_path: Path) -> None:
    """grafana/dashboards and the chart's copies are byte-identical, and the ConfigMaps carry
    them unchanged with the Grafana sidecar label."""
    ours = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
    chart = sorted((CHART / "dashboards").glob("*.json"))
    assert [p.name for p in ours] == [p.name for p in chart] and ours
    for a, b in zip(ours, chart, strict=True):
        assert a.read_bytes() == b.read_bytes(), f"{b} differs from {a}: copy it again"
    cms = find(render(helm, tmp_path), "ConfigMap")
    assert len(cms) == len(chart)
    for cm in cms:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((fname, text),) = cm["data"].items()
        assert json.loads(text) == dashboards()[fname]
    assert not find(render(helm, tmp_path, {"grafana": {"dashboards": {"enabled": False}}}),
                    "ConfigMap")


def test_grafana_provisioning() -> None:
    prov = REPO / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "pvaflow.yaml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    dash = yaml.safe_load((prov / "dashboards" / "pvaflow.yaml").read_text())
    (provider,) = dash["providers"]
    assert provider["type"] == "file"
    assert Path(provider["options"]["path"]).name == "dashboards"
    for board in dashboards().values():
        assert board["uid"].startswith("pvaflow-")
        assert board["templating"]["list"][0]["type"] == "datasource"


def test_consumers_key_and_its_older_name_stages_render_alike(helm: Path, tmp_path: Path) -> None:
    """`consumers:` is the wing's noun; `stages:` (the older key) still works."""
    stage = {"name": "rotate", "input_topic": "frames", "processor": "rotate"}
    new = render(helm, tmp_path, {"consumers": [stage]})
    old = render(helm, tmp_path, {"stages": [stage]})
    assert container(new, "rel-pvaflow-stage-rotate")["args"] == \
        container(old, "rel-pvaflow-stage-rotate")["args"]
    assert container(new, "rel-pvaflow-stage-rotate")["args"][0] == "consumer"
