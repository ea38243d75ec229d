"""The monitor's faust / aiokafka clients get the same Kafka settings as every other command
(-b, -X, PVAFLOW_KAFKA_*): SASL, TLS, and the errors and log lines around them."""

from __future__ import annotations

import asyncio
import datetime
import logging
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from faust.auth import SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from pvaflow.errors import ConfigError
from pvaflow.kafka.aio import AioSettings
from pvaflow.kafka.client import Kafka

SECRET = "s3cr3t-Pa55"


@pytest.fixture(autouse=True)
def _no_env_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests set PVAFLOW_KAFKA_* themselves; none from the calling shell."""
    import os

    for name in list(os.environ):
        if name.startswith("PVAFLOW_KAFKA_") or name == "PVAFLOW_BOOTSTRAP":
            monkeypatch.delenv(name)


def make_ca(tmp_path: Path, cn: str = "pvaflow test CA") -> Path:
    """A throwaway self-signed CA certificate (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path = tmp_path / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def faust_to_aiokafka(settings: AioSettings) -> dict[str, Any]:
    """What faust hands aiokafka for an App built with ``settings.faust_settings()``."""
    import faust

    app = faust.App("pvaflow-test", **settings.faust_settings())
    auth = dict(credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context))
    servers = [f"{u.host}:{u.port}" for u in app.conf.broker]
    return {"bootstrap_servers": servers, **{k: v for k, v in auth.items() if v is not None}}


def aiokafka_accepts(kwargs: dict[str, Any]) -> None:
    """aiokafka validates its security arguments in the constructor (nothing connects)."""
    from aiokafka import AIOKafkaProducer

    async def build() -> None:
        AIOKafkaProducer(**kwargs)

    asyncio.run(build())


def test_plaintext_with_several_bootstrap_servers() -> None:
    s = AioSettings.from_kafka(Kafka("a:9092,b:9093", [("linger.ms", "5")]))
    assert s.faust_settings() == {"broker": ["kafka://a:9092", "kafka://b:9093"],
                                  "broker_credentials": None}
    assert s.aiokafka_kwargs() == {"bootstrap_servers": ["a:9092", "b:9093"],
                                   "security_protocol": "PLAINTEXT"}
    assert faust_to_aiokafka(s) == s.aiokafka_kwargs()
    aiokafka_accepts(s.aiokafka_kwargs())


def test_sasl_plaintext_scram_sha_512() -> None:
    s = AioSettings.from_kafka(Kafka("k:9092", [
        ("security.protocol", "sasl_plaintext"), ("sasl.mechanisms", "SCRAM-SHA-512"),
        ("sasl.username", "alice"), ("sasl.password", SECRET)]))
    creds = s.faust_settings()["broker_credentials"]
    assert isinstance(creds, SASLCredentials)
    assert s.aiokafka_kwargs() == {
        "bootstrap_servers": ["k:9092"], "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "alice",
        "sasl_plain_password": SECRET}
    assert faust_to_aiokafka(s) == s.aiokafka_kwargs()
    aiokafka_accepts(s.aiokafka_kwargs())
    assert SECRET not in repr(s) and SECRET not in repr(creds) and SECRET not in s.describe()
    assert s.describe() == "k:9092 SASL_PLAINTEXT SCRAM-SHA-512 as alice"


def test_sasl_ssl_with_a_ca_file_and_password_from_a_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = make_ca(tmp_path)
    secret_file = tmp_path / "password"
    secret_file.write_text(SECRET + "\n")
    monkeypatch.setenv("PVAFLOW_KAFKA_SASL_PASSWORD_FILE", str(secret_file))
    monkeypatch.setenv("PVAFLOW_KAFKA_SASL_USERNAME", "bob")
    s = AioSettings.from_kafka(Kafka("k1:9093,k2:9093", [
        ("security.protocol", "SASL_SSL"), ("sasl.mechanism", "SCRAM-SHA-256"),
        ("ssl.ca.location", str(ca))]))
    kwargs = s.aiokafka_kwargs()
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("bob", SECRET)
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    subjects = [dict(x[0] for x in c["subject"]) for c in context.get_ca_certs()]
    assert {"commonName": "pvaflow test CA"} in subjects
    assert faust_to_aiokafka(s) == kwargs
    aiokafka_accepts(kwargs)


