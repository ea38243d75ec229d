"""Shared fixtures: a real Kafka broker, unique topics, and real PVA area-detector servers.

Nothing here is a mock: ``kafka_bootstrap`` is a real Apache Kafka broker (pvaflow.ops.broker, or
``$PVAFLOW_BOOTSTRAP``), ``sim_server`` runs pvapy's ``pvapy-ad-sim-server``. Tests that use
any of these fixtures are marked ``integration`` automatically (``-m "not integration"`` skips
them). Everything listens on 127.0.0.1 only, and every process started here is killed by pid
at teardown (and dies with the test process if that is killed).

Fixtures (see each docstring):

* ``kafka_bootstrap`` (session) -> ``"host:port"``
* ``broker`` (session) -> the session's ``LocalBroker`` (skips with an external bootstrap)
* ``private_broker`` -> factory ``(**LocalBroker kwargs) -> LocalBroker`` for stop/start tests
* ``exclusive_kafka`` -> stops the shared broker during the test (for tests running their own)
* ``kafka_cluster`` -> a started 3-node ``LocalCluster`` (replication factor 3, min ISR 2) for
  replication fault tests; one per test module, started on first use, runs beside the shared
  broker on other free ports; tests may stop/kill/restart members (restarted before the next
  test) and it is stopped, checked by pid, when the module ends
* ``secure_broker`` -> a started ``LocalBroker(security="sasl_ssl")``: its client port is a
  SASL_SSL listener (SCRAM-SHA-512, a CA made for its data dir); ``client_settings()`` and
  ``security_files`` give what clients need. One per test module, started on first use beside
  the shared broker, stopped (checked by pid) when the module ends
* ``kafka_admin`` -> ``AdminClient`` on ``kafka_bootstrap``
* ``make_topic`` -> factory ``(partitions=1, *, suffix="", name=None, config=None) -> str``
* ``topic`` -> one fresh single-partition topic name
* ``pva_env`` (session, autouse) -> the loopback EPICS client environment, also os.environ
* ``sim_server`` -> factory ``(**options) -> SimServer``

Never check a PVA server by connecting to its TCP port: a bare connect-and-close wedges a
pvapy 5.6 server for good (later clients time out). Use ``tcp_listening(port)`` instead.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from pvaflow.ops.broker import LocalBroker, LocalCluster
from pvaflow.ops.broker.procs import pid_alive, signal_process
from pvaflow.ops.simulator import MIN_START_DELAY, SimServer, loopback_env, sim_args

from pvaflow.process import free_port

REPO = Path(__file__).resolve().parent.parent

# Property tests assert behaviour, never speed (that is for benchmarks/): on a loaded machine
# one example, or generating it, may take seconds, and hypothesis' default 200 ms deadline and
# its too-slow check would fail the test for that alone. Every @settings inherits this.
settings.register_profile("pvaflow", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("pvaflow")

# Fixtures whose users need real servers; such tests get the ``integration`` marker.
INTEGRATION_FIXTURES = frozenset({
    "kafka_bootstrap", "broker", "private_broker", "exclusive_kafka", "kafka_admin",
    "make_topic", "topic", "sim_server", "kafka_cluster", "secure_broker",
})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: needs the real Kafka broker and/or PVA sim server")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses a real-server fixture as ``integration``, so a forgotten
    marker cannot make ``-m "not integration"`` start a broker."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & INTEGRATION_FIXTURES and item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.integration)


def _slug(text: str, limit: int = 80) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "-", text).strip("-")[:limit].strip("-") or "x"


# ------------------------------------------------------------------------------------------
# Kafka


class _SessionBroker:
    """Lazily started shared broker. ``suspended()`` stops it (data and port kept) while a
    test runs its own private broker, so at most one JVM runs at a time on small machines."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self.external = os.environ.get("PVAFLOW_BOOTSTRAP") or None
        self._factory = factory
        self.broker: LocalBroker | None = None

    def ensure(self) -> LocalBroker:
        if self.broker is None:
            data = self._factory.mktemp("kafka-session")
            self.broker = LocalBroker(data, die_with_parent=True)
        if not self.broker.is_running():
            self.broker.start()
        return self.broker

    @contextlib.contextmanager
    def suspended(self) -> Iterator[list[int]]:
        """Yields ports a private broker must not take (the shared broker's)."""
        b = self.broker
        if b is None or not b.is_running():
            yield [] if b is None else [b.port, b.controller_port]
            return
        b.stop()
        try:
            yield [b.port, b.controller_port]
        finally:
            b.start()

    def close(self) -> None:
        if self.broker is not None:
            self.broker.stop()
            # Keep the logs for post-mortems, drop the (possibly large) topic data.
            shutil.rmtree(self.broker.kraft_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def _session_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_SessionBroker]:
    holder = _SessionBroker(tmp_path_factory)
    try:
        yield holder
    finally:
        holder.close()


