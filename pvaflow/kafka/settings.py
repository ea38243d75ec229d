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
    # Each produce request costs the producer's broker thread and the broker CPU whatever it
    # carries: 16 KiB frames at 2,000 fps took the bridge's librdkafka thread 16-30 % of a
    # core with 2 ms against 6-10 % with 10 ms (and the bridge 0.24-0.32 ms CPU per frame
    # against 0.20-0.23). Up to 10 ms per hop is the price; --latency sets 0.
    "linger.ms": 10,
    "batch.size": 4 * MiB,
    "message.max.bytes": MAX_MESSAGE_BYTES + MiB,
    # The producer buffer is the bridge's bound on memory during a broker outage.
    "queue.buffering.max.kbytes": 256 * 1024,
    "queue.buffering.max.messages": 100_000,
    "message.timeout.ms": 300_000,
    "compression.type": "none",
}

# Records of this size and more get a producer whose batch holds about two of them
# (:func:`batch_size_for`).
LARGE_RECORD = 256 * 1024


def batch_size_for(record_bytes: int) -> int:
    """The ``batch.size`` for a producer whose records are about ``record_bytes`` long.

    An idempotent librdkafka producer (2.x) lets a partition have at most 5 *records* in
    flight, so a request of 5 or more records holds the partition until it is acknowledged;
    meanwhile the next batch is ready and the producer's broker thread polls in a busy loop.
    Small records need the large default batch for throughput with one request in flight
    (16 KiB frames at 4,000 fps lost frames with 1 MiB); for large records two to a request
    leaves room for three requests, and ~380 KB frames then passed 400 fps end to end
    instead of 200 (docs/performance.md, "A batch size that follows the frame size").

    >>> batch_size_for(16 * 1024) == PRODUCER_DEFAULTS["batch.size"]
    True
    >>> batch_size_for(380_000)
    1048576
    >>> batch_size_for(2 * MiB) == PRODUCER_DEFAULTS["batch.size"]  # one to a request already
    True
    """
    default = int(PRODUCER_DEFAULTS["batch.size"])
    if record_bytes < LARGE_RECORD:
        return default
    return min(default, max(MiB, 2 * record_bytes + 64 * 1024))


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

# Named sets of settings layered over the defaults and a component's own settings (before
# PVAFLOW_KAFKA_* and -X): ``--latency`` on any data-plane command. The defaults favour
# throughput (fewer, larger requests); "latency" is for interactive use, e.g. watching
# frames live at modest rates, and costs CPU per frame in every client and the broker.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "latency": {
        # send at once instead of waiting to fill a batch; no Nagle delay on small requests
        "producer": {"linger.ms": 0, "socket.nagle.disable": True},
        # an idle fetch returns within 10 ms (new records end a fetch wait anyway)
        "consumer": {"fetch.wait.max.ms": 10, "socket.nagle.disable": True},
    },
}


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


def profile_settings(profile: str | None, client: str) -> dict[str, Any]:
    """The settings a named profile (:data:`PROFILES`) gives a ``producer`` or ``consumer``."""
    if profile is None:
        return {}
    try:
        return dict(PROFILES[profile][client])
    except KeyError:
        raise ValueError(f"no {client} settings profile {profile!r}; one of "
                         f"{', '.join(PROFILES)}") from None


def _merge(
    defaults: Mapping[str, Any],
    bootstrap_servers: str | None,
    overrides: Iterable[tuple[str, str]] | Mapping[str, Any] | None,
    extra: Mapping[str, Any] | None,
    profile: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    conf = dict(defaults)
    conf["bootstrap.servers"] = bootstrap(bootstrap_servers)
    if extra:
        conf.update(extra)
    if profile:
        conf.update(profile)
    conf.update(env_overrides())
    if overrides:
        conf.update(dict(overrides.items() if isinstance(overrides, Mapping) else overrides))
    return conf


def producer_config(
    bootstrap_servers: str | None = None,
    overrides: Iterable[tuple[str, str]] | Mapping[str, Any] | None = None,
    *,
    profile: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return _merge(PRODUCER_DEFAULTS, bootstrap_servers, overrides, _dotted(extra),
                  profile_settings(profile, "producer"))


def consumer_config(
    group_id: str,
    bootstrap_servers: str | None = None,
    overrides: Iterable[tuple[str, str]] | Mapping[str, Any] | None = None,
    *,
    profile: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return _merge(
        CONSUMER_DEFAULTS, bootstrap_servers, overrides, {"group.id": group_id, **_dotted(extra)},
        profile_settings(profile, "consumer"),
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
