"""The chart's Secret wiring speaks the components' language: every environment variable a
rendered pod gets is one pvaflow reads (``PVAFLOW_BOOTSTRAP``, ``PVAFLOW_KAFKA_<KEY>`` and its
``_FILE`` form, see pvaflow/kafka/settings.py), each ``PVAFLOW_KAFKA_*`` name turns into a
setting librdkafka accepts, each ``*_FILE`` points at a file the pod mounts from the named
Secret, and with those files in place every component (the monitor's asyncio clients too)
ends up with the Secret's credentials.

Rendered by a real ``helm template``; the Secret files are written where the pod mounts them
(the mount path mapped into a temporary directory).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import KafkaException, Producer
from pvaflow.ops.monitor import build_parser as monitor_parser

from pvaflow.kafka.aio import AioSettings
from pvaflow.kafka.client import Kafka
from pvaflow.kafka.settings import ENV_BOOTSTRAP, ENV_PREFIX, env_overrides, is_secret

from .conftest import CHART, find, render

EXAMPLE = yaml.safe_load((CHART / "examples" / "pipeline.yaml").read_text())
MIRROR = {"mirror": {"topic": "ordered", "output_channel": "m:img"}}
KEDA = {"deploy": {"stages": {"rotate": {"autoscaling": {"keda": {
    "enabled": True, "lagThreshold": 50, "maxReplicaCount": 4}}}}}}
USER, PASSWORD = "alice", "s3cret-Value"

CASES: dict[str, dict[str, Any]] = {
    "sasl-plaintext": {"kafka": {"sasl": {
        "enabled": True, "existingSecret": "kafka-user", "mechanism": "SCRAM-SHA-512"}}},
    "sasl-custom-keys": {"kafka": {"sasl": {
        "enabled": True, "existingSecret": "kafka-creds", "mechanism": "PLAIN",
        "usernameKey": "user", "passwordKey": "pass"}}},
    "sasl-ssl-mtls": {"kafka": {
        "sasl": {"enabled": True, "existingSecret": "kafka-user", "mechanism": "SCRAM-SHA-256"},
        "tls": {"enabled": True, "existingSecret": "kafka-ca", "certKey": "tls.crt",
                "keyKey": "tls.key"},
        "config": {"ssl.endpoint.identification.algorithm": "none"}}},
}
# Names other than Kafka settings that the pods get, and who reads them.
OTHER_ENV = {
    "HOME": "a writable home on a read-only root filesystem (libraries' caches)",
    "POD_NAME": "the monitor's log identity (pvaflow/ops/monitor.py)",
}
COMPONENTS = ("bridge", "stage-rotate", "collector", "monitor", "mirror")


def _pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"].removeprefix("rel-pvaflow-"): d["spec"]["template"]["spec"]
            for d in find(docs, "Deployment")}


def _setting(name: str) -> tuple[str, bool]:
    """The librdkafka key pvaflow derives from ``PVAFLOW_KAFKA_<KEY>[_FILE]`` (the same rule as
    :func:`pvaflow.kafka.settings.env_overrides`, asked of it), and whether it is a file."""
    is_file = name.endswith("_FILE")
    value = __file__ if is_file else "x"
    [(key, _value)] = env_overrides({name: value}).items()
    return key, is_file


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Real PEM files for the TLS Secret (a CA, a key and its certificate), so the clients'
    TLS setup (librdkafka's and the monitor's ssl context) actually loads them."""
    from pvaflow.ops.broker.security import SecurityFiles

    files = SecurityFiles(tmp_path_factory.mktemp("certs"))
    files.ensure()
    chain = files.keystore_path.read_text()  # the key (PKCS#8) and its certificate chain
    return {"ca.crt": files.ca_path.read_text(), "tls.crt": chain, "tls.key": chain}


def _secret_files(values: Mapping[str, Any], certs: Mapping[str, str],
                  ) -> dict[str, dict[str, str]]:
    """Secret name -> {key: content}, as the user would have created them."""
    k = values["kafka"]
    out: dict[str, dict[str, str]] = {}
    sasl = k["sasl"]
    out[sasl["existingSecret"]] = {sasl.get("usernameKey", "username"): USER,
                                   sasl.get("passwordKey", "password"): PASSWORD}
    if k.get("tls", {}).get("enabled"):
        out[k["tls"]["existingSecret"]] = dict(certs)
    return out