@pytest.fixture(scope="session")
def kafka_bootstrap(_session_broker: _SessionBroker) -> str:
    """``bootstrap.servers`` of a real broker: ``$PVAFLOW_BOOTSTRAP`` if set, else a
    LocalBroker started on first use (free port, temp data dir) and stopped after the run."""
    if _session_broker.external:
        return _session_broker.external
    return _session_broker.ensure().bootstrap


@pytest.fixture(scope="session")
def broker(_session_broker: _SessionBroker, kafka_bootstrap: str) -> LocalBroker:
    """The session's LocalBroker (for its logs, pid, data dir). Do not stop it: tests that
    need an outage use ``private_broker``. Skips when ``$PVAFLOW_BOOTSTRAP`` is set."""
    if _session_broker.external or _session_broker.broker is None:
        pytest.skip(f"PVAFLOW_BOOTSTRAP={_session_broker.external} is external: no "
                    "LocalBroker object (tests that stop/start Kafka use private_broker)")
    return _session_broker.broker


@pytest.fixture
def private_broker(
    _session_broker: _SessionBroker, tmp_path: Path,
) -> Iterator[Callable[..., LocalBroker]]:
    """Factory for brokers a test owns: ``private_broker(**LocalBroker_kwargs)`` returns a
    started LocalBroker (data in tmp_path) that the test may stop/start/kill/pause at will.

    While it exists the shared session broker is stopped and restarted afterwards (only one
    JVM at a time); with ``$PVAFLOW_BOOTSTRAP`` the external broker is left alone.
    """
    created: list[LocalBroker] = []
    shared_ports: list[int] = []
    with contextlib.ExitStack() as stack:
        def factory(**kwargs: Any) -> LocalBroker:
            if not created:
                shared_ports.extend(stack.enter_context(_session_broker.suspended()))
            reserved = shared_ports + [p for b in created for p in (b.port, b.controller_port)]
            kwargs.setdefault("data_dir", tmp_path / f"kafka-{len(created)}")
            kwargs.setdefault("die_with_parent", True)
            if kwargs.get("port") is None:
                kwargs["port"] = free_port(exclude=reserved)
            if kwargs.get("controller_port") is None:
                kwargs["controller_port"] = free_port(exclude=[*reserved, kwargs["port"]])
            b = LocalBroker(**kwargs)
            created.append(b)
            return b.start()

        try:
            yield factory
        finally:
            for b in reversed(created):
                b.stop()


@pytest.fixture
def exclusive_kafka(_session_broker: _SessionBroker) -> Iterator[list[int]]:
    """Stop the shared session broker for this test (restarted after it), for tests that
    run Kafka some other way (e.g. the ``pvaflow-broker`` CLI). Yields its reserved ports."""
    with _session_broker.suspended() as ports:
        yield ports


