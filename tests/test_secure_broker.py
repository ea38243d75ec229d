"""The local broker's SASL_SSL listener: generated TLS material and SCRAM user, clients that
connect with the written settings, and the failures a wrong setting gives.

One secured broker serves the module (``secure_broker``, started on first use); the CLI test
runs first, with its own broker, before that one starts, so at most one secured JVM runs.
Every wait is on a condition with a generous bound.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from pvaflow.ops.broker import LocalBroker, LocalCluster, procs
from pvaflow.ops.broker.errors import BrokerError
from pvaflow.ops.broker.security import SCRAM_ITERATIONS, SecurityFiles, describe_clients

from pvaflow.errors import KafkaUnavailable
from pvaflow.kafka.client import Kafka

REPO = Path(__file__).resolve().parent.parent
BOUND = 60.0
SECRET_KEYS = ("sasl.password",)


def _security_files(broker: LocalBroker) -> SecurityFiles:
    assert broker.security_files is not None
    return broker.security_files


def _overrides(settings: dict[str, str], *drop: str) -> dict[str, str]:
    """-X style overrides from client settings (bootstrap is passed on its own)."""
    return {k: v for k, v in settings.items() if k != "bootstrap.servers" and k not in drop}


def _round_trip(producer: Any, consumer: Any, topic: str) -> None:
    value = f"secret-frame-{uuid.uuid4().hex}".encode()
    errors: list[Any] = []
    producer.produce(topic, value, on_delivery=lambda err, msg: errors.append(err))
    assert producer.flush(BOUND) == 0, "not delivered"
    assert errors == [None], errors
    consumer.subscribe([topic])
    deadline = time.monotonic() + BOUND
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error() is not None:
                continue
            assert msg.value() == value
            return
    finally:
        consumer.close()
    raise AssertionError(f"nothing read back from {topic} within {BOUND:.0f} s")


# ------------------------------------------------------------------------------------------
# Unit level (no JVM)


def test_secured_properties_have_no_plaintext_client_listener(tmp_path: Path) -> None:
    b = LocalBroker(tmp_path, 19092, controller_port=19093, internal_port=19094,
                    security="sasl_ssl")
    props = b.server_properties()
    assert props["listeners"] == ("SASL_SSL://127.0.0.1:19092,INTERNAL://127.0.0.1:19094,"
                                  "CONTROLLER://127.0.0.1:19093")
    assert props["advertised.listeners"] == ("SASL_SSL://127.0.0.1:19092,"
                                             "INTERNAL://127.0.0.1:19094")
    assert props["inter.broker.listener.name"] == "INTERNAL"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["listener.name.sasl_ssl.ssl.keystore.type"] == "PEM"
    assert "ScramLoginModule required;" in str(
        props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"])
    assert b.bootstrap == "127.0.0.1:19092"
    plain = LocalBroker(tmp_path / "p", 19092, controller_port=19093)
    assert plain.internal_port is None and plain.client_settings() == {
        "bootstrap.servers": "127.0.0.1:19092"}
    with pytest.raises(BrokerError, match="unknown security mode"):
        LocalBroker(tmp_path, security="tls")


def test_cluster_members_share_one_security_dir(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, brokers=3, security="sasl_ssl")
    dirs = {_security_files(b).directory for b in c.brokers}
    assert dirs == {tmp_path.resolve() / "security"}
    ports = [p for b in c.brokers for p in (b.port, b.controller_port, b.internal_port)]
    assert len(set(ports)) == 9 and None not in ports
    assert all(str(b.server_properties()["listeners"]).startswith("SASL_SSL://")
               for b in c.brokers)


def test_generated_material(tmp_path: Path) -> None:
    from cryptography import x509

    files = SecurityFiles(tmp_path / "security")
    files.ensure()
    assert stat.S_IMODE(files.directory.stat().st_mode) == 0o700
    for path in files.directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    ca = x509.load_pem_x509_certificate(files.ca_path.read_bytes())
    pem = files.keystore_path.read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, as Kafka's PEM store wants
    chain = x509.load_pem_x509_certificates(pem)
    assert len(chain) == 2 and chain[1] == ca
    chain[0].verify_directly_issued_by(ca)
    san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]

    password = files.password()
    assert len(password) >= 24
    before = (files.keystore_path.read_bytes(), files.ca_path.read_bytes())
    files.ensure()  # a restart keeps the password and the certificates
    assert files.password() == password
    assert (files.keystore_path.read_bytes(), files.ca_path.read_bytes()) == before

    arg = files.scram_argument()
    assert password not in arg
    m = re.fullmatch(r'SCRAM-SHA-512=\[name=pvaflow,iterations=(\d+),salt="([^"]+)",'
                     r'saltedpassword="([^"]+)"\]', arg)
    assert m is not None, arg
    salt = base64.b64decode(m.group(2))
    assert int(m.group(1)) == SCRAM_ITERATIONS
    assert base64.b64decode(m.group(3)) == hashlib.pbkdf2_hmac(
        "sha512", password.encode(), salt, SCRAM_ITERATIONS)


def test_client_files_and_printed_settings(tmp_path: Path) -> None:
    files = SecurityFiles(tmp_path)
    files.ensure()
    files.write_client_files("127.0.0.1:1234")
    password = files.password()
    props = dict(line.split("=", 1) for line in files.client_properties_path.read_text()
                 .splitlines() if line and not line.startswith("#"))
    assert props == files.client_settings("127.0.0.1:1234")
    env = files.client_env_path.read_text()
    assert password not in env
    assert f"PVAFLOW_KAFKA_SASL_PASSWORD_FILE={files.password_path}\n" in env
    text = describe_clients(files, "127.0.0.1:1234")
    assert password not in text
    assert "-X sasl.password=***" in text and str(files.password_path) in text


def test_plaintext_storage_is_not_silently_secured(tmp_path: Path) -> None:
    (tmp_path / "kraft").mkdir()
    (tmp_path / "kraft" / "meta.properties").write_text("cluster.id=abcdefghijklmnopqrstuv\n")
    with pytest.raises(BrokerError, match="formatted without SCRAM credentials"):
        LocalBroker(tmp_path, security="sasl_ssl").start()


def test_cli_rejects_unknown_security_mode() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "pvaflow.ops.broker", "start", "--security",
                        "tls"], env=env, capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--security" in lines[0], r.stderr


# ------------------------------------------------------------------------------------------
# Real broker. The CLI test comes first: it runs its own broker before ``secure_broker``
# starts, so only one secured JVM runs at a time.


@pytest.mark.integration
def test_cli_start_prints_no_password(exclusive_kafka: list[int], tmp_path: Path) -> None:
    data = tmp_path / "cli"
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pvaflow.ops.broker", *args,
                               "--data-dir", str(data)], env=env, capture_output=True,
                              text=True, timeout=180, check=False)

    outputs: list[str] = []
    start = cli("start", "--port", "0", "--security", "sasl_ssl", "--timeout", "120")
    fields: dict[str, str] = {}
    try:
        outputs += [start.stdout, start.stderr]
        assert start.returncode == 0, start.stderr
        fields = dict(kv.split("=", 1) for kv in start.stdout.split())
        assert fields["security"] == "sasl_ssl"
        files = SecurityFiles(data / "security")
        assert fields["client_config"] == str(files.client_properties_path)
        assert str(files.password_path) in start.stderr
        assert "sasl.password=***" in start.stderr
        status = cli("status")
        outputs += [status.stdout, status.stderr]
        assert status.returncode == 0 and "security=sasl_ssl" in status.stdout
        settings = files.client_settings(fields["bootstrap"])
        Kafka(fields["bootstrap"], _overrides(settings)).check_reachable(timeout=BOUND)
    finally:
        stop = cli("stop")
        outputs += [stop.stdout, stop.stderr]
    assert stop.returncode == 0, stop.stderr
    assert fields and not procs.pid_alive(int(fields["pid"]))
    password = SecurityFiles(data / "security").password()
    for text in outputs:
        assert password not in text
    _assert_not_in_launcher_files(data, password)


def _assert_not_in_launcher_files(data_dir: Path, *secrets: str) -> None:
    """Nothing the launcher or Kafka writes holds a secret, except the two client files
    that exist to hold it (mode 0600)."""
    allowed = {"sasl.password", "client.properties"}
    checked = 0
    for path in data_dir.rglob("*"):
        if not path.is_file() or path.name in allowed or "kraft" in path.parts:
            continue
        text = path.read_bytes().decode(errors="replace")
        checked += 1
        for secret in secrets:
            assert secret not in text, f"a secret in {path}"
    assert checked >= 4  # server.properties, log4j config, server.log, kafka.out at least


@pytest.mark.integration
def test_confluent_kafka_round_trip(secure_broker: LocalBroker) -> None:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    settings = secure_broker.client_settings()
    assert settings["bootstrap.servers"] == secure_broker.bootstrap
    assert settings["security.protocol"] == "SASL_SSL"
    assert settings["sasl.mechanism"] == "SCRAM-SHA-512"
    topic = f"secure-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(settings)
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(BOUND)
    _round_trip(Producer(settings),
                Consumer({**settings, "group.id": f"g-{topic}",
                          "auto.offset.reset": "earliest"}), topic)


@pytest.mark.integration
def test_pvaflow_client_with_password_file(secure_broker: LocalBroker,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    files = _security_files(secure_broker)
    monkeypatch.setenv("PVAFLOW_KAFKA_SASL_PASSWORD_FILE", str(files.password_path))
    overrides = _overrides(secure_broker.client_settings(), "sasl.password")
    kafka = Kafka(secure_broker.bootstrap, overrides)
    kafka.check_reachable(timeout=BOUND)
    assert files.password() not in kafka.describe()
    topic = f"secure-{uuid.uuid4().hex[:8]}"
    from confluent_kafka.admin import NewTopic

    admin = kafka.admin()  # kept: a destroyed client fails its pending futures
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(BOUND)
    _round_trip(kafka.producer(), kafka.consumer(f"g-{topic}"), topic)


@pytest.mark.integration
def test_client_env_file_configures_every_component(secure_broker: LocalBroker,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``set -a; . client.env`` is all a pvaflow command needs: no -b, no -X."""
    env = _security_files(secure_broker).client_env_path.read_text()
    for line in env.splitlines():
        if line and not line.startswith("#"):
            name, value = line.split("=", 1)
            monkeypatch.setenv(name, value)
    kafka = Kafka()
    assert kafka.bootstrap == secure_broker.bootstrap
    kafka.check_reachable(timeout=BOUND)