def test_ssl_only_and_verification_switches(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    s = AioSettings.from_config({
        "bootstrap.servers": "k:9093", "security.protocol": "SSL",
        "ssl.ca.location": str(ca), "ssl.endpoint.identification.algorithm": "none"})
    assert isinstance(s.credentials(), SSLCredentials)
    assert s.ssl_context is not None and not s.ssl_context.check_hostname
    assert s.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert faust_to_aiokafka(s) == s.aiokafka_kwargs()
    off = AioSettings.from_config({"bootstrap.servers": "k:9093", "security.protocol": "SSL",
                                   "enable.ssl.certificate.verification": "false"})
    assert off.ssl_context is not None and off.ssl_context.verify_mode == ssl.CERT_NONE


@pytest.mark.parametrize("conf, message", [
    ({"security.protocol": "SASL_SSL", "sasl.mechanism": "GSSAPI"}, "sasl.mechanism=GSSAPI"),
    ({"security.protocol": "SASL_PLAINTEXT"}, "no sasl.mechanism"),
    ({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
      "sasl.username": "a"}, "needs sasl.password"),
    ({"security.protocol": "TLS"}, "security.protocol=TLS"),
    ({"ssl.keystore.location": "/k.p12"}, "ssl.keystore.location"),
    ({"security.protocol": "SSL", "ssl.ca.location": "/no/such/ca.pem"}, "ssl.ca.location"),
    ({"sasl.oauthbearer.client.secret": SECRET}, r"sasl.oauthbearer.client.secret=\*\*\*"),
])
def test_settings_aiokafka_cannot_honour_are_config_errors(
        conf: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        AioSettings.from_config({"bootstrap.servers": "k:9092", **conf})
    assert SECRET not in info.value.line()


def test_data_plane_tuning_is_ignored_with_one_debug_line(
        caplog: pytest.LogCaptureFixture) -> None:
    s = AioSettings.from_kafka(Kafka("k:9092", [("linger.ms", "5"), ("fetch.max.bytes", "9"),
                                                ("client.id", "x")]))
    assert s.aiokafka_kwargs() == {"bootstrap_servers": ["k:9092"],
                                   "security_protocol": "PLAINTEXT"}
    with caplog.at_level(logging.DEBUG, logger="pvaflow.kafka.aio"):
        s.log_ignored()
    (record,) = caplog.records
    assert "client.id" in record.getMessage() and "linger.ms" in record.getMessage()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("level", ["info", "debug"])
def test_monitor_unreachable_with_sasl_is_one_line_exit_3_and_no_secret(
        tmp_path: Path, level: str) -> None:
    """Started against a bootstrap nobody listens on, with SASL settings: one error line
    naming the bootstrap (the only line naming it, unless librdkafka's own lines are asked
    for with debug logging), exit 3, and the password nowhere in the output."""
    bootstrap = f"127.0.0.1:{_free_port()}"
    started = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "pvaflow.cli", "monitor", "-b", bootstrap, "-ll", level,
         "-X", "security.protocol=SASL_PLAINTEXT", "-X", "sasl.mechanism=SCRAM-SHA-512",
         "-X", "sasl.username=alice", "-X", f"sasl.password={SECRET}",
         "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert r.returncode == 3, r.stderr
    assert SECRET not in r.stdout + r.stderr
    errors = [line for line in r.stderr.splitlines()
              if line.startswith("pvaflow-monitor: error:")]
    assert len(errors) == 1 and bootstrap in errors[0], r.stderr
    if level == "info":
        assert [line for line in r.stderr.splitlines() if bootstrap in line] == errors
    assert "Traceback" not in r.stderr
    assert elapsed < 15


def test_monitor_refuses_a_security_setting_it_cannot_honour() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pvaflow.cli", "monitor", "-b", "127.0.0.1:1",
         "-X", "ssl.keystore.location=/x.p12"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "ssl.keystore.location" in lines[0], r.stderr