def _pod_env(spec: Mapping[str, Any], secrets: Mapping[str, Mapping[str, str]],
             tmp: Path) -> dict[str, str]:
    """The container's plain env with every file it names written where the pod would have
    it: each mounted Secret volume becomes a directory of its items."""
    [c] = spec["containers"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounted: dict[str, Path] = {}
    for m in c.get("volumeMounts", []):
        secret = volumes[m["name"]].get("secret")
        if secret is None:
            continue
        d = tmp / m["name"]
        d.mkdir(parents=True, exist_ok=True)
        data = secrets[secret["secretName"]]
        items = secret.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            assert item["key"] in data, f"{secret['secretName']} has no key {item['key']}"
            (d / item["path"]).write_text(data[item["key"]] + "\n")
        mounted[m["mountPath"].rstrip("/") + "/"] = d
    env: dict[str, str] = {}
    for e in c.get("env", []):
        value = e.get("value", "")
        if e["name"].endswith(("_FILE", "_LOCATION")):
            prefix = next((p for p in mounted if value.startswith(p)), None)
            assert prefix is not None, f"{e['name']}={value} is in no mounted Secret"
            value = str(mounted[prefix] / value[len(prefix):])
            assert Path(value).is_file(), f"{e['name']}: the Secret has no {value}"
        env[e["name"]] = value
    return env


def _librdkafka_accepts(conf: Mapping[str, Any]) -> None:
    """librdkafka knows every key and loads every file (the bootstrap is left out so nothing
    connects)."""
    probe = {k: v for k, v in conf.items() if k != "bootstrap.servers"}
    try:
        Producer(probe)
    except KafkaException as exc:
        raise AssertionError(f"librdkafka refuses the chart's settings: {exc}") from None


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_pod_env_name_is_one_pvaflow_reads_and_carries_the_secret(
        helm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, certs: dict[str, str],
        case: str) -> None:
    values = CASES[case]
    docs = render(helm, tmp_path, EXAMPLE, MIRROR, values)
    pods = _pods(docs)
    assert sorted(pods) == sorted(COMPONENTS)
    secrets = _secret_files(values, certs)
    expected_keys = {"security.protocol", "sasl.mechanism", "sasl.username", "sasl.password"}
    if values["kafka"].get("tls", {}).get("enabled"):
        expected_keys |= {"ssl.ca.location", "ssl.certificate.location", "ssl.key.location",
                          *values["kafka"].get("config", {})}
    kafka_env: dict[str, set[str]] = {}
    for name, spec in pods.items():
        env = _pod_env(spec, secrets, tmp_path / name)
        for var in env:
            assert var in OTHER_ENV or var == ENV_BOOTSTRAP or var.startswith(ENV_PREFIX), \
                f"{name}: {var} is read by no pvaflow component"
        kafka_vars = {v for v in env if v.startswith(ENV_PREFIX)}
        kafka_env[name] = kafka_vars
        keys = {_setting(v)[0] for v in kafka_vars}
        assert keys == expected_keys, name
        # secrets only ever as files: their values are not in the manifest
        for var in kafka_vars:
            key, is_file = _setting(var)
            assert is_file == (key in ("sasl.username", "sasl.password")), var
            assert is_file or not is_secret(key), f"{var}: a secret in the manifest"
        conf = {**env_overrides(env)}
        assert (conf["sasl.username"], conf["sasl.password"]) == (USER, PASSWORD), name
        assert conf["security.protocol"] == (
            "SASL_SSL" if "ssl.ca.location" in expected_keys else "SASL_PLAINTEXT")
        _librdkafka_accepts(conf)
        # and what each command builds from it: the lifecycle's clients, the monitor's faust
        for var in [v for v in os.environ if v.startswith(ENV_PREFIX)]:
            monkeypatch.delenv(var)
        for var in kafka_vars:
            monkeypatch.setenv(var, env[var])
        built = Kafka("kafka:9092").producer_config()
        assert (built["sasl.username"], built["sasl.password"]) == (USER, PASSWORD)
        if name == "monitor":
            args = monitor_parser().parse_args(["-b", "kafka:9092"])
            aio = AioSettings.from_kafka(Kafka.from_args(args))
            kw = aio.aiokafka_kwargs()
            assert (kw["sasl_plain_username"], kw["sasl_plain_password"]) == (USER, PASSWORD)
            assert kw["security_protocol"] == conf["security.protocol"]
            assert ("ssl_context" in kw) == ("ssl.ca.location" in conf)
    # every component reads the cluster with the same settings
    assert len({frozenset(v) for v in kafka_env.values()}) == 1, kafka_env
    assert PASSWORD not in json.dumps(docs)


def test_keda_reads_the_same_secret_keys_as_the_pods(helm: Path, tmp_path: Path,
                                                     certs: dict[str, str]) -> None:
    values = CASES["sasl-ssl-mtls"]
    docs = render(helm, tmp_path, EXAMPLE, KEDA, values)
    [auth] = find(docs, "TriggerAuthentication")
    refs = {(r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    spec = _pods(docs)["stage-rotate"]
    mounted = set()
    for v in spec["volumes"]:
        secret = v.get("secret")
        if secret is None:
            continue
        keys = [i["key"] for i in secret.get("items", [])] or list(
            _secret_files(values, certs)[secret["secretName"]])
        mounted |= {(secret["secretName"], k) for k in keys}
    assert refs <= mounted, (refs, mounted)
    assert ("kafka-user", "password") in refs