@pytest.mark.integration
def test_wrong_password_is_one_clear_line(secure_broker: LocalBroker) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    overrides = {**_overrides(secure_broker.client_settings()), "sasl.password": wrong}
    t0 = time.monotonic()
    with pytest.raises(KafkaUnavailable) as info:
        Kafka(secure_broker.bootstrap, overrides).check_reachable(timeout=BOUND)
    elapsed = time.monotonic() - t0
    line = info.value.line()
    assert elapsed < 30, f"{elapsed:.1f} s"
    assert "\n" not in line and wrong not in line
    assert secure_broker.bootstrap in line
    assert "authentication" in line.lower()
    assert "sasl.username / sasl.password" in line
    assert info.value.exit_code == 3
    _assert_not_in_launcher_files(secure_broker.data_dir, wrong,
                                  _security_files(secure_broker).password())


@pytest.mark.integration
def test_missing_ca_is_one_clear_line(secure_broker: LocalBroker) -> None:
    overrides = _overrides(secure_broker.client_settings(), "ssl.ca.location")
    t0 = time.monotonic()
    with pytest.raises(KafkaUnavailable) as info:
        Kafka(secure_broker.bootstrap, overrides).check_reachable(timeout=BOUND)
    assert time.monotonic() - t0 < 30
    line = info.value.line()
    assert "\n" not in line and "certificate verify failed" in line
    assert "ssl.ca.location" in line and "sasl.password" not in line


@pytest.mark.integration
def test_plaintext_client_is_refused(secure_broker: LocalBroker) -> None:
    """A client without security settings gets no answer from the secured listener: it
    fails within its timeout instead of hanging."""
    t0 = time.monotonic()
    with pytest.raises(KafkaUnavailable) as info:
        Kafka(secure_broker.bootstrap, {}).check_reachable(timeout=5)
    assert time.monotonic() - t0 < 30
    assert secure_broker.bootstrap in info.value.line()


@pytest.mark.integration
def test_broker_logs_hold_no_password(secure_broker: LocalBroker) -> None:
    _assert_not_in_launcher_files(secure_broker.data_dir,
                                  _security_files(secure_broker).password())
    log = secure_broker.log_path.read_text()
    assert "SASL_SSL://127.0.0.1" in log and "Kafka Server started" in log
