"""The same Kafka settings for the asyncio clients (faust-streaming / aiokafka) the monitor uses.

Every other command hands its settings (defaults, ``PVAFLOW_KAFKA_*``, ``-X``) to librdkafka;
the monitor's faust app talks to Kafka through aiokafka, which spells them differently. This
module reads the librdkafka-style settings once and derives what faust and aiokafka take:

=====================================================  =======================================
librdkafka                                             faust / aiokafka
=====================================================  =======================================
``bootstrap.servers`` ``a:9092,b:9092``                ``broker=["kafka://a:9092", ...]``
``security.protocol``                                  ``security_protocol``
``sasl.mechanism(s)`` PLAIN, SCRAM-SHA-256/512         ``sasl_mechanism``
``sasl.username`` / ``sasl.password``                  ``sasl_plain_username`` / ``_password``
``ssl.ca.location`` (file or directory),               an :class:`ssl.SSLContext`
``ssl.ca.pem``, ``ssl.certificate.location``,          (``ssl_context``)
``ssl.key.location``, ``ssl.key.password``,
``enable.ssl.certificate.verification``,
``ssl.endpoint.identification.algorithm``
=====================================================  =======================================

A security setting aiokafka has no equivalent for (``ssl.keystore.location``, GSSAPI,
OAUTHBEARER, ...) is a :class:`~pvaflow.errors.ConfigError` naming it: silently dropping it
could connect without the protection the user asked for. Data-plane tuning (``linger.ms``,
fetch sizes, ...) does not concern the monitor's small status stream and is ignored with one
debug line.

>>> s = AioSettings.from_config({"bootstrap.servers": "a:9092,b:9093"})
>>> s.faust_settings()
{'broker': ['kafka://a:9092', 'kafka://b:9093'], 'broker_credentials': None}
>>> s.aiokafka_kwargs()
{'bootstrap_servers': ['a:9092', 'b:9093'], 'security_protocol': 'PLAINTEXT'}
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .client import Kafka
from .settings import is_secret

log = logging.getLogger(__name__)

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

# Settings this module translates.
_HANDLED = frozenset({
    "bootstrap.servers", "security.protocol", "sasl.mechanism", "sasl.mechanisms",
    "sasl.username", "sasl.password", "ssl.ca.location", "ssl.ca.pem",
    "ssl.certificate.location", "ssl.key.location", "ssl.key.password",
    "enable.ssl.certificate.verification", "ssl.endpoint.identification.algorithm",
})
# Prefixes of settings that decide how (and whether safely) the client connects: one that is
# not translated above cannot be ignored.
_SECURITY_PREFIXES = ("security.", "sasl.", "ssl.", "ssl_", "enable.ssl.")


def _is_security(key: str) -> bool:
    return key.startswith(_SECURITY_PREFIXES)


def _true(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"Kafka setting {key}={value!r} is not a boolean",
                      hint="use true or false")


def _servers(value: Any) -> list[str]:
    servers = [s.strip() for s in str(value or "").replace(";", ",").split(",") if s.strip()]
    if not servers:
        raise ConfigError("bootstrap.servers is empty", hint="give -b HOST:PORT")
    out = []
    for s in servers:
        s = s.split("://", 1)[-1]  # librdkafka accepts PLAINTEXT://host:port too
        if ":" not in s.rsplit("]", 1)[-1]:
            s = f"{s}:9092"
        out.append(s)
    return out


@dataclass(frozen=True)
class AioSettings:
    """What the asyncio clients need; the password never appears in its repr."""

    servers: tuple[str, ...]
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    ignored: tuple[str, ...] = ()

    @classmethod
    def from_kafka(cls, kafka: Kafka) -> AioSettings:
        """From a :class:`pvaflow.kafka.client.Kafka` (its merged admin settings)."""
        conf: dict[str, Any] = dict(kafka.admin_config())
        # admin_config drops producer/consumer keys; the user's own -X must still be seen.
        conf.update(dict(kafka.overrides))
        return cls.from_config(conf)

    @classmethod
    def from_config(cls, conf: Mapping[str, Any]) -> AioSettings:
        """From a merged librdkafka-style dict; raise :class:`ConfigError` for a security
        setting with no aiokafka equivalent or a value that cannot work."""
        unknown = sorted(k for k in conf if k not in _HANDLED and _is_security(k))
        if unknown:
            key = unknown[0]
            shown = "***" if is_secret(key) else conf[key]
            raise ConfigError(
                f"Kafka setting {key}={shown} has no equivalent in the monitor's aiokafka "
                "client", hint="drop it, or use the settings listed in docs/monitoring.md")
        ignored = tuple(sorted(k for k in conf if k not in _HANDLED))
        protocol = str(conf.get("security.protocol", "PLAINTEXT")).strip().upper()
        if protocol not in PROTOCOLS:
            raise ConfigError(f"Kafka setting security.protocol={conf['security.protocol']} "
                              "is not a protocol", hint=f"one of: {', '.join(PROTOCOLS)}")
        mechanism = username = password = None
        if protocol.startswith("SASL_"):
            mechanism, username, password = _sasl(conf)
        context = _ssl_context(conf) if protocol.endswith("SSL") else None
        return cls(tuple(_servers(conf.get("bootstrap.servers"))), protocol, mechanism,
                   username, password, context, ignored)

    # -- what the clients take ------------------------------------------------------------

    def broker_urls(self) -> list[str]:
        """faust's ``broker`` setting: one ``kafka://host:port`` per bootstrap server."""
        return [f"kafka://{s}" for s in self.servers]

    def credentials(self) -> Any:
        """faust's ``broker_credentials`` (None for PLAINTEXT)."""
        from faust.auth import SASLCredentials, SSLCredentials

        if self.security_protocol.startswith("SASL_"):
            return SASLCredentials(username=self.username, password=self.password,
                                   mechanism=self.sasl_mechanism,
                                   ssl_context=self.ssl_context)
        if self.security_protocol == "SSL":
            return SSLCredentials(self.ssl_context)
        return None

    def faust_settings(self) -> dict[str, Any]:
        """Keyword arguments for :class:`faust.App` that say where and how to connect."""
        return {"broker": self.broker_urls(), "broker_credentials": self.credentials()}

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for an aiokafka client (what faust hands aiokafka)."""
        out: dict[str, Any] = {"bootstrap_servers": list(self.servers),
                               "security_protocol": self.security_protocol}
        if self.sasl_mechanism is not None:
            out.update(sasl_mechanism=self.sasl_mechanism,
                       sasl_plain_username=self.username, sasl_plain_password=self.password)
        if self.ssl_context is not None:
            out["ssl_context"] = self.ssl_context
        return out

    def describe(self) -> str:
        """The settings for a log line (no secret)."""
        parts = [",".join(self.servers), self.security_protocol]
        if self.sasl_mechanism:
            parts.append(f"{self.sasl_mechanism} as {self.username}")
        return " ".join(parts)

    def log_ignored(self) -> None:
        """One debug line naming the settings that do not apply to the asyncio clients."""
        if self.ignored:
            log.debug("Kafka settings not used by the monitor's aiokafka clients: %s",
                      ", ".join(self.ignored))


def _sasl(conf: Mapping[str, Any]) -> tuple[str, str, str]:
    raw = conf.get("sasl.mechanism", conf.get("sasl.mechanisms"))
    if raw is None:
        raise ConfigError("security.protocol is SASL but no sasl.mechanism is set (librdkafka "
                          "would use GSSAPI, which the monitor's aiokafka client does not do)",
                          hint=f"add -X sasl.mechanism={'|'.join(MECHANISMS)}")
    mechanism = str(raw).strip().upper()
    if mechanism not in MECHANISMS:
        raise ConfigError(f"Kafka setting sasl.mechanism={raw} is not supported by the "
                          "monitor's aiokafka client", hint=f"one of: {', '.join(MECHANISMS)}")
    missing = [k for k in ("sasl.username", "sasl.password") if not conf.get(k)]
    if missing:
        raise ConfigError(f"SASL {mechanism} needs {' and '.join(missing)}",
                          hint="pass -X or PVAFLOW_KAFKA_SASL_* (PVAFLOW_KAFKA_SASL_PASSWORD_FILE "
                               "reads a file)")
    return mechanism, str(conf["sasl.username"]), str(conf["sasl.password"])


def _ssl_context(conf: Mapping[str, Any]) -> ssl.SSLContext:
    """librdkafka's TLS settings as one client context."""
    ca = conf.get("ssl.ca.location")
    if str(ca).lower() == "probe":  # librdkafka: the system's CA store, as the default context
        ca = None
    try:
        if ca and os.path.isdir(str(ca)):
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, capath=str(ca))
        else:
            context = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None,
                cadata=str(conf["ssl.ca.pem"]) if conf.get("ssl.ca.pem") else None)
    except (OSError, ssl.SSLError) as exc:
        key = "ssl.ca.location" if ca else "ssl.ca.pem"
        raise ConfigError(f"Kafka setting {key} cannot be used: {_why(exc)}",
                          hint="give a PEM file of the CA certificates") from None
    cert, key_file = conf.get("ssl.certificate.location"), conf.get("ssl.key.location")
    if key_file and not cert:
        raise ConfigError("ssl.key.location is set without ssl.certificate.location",
                          hint="give both, or neither")
    if cert:
        password = conf.get("ssl.key.password")
        try:
            context.load_cert_chain(str(cert), str(key_file) if key_file else None,
                                    str(password) if password is not None else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"Kafka setting ssl.certificate.location={cert} cannot be used: "
                              f"{_why(exc)}", hint="check the certificate, key and "
                              "ssl.key.password") from None
    algorithm = str(conf.get("ssl.endpoint.identification.algorithm", "https")).lower()
    if algorithm not in ("https", "none"):
        raise ConfigError(f"Kafka setting ssl.endpoint.identification.algorithm={algorithm} "
                          "is not https or none")
    if algorithm == "none":
        context.check_hostname = False
    if not _true("enable.ssl.certificate.verification",
                 conf.get("enable.ssl.certificate.verification", True)):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
