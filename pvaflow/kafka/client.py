"""Every Kafka client pvaflow makes is built here, so that a bad setting, an unreachable or
lost cluster, a wrong password and librdkafka's own log lines are handled one way.

* A setting librdkafka refuses (``-X no.such.property=1``, ``-X linger.ms=abc``) is a
  :class:`~pvaflow.errors.ConfigError` naming the setting, not a traceback.
* :meth:`Kafka.check_reachable` asks for metadata before a component starts and turns failure
  into one :class:`~pvaflow.errors.KafkaUnavailable` line naming the bootstrap, the cause
  librdkafka reported (refused connection, failed authentication, TLS) and what to do.
* :class:`Health` hears every client's error callback. Once all brokers are down it probes the
  cluster every few seconds; past ``timeout`` without an answer the component is told
  (:meth:`Health.check` raises), so a broker gone for good ends a run with one line and a
  non-zero exit instead of retrying forever.
* librdkafka's log lines go to the ``pvaflow.kafka.librdkafka`` logger at DEBUG: the causes
  they repeat every second reach the user once, through the error callback.

>>> kafka = Kafka("127.0.0.1:9092", [("linger.ms", "5")])
>>> kafka.producer_config()["linger.ms"]
'5'
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from ..errors import ConfigError, KafkaFailure, KafkaUnavailable
from .settings import (
    ENV_BOOTSTRAP,
    PRODUCER_DEFAULTS,
    admin_config,
    batch_size_for,
    bootstrap,
    consumer_config,
    env_overrides,
    is_secret,
    producer_config,
    redact,
)

log = logging.getLogger(__name__)
_librdkafka_log = logging.getLogger("pvaflow.kafka.librdkafka")

# How long a component waits for the cluster at start before it gives up (one line, exit 3).
CONNECT_TIMEOUT = 6.0
# How long a running component tolerates a cluster with no reachable broker (--kafka-timeout).
LOST_TIMEOUT = 120.0
# Seconds between probes while every broker is down.
PROBE_INTERVAL = 2.0

HINT_START = ("start one with `pvaflow broker run`, or point --bootstrap-servers / "
              f"${ENV_BOOTSTRAP} at a running cluster")
HINT_AUTH = "check sasl.username / sasl.password (-X or PVAFLOW_KAFKA_SASL_*)"
HINT_TLS = ("check ssl.ca.location (the CA that signed the broker's certificate) and "
            "security.protocol (-X or PVAFLOW_KAFKA_*)")

# Errors that mean "no broker answers" rather than a problem with one request.
_DOWN = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT,
                   KafkaError._RESOLVE, KafkaError._TIMED_OUT})
_AUTH = frozenset({KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED,
                   KafkaError._SSL})

Client = TypeVar("Client", Producer, Consumer, AdminClient)


class _LibrdkafkaLog:
    """The ``logger`` librdkafka writes to: every line at DEBUG (see the module docstring)."""

    def log(self, level: int, fmt: str, *args: Any) -> None:
        if _librdkafka_log.isEnabledFor(logging.DEBUG):
            _librdkafka_log.debug(fmt, *args)


class Health:
    """What every client of one component has heard from the cluster (thread-safe).

    ``probe`` answers whether the cluster responds right now; it is called at most every
    :data:`PROBE_INTERVAL` seconds and only while the error callbacks say brokers are down.
    """

    def __init__(self, probe: Callable[[], bool], timeout: float = LOST_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._probe = probe
        self.timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self.down_since: float | None = None
        self.cause: str | None = None
        self.auth_failed: str | None = None
        self.tls_failed = False  # auth_failed is a TLS handshake failure, not SASL
        self._next_probe = 0.0
        self._logged: dict[int, float] = {}
        # While a command first checks the cluster its failure is the one line the user
        # reads; the causes librdkafka reports meanwhile go into that line, not the log.
        self.quiet = False

    def on_error(self, err: KafkaError) -> None:
        """librdkafka's ``error_cb`` for every client (runs on librdkafka's threads)."""
        code = err.code()
        with self._lock:
            if code in _AUTH:
                self.auth_failed = err.str()
                self.tls_failed = code == KafkaError._SSL
            if code in _DOWN or code in _AUTH:
                self.cause = err.str()
                if self.down_since is None and code in (KafkaError._ALL_BROKERS_DOWN,
                                                        *_AUTH):
                    self.down_since = self._clock()
                    self._next_probe = self._clock() + PROBE_INTERVAL
        now = self._clock()
        # the same cause once a minute at most
        if not self.quiet and now - self._logged.get(code, -1e9) > 60.0:
            self._logged[code] = now
            level = logging.DEBUG if code == KafkaError._TRANSPORT else logging.WARNING
            log.log(level, "Kafka: %s", err.str())
        if err.fatal():
            with self._lock:
                self.cause = f"fatal: {err.str()}"

    @property
    def reachable(self) -> bool:
        return self.down_since is None

    def check(self) -> None:
        """Raise :class:`KafkaUnavailable` once the cluster has been gone past ``timeout``.

        Cheap while the cluster is up (one attribute read); while it is down, probes every
        :data:`PROBE_INTERVAL` seconds and clears the state when a probe is answered.
        """
        since = self.down_since
        if since is None:
            return
        now = self._clock()
        if now < self._next_probe:
            return
        self._next_probe = now + PROBE_INTERVAL
        if self._probe():
            with self._lock:
                if self.down_since is not None:
                    log.warning("Kafka is reachable again after %.0f s", now - since)
                self.down_since = None
                self.auth_failed = None
            return
        if self.timeout > 0 and now - since >= self.timeout:
            raise self.unavailable(f"lost Kafka for {now - since:.0f} s")

    def unavailable(self, what: str, bootstrap_servers: str = "") -> KafkaUnavailable:
        where = f" at {bootstrap_servers}" if bootstrap_servers else ""
        if self.auth_failed:
            return KafkaUnavailable(f"{what}{where}: {self.auth_failed}",
                                    hint=HINT_TLS if self.tls_failed else HINT_AUTH)
        cause = f" ({self.cause})" if self.cause else ""
        return KafkaUnavailable(f"{what}{where}{cause}", hint=HINT_START)


class Kafka:
    """The Kafka settings of one command (bootstrap, ``-X``, ``PVAFLOW_KAFKA_*``) and the only
    place its clients are made. One :class:`Health` hears all of them."""

    def __init__(
        self,
        bootstrap_servers: str | None = None,
        overrides: Iterable[tuple[str, str]] | Mapping[str, Any] | None = None,
        *,
        timeout: float = LOST_TIMEOUT,
        profile: str | None = None,
    ) -> None:
        self.bootstrap = bootstrap(bootstrap_servers)
        self.profile = profile  # a named settings set (settings.PROFILES), e.g. "latency"
        items = overrides.items() if isinstance(overrides, Mapping) else (overrides or [])
        self.overrides: list[tuple[str, Any]] = list(items)
        self.health = Health(self._probe, timeout)
        self._probe_admin: AdminClient | None = None

    @classmethod
    def from_args(cls, args: Any) -> Kafka:
        """From the options :func:`pvaflow.options.add_kafka_args` added."""
        return cls(args.bootstrap_servers, args.kafka_overrides,
                   timeout=getattr(args, "kafka_timeout", LOST_TIMEOUT),
                   profile=getattr(args, "kafka_profile", None))

    # -- configurations (pure) ------------------------------------------------------------

    def producer_config(self, **extra: Any) -> dict[str, Any]:
        return producer_config(self.bootstrap, self.overrides, profile=self.profile, **extra)

    def consumer_config(self, group: str, **extra: Any) -> dict[str, Any]:
        return consumer_config(group, self.bootstrap, self.overrides, profile=self.profile,
                               **extra)

    def admin_config(self) -> dict[str, Any]:
        return admin_config(self.bootstrap, self.overrides)

    def describe(self) -> str:
        """The settings for a log line, secrets masked."""
        return str(redact(self.admin_config()))

    # -- clients --------------------------------------------------------------------------

    def producer(self, conf: Mapping[str, Any] | None = None, **extra: Any) -> Producer:
        """A producer from ``conf`` (default: :meth:`producer_config` with ``extra``)."""
        return self._make(Producer, conf if conf is not None else self.producer_config(**extra))

    def resizer(self, conf: Mapping[str, Any]) -> Callable[[int], Producer | None] | None:
        """How a producer made from ``conf`` is replaced, before its first record, by one whose
        ``batch.size`` suits that record's size (:func:`~pvaflow.kafka.settings.batch_size_for`);
        the size of a stage's frames is known only when the first one comes.

        None when the size is the user's choice (``-X``, ``PVAFLOW_KAFKA_*``, a profile or the
        component's own setting) or the producer is transactional (its transactions begin
        before any record). The returned callable gives None when the batch size stays.
        """
        # the user's sources count even where they repeat the default's value
        chosen = "batch.size" in {**env_overrides(), **dict(self.overrides)}
        if chosen or "transactional.id" in conf \
                or conf.get("batch.size") != PRODUCER_DEFAULTS["batch.size"]:
            return None

        def resize(record_bytes: int) -> Producer | None:
            size = batch_size_for(record_bytes)
            if size == PRODUCER_DEFAULTS["batch.size"]:
                return None
            log.info("records of %d bytes: producer batch.size %d (about two to a request)",
                     record_bytes, size)
            return self.producer({**conf, "batch.size": size})

        return resize

    def consumer(self, group: str, conf: Mapping[str, Any] | None = None,
                 **extra: Any) -> Consumer:
        return self._make(Consumer,
                          conf if conf is not None else self.consumer_config(group, **extra))

    def admin(self) -> AdminClient:
        return self._make(AdminClient, self.admin_config())

    def _make(self, cls: type[Client], conf: Mapping[str, Any]) -> Client:
        full = {"error_cb": self.health.on_error, "logger": _LibrdkafkaLog(), **conf}
        try:
            return cls(full)
        except KafkaException as exc:
            raise self._config_error(exc, conf) from None

    def _config_error(self, exc: KafkaException, conf: Mapping[str, Any]) -> Exception:
        err = exc.args[0]
        if not isinstance(err, KafkaError) or err.code() != KafkaError._INVALID_ARG:
            return KafkaFailure(f"cannot create a Kafka client: {exc}")
        return ConfigError(f"Kafka setting refused: {err.str()}{self._origin(err.str(), conf)}",
                           hint="fix or drop it (see librdkafka's CONFIGURATION.md)")

    def _origin(self, message: str, conf: Mapping[str, Any]) -> str:
        """Which user setting caused ``message``: librdkafka names the canonical property
        (``queue.buffering.max.ms`` for ``linger.ms``), so each user key is tried alone."""
        user = {**env_overrides(), **dict(self.overrides)}
        match = re.search(r'"([^"]+)"', message)
        named = match.group(1) if match else ""
        for key, value in user.items():
            if key == named or _refused(key, value):
                source = "-X" if key in dict(self.overrides) else "PVAFLOW_KAFKA_*"
                shown = "***" if is_secret(key) else value
                return f" (from {source} {key}={shown})"
        return ""

    # -- reachability ---------------------------------------------------------------------

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a setting librdkafka refuses, before any connection:
        a wrong setting is the first thing to fix, whether or not the cluster answers."""
        # The whole configuration at once (settings depend on each other: SASL_SSL alone
        # would ask for the default GSSAPI mechanism), without a bootstrap so that nothing
        # connects; _make names the user's setting behind a refusal.
        conf = {k: v for k, v in self.producer_config().items() if k != "bootstrap.servers"}
        self._make(Producer, conf)

    def check_reachable(self, timeout: float = CONNECT_TIMEOUT) -> None:
        """Raise :class:`ConfigError` for a refused setting, then :class:`KafkaUnavailable`
        unless the cluster answers a metadata request within ``timeout`` seconds; a failed
        authentication ends the wait at once."""
        self.validate()
        self.health.quiet = True
        try:
            self._wait_reachable(timeout)
        finally:
            self.health.quiet = False

    def _wait_reachable(self, timeout: float) -> None:
        admin = self._admin_for_probe()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                admin.list_topics(timeout=max(0.2, min(1.0, left)))
                return
            except KafkaException as exc:
                err = exc.args[0]
                if isinstance(err, KafkaError) and err.code() not in _DOWN:
                    self.health.cause = err.str()
            admin.poll(0)  # serve the error callback: it carries the cause
            if self.health.auth_failed or time.monotonic() >= deadline:
                what = ("cannot reach Kafka" if not self.health.auth_failed
                        else "TLS handshake with Kafka failed" if self.health.tls_failed
                        else "Kafka refused the credentials")
                raise self.health.unavailable(what, self.bootstrap)

    def _admin_for_probe(self) -> AdminClient:
        if self._probe_admin is None:
            self._probe_admin = self.admin()
        return self._probe_admin

    def _probe(self) -> bool:
        admin = self._admin_for_probe()
        try:
            # generous: under load a reconnecting client needs a few seconds, and a probe
            # that keeps timing out would hold a component unready after the cluster is back
            admin.list_topics(timeout=3.0)
            return True
        except KafkaException:
            admin.poll(0)
            return False


def _refused(key: str, value: Any) -> bool:
    try:
        Producer({key: value, "logger": _LibrdkafkaLog()})
    except KafkaException:
        return True
    return False


