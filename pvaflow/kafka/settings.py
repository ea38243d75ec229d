"""Kafka client settings, in one place.

Defaults are tuned for multi-MB frames and bounded memory; every command layers, in order:
these defaults, ``PVAFLOW_KAFKA_*`` environment variables, then ``-X key=value`` options.
``PVAFLOW_KAFKA_SASL_PASSWORD=...`` sets ``sasl.password``; a name ending in ``_FILE`` reads
the value from that file (how Kubernetes mounts Secrets).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ENV_BOOTSTRAP = "PVAFLOW_BOOTSTRAP"
ENV_PREFIX = "PVAFLOW_KAFKA_"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
MiB = 1024 * 1024

# Largest record we produce or accept; the local broker's message.max.bytes matches.
MAX_MESSAGE_BYTES = 32 * MiB

PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 2,
    "batch.size": 4 * MiB,
    "message.max.bytes": MAX_MESSAGE_BYTES + MiB,
    # The producer buffer is the bridge's bound on memory during a broker outage.
    "queue.buffering.max.kbytes": 256 * 1024,
    "queue.buffering.max.messages": 100_000,
    "message.timeout.ms": 300_000,
    "compression.type": "none",
}

CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "partition.assignment.strategy": "cooperative-sticky",
    "session.timeout.ms": 10_000,
    "heartbeat.interval.ms": 1_000,
    "fetch.max.bytes": 64 * MiB,
    "max.partition.fetch.bytes": MAX_MESSAGE_BYTES,
    "message.max.bytes": MAX_MESSAGE_BYTES + MiB,
    # Prefetched messages held by librdkafka for this consumer (all partitions together).
    "queued.max.messages.kbytes": 64 * 1024,
    # When that prefetch is full librdkafka stops fetching for this long (default 1 s). A
    # processor only slightly slower than the broker then drains the queue and waits idle
    # for most of the second: measured 16 KiB frames at 5,600 fps with the default, 13,800
    # with 20 ms.
    "fetch.queue.backoff.ms": 20,
}

ADMIN_DEFAULTS: dict[str, Any] = {}


def bootstrap(cli_value: str | None = None) -> str:
    return cli_value or os.environ.get(ENV_BOOTSTRAP) or DEFAULT_BOOTSTRAP


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX):]
        if key.endswith("_FILE"):
            key, value = key[: -len("_FILE")], Path(value).read_text().strip()
        out[key.lower().replace("_", ".")] = value
    return out


def parse_override(text: str) -> tuple[str, str]:
    """argparse ``type=`` for ``-X key=value``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value (a librdkafka setting), got {text!r}")
    return key.strip(), value


def _merge(
    defaults: Mapping[str, Any],
    bootstrap_servers: str | None,
    overrides: Iterable[tuple[str, str]] | Mapping[str, Any] | None,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    conf = dict(defaults)
    conf["bootstrap.servers"] = bootstrap(bootstrap_servers)
    if extra:
        conf.update(extra)
    conf.update(env_overrides())
    if overrides:
        conf.update(dict(overrides.items() if isinstance(overrides, Mapping) else overrides))
    return conf


def producer_config(
    bootstrap_servers: str | None = None,
    overrides: Iterable[tuple[str, str]] | Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return _merge(PRODUCER_DEFAULTS, bootstrap_servers, overrides, _dotted(extra))


def consumer_config(
    group_id: str,
    bootstrap_servers: str | None = None,
    overrides: Iterable[tuple[str, str]] | Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return _merge(
        CONSUMER_DEFAULTS, bootstrap_servers, overrides, {"group.id": group_id, **_dotted(extra)}
    )


def admin_config(
    bootstrap_servers: str | None = None,
    overrides: Iterable[tuple[str, str]] | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    conf = _merge(ADMIN_DEFAULTS, bootstrap_servers, overrides, None)
    # Admin clients reject producer/consumer-only keys a user may pass with -X.
    client_only = PRODUCER_DEFAULTS.keys() | CONSUMER_DEFAULTS.keys()
    return {k: v for k, v in conf.items() if k not in client_only}


# Setting names whose values never appear in a log line, status message or metric.
_SECRET_WORDS = ("password", "secret", "token", "credential", "private", "sasl.jaas")


def is_secret(key: str) -> bool:
    """``sasl.password``, ``ssl.key.password``, ``sasl.oauthbearer.client.secret``, ..."""
    k = key.lower().replace("_", ".")
    return any(word in k for word in _SECRET_WORDS)


def redact(conf: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``conf`` fit for a log line: secret values become ``***``.

    >>> redact({"sasl.username": "alice", "sasl.password": "hunter2"})
    {'sasl.username': 'alice', 'sasl.password': '***'}
    """
    return {k: ("***" if is_secret(k) else v) for k, v in conf.items()}


def _dotted(extra: Mapping[str, Any]) -> dict[str, Any]:
    """``linger_ms=5`` -> ``linger.ms``: keyword-friendly spelling for callers."""
    return {k.replace("_", "."): v for k, v in extra.items()}
