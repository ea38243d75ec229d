"""The secured listener of a local broker: TLS material, a SCRAM user, and client settings.

Why it exists: pvaflow must be shown to work against a cluster that demands authentication
(SASL_SSL with SCRAM-SHA-512, what Strimzi and most managed Kafka offer), and tests need such a
broker on a laptop without Docker, keytool or openssl on PATH. Everything is made in Python
with the ``cryptography`` package and written, once per data directory, into its
``security/`` folder (mode 0700, every file 0600):

* ``ca.pem`` — a fresh certificate authority (its key is thrown away after signing);
* ``broker.pem`` — the broker's key (PKCS#8) and certificate chain for ``127.0.0.1`` and
  ``localhost``, read by Kafka as a PEM key store (``ssl.keystore.type=PEM``);
* ``sasl.password`` — the generated password of the SCRAM user (``pvaflow``);
* ``client.properties`` — librdkafka settings of a client (``kcat -F`` reads it), the
  password included;
* ``client.env`` — the same as ``PVAFLOW_*`` variables, the password by file
  (``PVAFLOW_KAFKA_SASL_PASSWORD_FILE``), for ``set -a; . client.env``.

The user is created when the storage is formatted (``kafka-storage format --add-scram``) from
a salted password computed here, so the password itself is never on a command line, in a
property file of the broker or in any log. The material is kept across restarts of the same
data directory (clients keep working); a certificate about to expire is renewed.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import BrokerError

PLAINTEXT = "plaintext"
SASL_SSL = "sasl_ssl"
SECURITY_MODES = (PLAINTEXT, SASL_SSL)

SCRAM_MECHANISM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 8192
USERNAME = "pvaflow"
SECURE_LISTENER = "SASL_SSL"
INTERNAL_LISTENER = "INTERNAL"
CERT_DAYS = 365
RENEW_BEFORE = datetime.timedelta(days=1)


def check_security(mode: str) -> str:
    if mode not in SECURITY_MODES:
        raise BrokerError(f"unknown security mode {mode!r} (expected one of "
                          f"{', '.join(SECURITY_MODES)})")
    return mode


def _write_secret(path: Path, data: str | bytes) -> None:
    """Write ``path`` readable by its owner only, never world-readable in between."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    tmp.replace(path)


class SecurityFiles:
    """The ``security/`` folder of a secured broker or cluster (see the module docstring)."""

    def __init__(self, directory: Path, username: str = USERNAME) -> None:
        self.directory = Path(directory)
        self.username = username

    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def keystore_path(self) -> Path:
        return self.directory / "broker.pem"

    @property
    def password_path(self) -> Path:
        return self.directory / "sasl.password"

    @property
    def client_properties_path(self) -> Path:
        return self.directory / "client.properties"

    @property
    def client_env_path(self) -> Path:
        return self.directory / "client.env"

    def has_credentials(self) -> bool:
        return self.password_path.is_file()

    def password(self) -> str:
        try:
            return self.password_path.read_text().strip()
        except OSError as exc:
            raise BrokerError(f"cannot read the SASL password file {self.password_path}: "
                              f"{exc.strerror}") from None

    # -- generation

    def ensure(self) -> None:
        """Create the password once, and the CA and broker certificate unless valid ones
        exist."""
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        if not self.has_credentials():
            _write_secret(self.password_path, secrets.token_urlsafe(24) + "\n")
        if not self._certificate_valid():
            self._make_certificates()

    def _certificate_valid(self) -> bool:
        from cryptography import x509

        try:
            cert = x509.load_pem_x509_certificate(self.keystore_path.read_bytes())
            x509.load_pem_x509_certificate(self.ca_path.read_bytes())
        except (OSError, ValueError):
            return False
        now = datetime.datetime.now(datetime.timezone.utc)
        return cert.not_valid_after_utc - now > RENEW_BEFORE

    def _make_certificates(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        now = datetime.datetime.now(datetime.timezone.utc)
        start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=CERT_DAYS)
        ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ca_name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pvaflow local broker"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"pvaflow local CA {secrets.token_hex(4)}"),
        ])
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name).issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ca_ski, critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
            ]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=True,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        _write_secret(self.keystore_path,
                      key_pem + cert.public_bytes(pem) + ca_cert.public_bytes(pem))
        _write_secret(self.ca_path, ca_cert.public_bytes(pem))

    # -- what Kafka and clients are given

    def scram_argument(self) -> str:
        """``--add-scram`` value of ``kafka-storage format``: a salted password, so the
        password itself never appears on a command line."""
        salt = secrets.token_bytes(16)
        salted = hashlib.pbkdf2_hmac("sha512", self.password().encode(), salt, SCRAM_ITERATIONS)
        b64 = base64.b64encode
        return (f"{SCRAM_MECHANISM}=[name={self.username},iterations={SCRAM_ITERATIONS},"
                f'salt="{b64(salt).decode()}",saltedpassword="{b64(salted).decode()}"]')

    def listener_properties(self) -> dict[str, object]:
        """Broker settings of the SASL_SSL listener (no secret among them)."""
        prefix = f"listener.name.{SECURE_LISTENER.lower()}"
        return {
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            f"{prefix}.sasl.enabled.mechanisms": SCRAM_MECHANISM,
            f"{prefix}.{SCRAM_MECHANISM.lower()}.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            f"{prefix}.ssl.keystore.type": "PEM",
            f"{prefix}.ssl.keystore.location": str(self.keystore_path),
            f"{prefix}.ssl.client.auth": "none",
        }

    def client_settings(self, bootstrap: str) -> dict[str, str]:
        """The librdkafka settings a client of the secured listener needs."""
        return {
            "bootstrap.servers": bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": SCRAM_MECHANISM,
            "sasl.username": self.username,
            "sasl.password": self.password(),
            "ssl.ca.location": str(self.ca_path),
        }

    def write_client_files(self, bootstrap: str) -> None:
        settings = self.client_settings(bootstrap)
        _write_secret(self.client_properties_path,
                      "# librdkafka settings of a pvaflow local broker client (kcat -F ...)\n"
                      + "".join(f"{k}={v}\n" for k, v in settings.items()))
        env = {
            "PVAFLOW_BOOTSTRAP": bootstrap,
            "PVAFLOW_KAFKA_SECURITY_PROTOCOL": settings["security.protocol"],
            "PVAFLOW_KAFKA_SASL_MECHANISM": settings["sasl.mechanism"],
            "PVAFLOW_KAFKA_SASL_USERNAME": settings["sasl.username"],
            "PVAFLOW_KAFKA_SASL_PASSWORD_FILE": str(self.password_path),
            "PVAFLOW_KAFKA_SSL_CA_LOCATION": settings["ssl.ca.location"],
        }
        _write_secret(self.client_env_path,
                      "# pvaflow settings of a local broker client: set -a; . client.env\n"
                      + "".join(f"{k}={v}\n" for k, v in env.items()))


def masked(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` with the password replaced, for printing."""
    from pvaflow.kafka.settings import redact

    return redact(settings)


def describe_clients(files: SecurityFiles, bootstrap: str) -> str:
    """What the CLI prints for users of a secured broker: the settings, password masked,
    and where the password file is."""
    settings = masked(files.client_settings(bootstrap))
    opts = " ".join(f"-X {k}={v}" for k, v in settings.items() if k != "bootstrap.servers")
    return (f"clients: -b {bootstrap} {opts}\n"
            f"the password is in {files.password_path} "
            f"(PVAFLOW_KAFKA_SASL_PASSWORD_FILE={files.password_path}); "
            f"all settings as variables: set -a; . {files.client_env_path}")