class _ClusterHolder:
    """Lazily started module cluster. Module scope, not session: three idle JVMs would
    otherwise keep two cores busy through the rest of the suite."""

    def __init__(self, data_dir: Path, session: _SessionBroker) -> None:
        self._data_dir = data_dir
        self._session = session
        self.cluster: LocalCluster | None = None
        self.pids: set[int] = set()

    def ensure(self) -> LocalCluster:
        if self.cluster is None:
            b = self._session.broker
            self.cluster = LocalCluster(
                self._data_dir, brokers=3, die_with_parent=True,
                exclude_ports=[] if b is None else [b.port, b.controller_port])
        if not self.cluster.is_running():
            self.cluster.start()
        self.pids.update(p for p in self.cluster.pids if p is not None)
        return self.cluster

    def close(self) -> None:
        if self.cluster is None:
            return
        self.pids.update(p for p in self.cluster.pids if p is not None)
        self.cluster.stop()
        for pid in self.pids:  # every JVM this module started, restarts included
            if pid_alive(pid):
                signal_process(pid, signal.SIGKILL)
        for b in self.cluster.brokers:  # keep the logs, drop the topic data
            shutil.rmtree(b.kraft_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def _cluster_holder(
    _session_broker: _SessionBroker, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[_ClusterHolder]:
    holder = _ClusterHolder(tmp_path_factory.mktemp("kafka-cluster"), _session_broker)
    try:
        yield holder
    finally:
        holder.close()


@pytest.fixture
def kafka_cluster(_cluster_holder: _ClusterHolder) -> LocalCluster:
    """A running 3-node ``LocalCluster`` (see pvaflow.ops.broker.cluster): every member is
    (re)started and the cluster reports all three brokers before the test gets it. Shared by
    the tests of one module; ``bootstrap`` lists all members, ``brokers[i]`` is node ``i + 1``.
    """
    return _cluster_holder.ensure()


class _SecureHolder:
    """Lazily started module broker with a SASL_SSL listener (one JVM, beside the shared
    broker, on other free ports)."""

    def __init__(self, data_dir: Path, session: _SessionBroker) -> None:
        self._data_dir = data_dir
        self._session = session
        self.broker: LocalBroker | None = None
        self.pids: set[int] = set()

    def ensure(self) -> LocalBroker:
        if self.broker is None:
            b = self._session.broker
            taken = [] if b is None else [b.port, b.controller_port]
            port = free_port(exclude=taken)
            controller = free_port(exclude=[*taken, port])
            self.broker = LocalBroker(
                self._data_dir, port, controller_port=controller,
                internal_port=free_port(exclude=[*taken, port, controller]),
                security="sasl_ssl", die_with_parent=True)
        if not self.broker.is_running():
            self.broker.start()
        if self.broker.pid is not None:
            self.pids.add(self.broker.pid)
        return self.broker

    def close(self) -> None:
        if self.broker is None:
            return
        self.broker.stop()
        for pid in self.pids:
            if pid_alive(pid):
                signal_process(pid, signal.SIGKILL)
        shutil.rmtree(self.broker.kraft_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def _secure_holder(
    _session_broker: _SessionBroker, tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[_SecureHolder]:
    holder = _SecureHolder(tmp_path_factory.mktemp("kafka-secure"), _session_broker)
    try:
        yield holder
    finally:
        holder.close()


@pytest.fixture
def secure_broker(_secure_holder: _SecureHolder) -> LocalBroker:
    """A running ``LocalBroker(security="sasl_ssl")`` shared by the tests of one module (see
    pvaflow.ops.broker.security): ``bootstrap`` is its SASL_SSL listener,
    ``client_settings()`` the librdkafka settings of a client (password included: never log
    them), ``security_files`` its CA, password file, ``client.properties`` and ``client.env``.
    """
    return _secure_holder.ensure()


@pytest.fixture
def kafka_admin(kafka_bootstrap: str) -> Any:
    """A confluent-kafka AdminClient on ``kafka_bootstrap`` (per test, so no idle client
    keeps reconnecting while another test has the shared broker stopped)."""
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": kafka_bootstrap})


def _wait_for_leaders(admin: Any, name: str, partitions: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        md = admin.list_topics(topic=name, timeout=5).topics.get(name)
        if (md is not None and md.error is None and len(md.partitions) == partitions
                and all(p.leader >= 0 for p in md.partitions.values())):
            return
        time.sleep(0.1)
    raise TimeoutError(f"topic {name}: partitions have no leader after {timeout} s")


@pytest.fixture
def make_topic(request: pytest.FixtureRequest, kafka_admin: Any) -> Iterator[Callable[..., str]]:
    """Factory creating fresh topics, deleted (best effort) after the test.

    ``make_topic(partitions=1, *, suffix="", name=None, config=None, timeout=30.0) -> str``;
    names are ``t-<test-name>[-<suffix>]-<uuid8>`` unless ``name`` is given. Returns once
    every partition has a leader, so producing right away works.
    """
    from confluent_kafka.admin import NewTopic

    created: list[str] = []

    def factory(
        partitions: int = 1, *, suffix: str = "", name: str | None = None,
        config: Mapping[str, str] | None = None, timeout: float = 30.0,
    ) -> str:
        if name is None:
            parts = [_slug(request.node.name), _slug(suffix, 40) if suffix else ""]
            name = "t-" + "-".join(p for p in parts if p) + "-" + uuid.uuid4().hex[:8]
        futures = kafka_admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1,
                      config=dict(config or {}))],
            operation_timeout=timeout, request_timeout=timeout)
        futures[name].result(timeout)
        created.append(name)
        _wait_for_leaders(kafka_admin, name, partitions, timeout)
        return name

    yield factory
    if created:
        with contextlib.suppress(Exception):
            for f in kafka_admin.delete_topics(created, operation_timeout=10).values():
                with contextlib.suppress(Exception):
                    f.result(15)


@pytest.fixture
def topic(make_topic: Callable[..., str]) -> str:
    """A fresh single-partition topic name (see ``make_topic``)."""
    return make_topic()


# ------------------------------------------------------------------------------------------
# PVA


@pytest.fixture(scope="session", autouse=True)
def pva_env() -> Iterator[dict[str, str]]:
    """EPICS pvAccess settings confining clients and servers to loopback, with one search
    (UDP) port for the whole session; also applied to ``os.environ`` for the session.

    Why session-wide and in os.environ: pvapy reads these variables once, when the first
    channel of the process is created, so an in-process client can only ever use one search
    port. Every sim server answers searches on that shared port (several at once work: pvAccess
    forwards unicast searches among the servers of one host) and has its own TCP port.
    Subprocesses inherit the settings, so components started by tests find the servers too.
    """
    env = loopback_env()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield dict(env)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def sim_server(
    request: pytest.FixtureRequest, tmp_path: Path, pva_env: dict[str, str],
) -> Iterator[Callable[..., SimServer]]:
    """Factory starting ``pvapy-ad-sim-server`` processes; all are killed at teardown.

    ``sim_server(*, channel=None, nx=64, ny=64, datatype="uint8", fps=10.0, runtime=3600.0,
    n_frames=10, total_frames=None, start_delay=MIN_START_DELAY, report_period=0,
    color_mode=0, extra_args=(), ready_timeout=30.0, wait_frames=0, gated=False) -> SimServer``

    ``n_frames`` distinct random frames are generated up front and published round-robin
    (forever, until ``runtime``). ``total_frames=N`` instead publishes exactly N frames and
    the server exits (N frames are held in memory). ``start_delay`` is the pause before the
    first frame (pvapy's default of 10 s is overridden; never below ``MIN_START_DELAY``,
    as ``-std 0`` can leave the server publishing nothing). The channel name defaults to a
    unique ``sim:<test>:<uuid6>``.

    Readiness: the factory returns once the server listens. ``wait_frames=N`` also waits until
    it has published N frames (a pvAccess get of uniqueId), for tests that need frames out
    before they go on; other tests wait on their bridge or clients, never on a fixed sleep.
    ``gated=True``: the first frame waits for ``server.release()``, which a test that needs
    every frame from uniqueId 1 calls once its clients have connected (not a start delay
    that a slow start-up could outlast).
    """
    servers: list[SimServer] = []

    def factory(
        *, channel: str | None = None, nx: int = 64, ny: int = 64, datatype: str = "uint8",
        fps: float = 10.0, runtime: float = 3600.0, n_frames: int = 10,
        total_frames: int | None = None, start_delay: float = MIN_START_DELAY,
        report_period: int = 0, color_mode: int = 0, extra_args: Sequence[str] = (),
        ready_timeout: float = 30.0, wait_frames: int = 0, gated: bool = False,
    ) -> SimServer:
        if channel is None:
            channel = f"sim:{_slug(request.node.name, 40)}:{uuid.uuid4().hex[:6]}"
        args = sim_args(
            channel, nx=nx, ny=ny, datatype=datatype, fps=fps, runtime=runtime,
            n_frames=n_frames, total_frames=total_frames, start_delay=start_delay,
            report_period=report_period, color_mode=color_mode, extra_args=extra_args,
            gated=gated,
        )
        log = tmp_path / f"sim-{_slug(channel, 60)}.log"
        server = SimServer(args, channel, pva_env, log, ready_timeout)
        servers.append(server)
        server.start()
        if wait_frames:
            server.wait_for_frames(wait_frames, timeout=ready_timeout + 60)
        return server

    try:
        yield factory
    finally:
        for s in servers:
            s.stop()
