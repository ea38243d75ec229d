"""A local multi-broker Kafka cluster on 127.0.0.1, for fault tests of a replicated cluster.

Why it exists: a single broker cannot show what pvaflow does when a replica dies (leader
election, ISR shrink, ``acks=all`` with ``min.insync.replicas``). This starts N Kafka
processes from the same Maven-resolved jars as ``LocalBroker`` so such tests run on a laptop
or CI runner without Docker.

Layout and why:

* Every node is combined mode (broker and controller in one JVM) and every node is a voter of
  the controller quorum. With 3 nodes, killing any one leaves a majority of both brokers and
  controllers (2 of 3), which is the failure the tests exercise; separate controller JVMs
  would double the processes on a 2-core machine for no extra coverage.
* The quorum is static: ``controller.quorum.voters`` lists ``id@127.0.0.1:port`` of every
  node. Kafka 4.x formats static-quorum storage with a plain ``kafka.tools.StorageTool format``
  (``--standalone``/``--initial-controllers``/``--no-initial-controllers`` are only for a
  dynamic, KIP-853 quorum) and the same command works on 3.x. Every node is formatted with the
  same cluster id. The price: a node keeps its ports for the life of the ``LocalCluster``
  object, since the other nodes know its controller address.
* Replication is what a production cluster of 3 would use: ``default.replication.factor`` 3
  and ``min.insync.replicas`` 2, the offsets and transaction topics replicated 3 times with a
  minimum ISR of 2. One lost node is tolerated by ``acks=all`` producers; two are not.
  (Fewer than 3 nodes lower these to the node count and one less than it.)
* Sizing for a shared 2-core, 24 GiB machine that also runs the test suite's session broker:
  heaps of 256 MiB (128 MiB initial) instead of ``LocalBroker``'s 512 MiB, fewer request
  threads, and ``-XX:ActiveProcessorCount=1`` so each JVM sizes its GC and JIT thread pools
  for one core rather than three JVMs each claiming both.
* A killed node is fenced after ``broker.session.timeout.ms`` (3 s, inherited from
  ``LocalBroker``), which removes it from every ISR and moves its leaderships.

Readiness is a condition, not a delay: ``start()`` returns once every node answers a metadata
request that lists every node, and the cluster describes itself with all of them.

Python use::

    with LocalCluster(brokers=3) as cluster:     # temp data dir, free ports, stopped on exit
        produce_to(cluster.bootstrap)            # "127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3"
        cluster.kill(0)                          # SIGKILL node 1 (index 0)
        cluster.start(0)                         # back on the same data dir and ports

With ``security="sasl_ssl"`` every member's client port is a SASL_SSL listener (see
``LocalBroker``); the members share one CA, broker certificate and SCRAM user, kept in
``<data_dir>/security/``, and replicate over PLAINTEXT listeners on 127.0.0.1.

Command line: ``pvaflow-broker run --brokers 3 [--security sasl_ssl]``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pvaflow.process import free_port

from .errors import BrokerError
from .lifecycle import LocalBroker, new_cluster_id
from .procs import HOST
from .security import SASL_SSL, SecurityFiles, check_security

CLUSTER_JVM_OPTS = ("-XX:ActiveProcessorCount=1",)


class ClusterMember(LocalBroker):
    """One node of a ``LocalCluster``: a ``LocalBroker`` that knows the whole quorum and
    formats its storage with the cluster's id instead of a fresh one."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int,
        *,
        node_id: int,
        voters: str,
        cluster_id: Callable[[], str],
        cluster_properties: Mapping[str, object],
        **kwargs: Any,
    ) -> None:
        super().__init__(data_dir, port, **kwargs)
        self.node_id = node_id
        self.voters = voters
        self._cluster_id_source = cluster_id
        self.cluster_properties = dict(cluster_properties)

    def server_properties(self) -> dict[str, object]:
        props = super().server_properties()
        props["controller.quorum.voters"] = self.voters
        props.update(self.cluster_properties)
        props.update(self.extra_properties)  # explicit overrides still win
        return props

    def _format_cluster_id(self) -> str:
        return self._cluster_id_source()

    def _write_client_files(self) -> None:
        """The cluster writes them, listing every member."""

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.is_running() else "stopped"
        return f"ClusterMember(node {self.node_id}, {self.bootstrap}, {state})"


def cluster_properties(brokers: int) -> dict[str, object]:
    """Replication settings of an N-node cluster (see the module docstring for why)."""
    rf = min(3, brokers)
    isr = max(1, rf - 1)
    return {
        "default.replication.factor": rf,
        "min.insync.replicas": isr,
        "offsets.topic.replication.factor": rf,
        "transaction.state.log.replication.factor": rf,
        "transaction.state.log.min.isr": isr,
        "share.coordinator.state.topic.replication.factor": rf,
        "share.coordinator.state.topic.min.isr": isr,
        # Three JVMs share two cores: fewer threads, less contention.
        "num.network.threads": 2,
        "num.io.threads": 4,
        "background.threads": 4,
    }


class LocalCluster:
    """N KRaft nodes on 127.0.0.1, each in ``<data_dir>/node-<id>`` (id = index + 1).

    ``start()``/``stop()``/``kill()``/``restart()``/``pause()``/``resume()`` act on the whole
    cluster without an index and on one member with one; a member keeps its data directory and
    ports across stops. With ``data_dir=None`` a temporary directory is used and removed by
    ``close()``/``__exit__``. ``die_with_parent`` as for ``LocalBroker``.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        brokers: int = 3,
        *,
        ports: Sequence[int] | None = None,
        controller_ports: Sequence[int] | None = None,
        exclude_ports: Sequence[int] = (),
        kafka_version: str | None = None,
        cache_root: Path | None = None,
        start_timeout: float = 180.0,
        stop_timeout: float = 30.0,
        heap_max: str = "256m",
        heap_min: str = "128m",
        jvm_opts: Sequence[str] = CLUSTER_JVM_OPTS,
        properties: Mapping[str, object] | None = None,
        die_with_parent: bool = False,
        security: str = "plaintext",
    ) -> None:
        if brokers < 1:
            raise BrokerError(f"a cluster needs at least one broker, not {brokers}")
        for name, given in (("ports", ports), ("controller_ports", controller_ports)):
            if given is not None and len(given) != brokers:
                raise BrokerError(f"{name} must list {brokers} ports, not {len(given)}")
        self._own_dir = data_dir is None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix="pvaflow-kafka-cluster-")) if data_dir is None
            else Path(data_dir).resolve()
        )
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        taken = list(exclude_ports)

        def pick(given: Sequence[int] | None, i: int) -> int:
            port = given[i] if given is not None and given[i] else free_port(exclude=taken)
            if port in taken:
                raise BrokerError(f"port {port} is given twice or reserved")
            taken.append(port)
            return port

        client = [pick(ports, i) for i in range(brokers)]
        controller = [pick(controller_ports, i) for i in range(brokers)]
        secured = check_security(security) == SASL_SSL
        internal = [pick(None, i) if secured else None for i in range(brokers)]
        voters = ",".join(f"{i + 1}@{HOST}:{p}" for i, p in enumerate(controller))
        self._cluster_id: str | None = None
        self.brokers: list[ClusterMember] = [
            ClusterMember(
                self.data_dir / f"node-{i + 1}", client[i], node_id=i + 1, voters=voters,
                cluster_id=self._shared_cluster_id,
                cluster_properties=cluster_properties(brokers),
                controller_port=controller[i], kafka_version=kafka_version,
                cache_root=cache_root, start_timeout=start_timeout, stop_timeout=stop_timeout,
                heap_max=heap_max, heap_min=heap_min, jvm_opts=jvm_opts,
                properties=properties, die_with_parent=die_with_parent,
                security=security, internal_port=internal[i],
                security_dir=self.data_dir / "security",
            )
            for i in range(brokers)
        ]
        self.kafka_version = self.brokers[0].kafka_version
        self.last_start_seconds: float | None = None

    # -- addresses and state

    @property
    def bootstrap(self) -> str:
        """Every member's ``127.0.0.1:<port>``, comma separated, for ``bootstrap.servers``."""
        return ",".join(b.bootstrap for b in self.brokers)

    @property
    def security(self) -> str:
        return self.brokers[0].security

    @property
    def security_files(self) -> SecurityFiles | None:
        return self.brokers[0].security_files

    def client_settings(self) -> dict[str, str]:
        """The librdkafka settings of a client of the whole cluster (see
        ``LocalBroker.client_settings``); holds the password when secured."""
        return self.brokers[0].client_settings(self.bootstrap)

    @property
    def node_ids(self) -> list[int]:
        return [b.node_id for b in self.brokers]

    @property
    def pids(self) -> list[int | None]:
        return [b.pid for b in self.brokers]

    @property
    def cluster_id(self) -> str | None:
        """The id the members' storage is formatted with (None before the first start)."""
        return next((b.cluster_id for b in self.brokers if b.cluster_id is not None),
                    self._cluster_id)

    def _shared_cluster_id(self) -> str:
        # Members formatted earlier (a reused data dir) decide; otherwise one new id for all.
        if self._cluster_id is None:
            self._cluster_id = self.cluster_id or new_cluster_id()
        return self._cluster_id

    def index_of(self, node_id: int) -> int:
        """The member index of a Kafka node id (as in metadata: leaders, replicas, ISRs)."""
        for i, b in enumerate(self.brokers):
            if b.node_id == node_id:
                return i
        raise BrokerError(f"no node {node_id} in this cluster ({self.node_ids})")

    def member(self, index: int) -> ClusterMember:
        return self.brokers[index]

    def _selected(self, index: int | None) -> list[ClusterMember]:
        return list(self.brokers) if index is None else [self.brokers[index]]

    def is_running(self, index: int | None = None) -> bool:
        """Whether every member (or the member ``index``) runs."""
        return all(b.is_running() for b in self._selected(index))

    # -- lifecycle

    def start(self, index: int | None = None) -> LocalCluster:
        """Start every stopped member (or only ``index``) and wait until the whole cluster
        answers with all its brokers; idempotent. Members started here are killed again if
        the cluster does not come up."""
        t0 = time.monotonic()
        started: list[ClusterMember] = []
        try:
            for b in self._selected(index):
                if not b.is_running():
                    b.launch()
                    started.append(b)
            if self.security_files is not None:
                self.security_files.write_client_files(self.bootstrap)
            self.wait_ready(max(1.0, self.start_timeout - (time.monotonic() - t0)))
        except BaseException:
            for b in started:
                b.kill()
            raise
        self.last_start_seconds = time.monotonic() - t0
        for b in started:
            b.last_start_seconds = self.last_start_seconds
        return self

    def wait_ready(self, timeout: float) -> None:
        """Block until every running member answers metadata listing every running member,
        and the cluster describes itself with all of them (all N after ``start()``)."""
        deadline = time.monotonic() + timeout
        running = [b for b in self.brokers if b.is_running()]
        if not running:
            raise BrokerError(f"no member of the cluster in {self.data_dir} is running")
        for b in running:
            b.wait_ready(max(1.0, deadline - time.monotonic()))
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrokerError(
                    f"the cluster {self.bootstrap} did not report all {len(running)} "
                    f"running brokers within {timeout:.1f} s\n{self.log_tail()}"
                )
            if self._complete(running, min(left, 10.0)):
                return
            for b in running:
                if not b.is_running():
                    raise BrokerError(f"node {b.node_id} exited during startup\n{b.log_tail()}")
            time.sleep(0.2)

    def _complete(self, running: Sequence[ClusterMember], timeout: float) -> bool:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        want = {b.node_id for b in running}
        try:
            for b in running:
                admin = AdminClient({**b.client_settings(), "log_level": 0})
                if set(admin.list_topics(timeout=max(timeout, 0.5)).brokers) != want:
                    return False
            bootstrap = ",".join(b.bootstrap for b in running)
            admin = AdminClient({**running[0].client_settings(bootstrap), "log_level": 0})
            desc = admin.describe_cluster(request_timeout=max(timeout, 0.5)).result(
                timeout=max(timeout, 0.5) + 5)
        except (KafkaException, TimeoutError):
            return False
        return {n.id for n in desc.nodes} == want and desc.cluster_id == self.cluster_id

    def stop(self, index: int | None = None, timeout: float | None = None) -> None:
        """SIGTERM (controlled shutdown), then SIGKILL after ``timeout`` s; data is kept.
        The whole cluster is signalled at once: stopping nodes one by one would leave the
        last ones without a controller majority, waiting for one until they are killed."""
        members = [b for b in self._selected(index) if b.pid is not None]
        if len(members) <= 1:
            for b in members:
                b.stop(timeout)
            return
        with ThreadPoolExecutor(len(members)) as pool:
            for future in [pool.submit(b.stop, timeout) for b in members]:
                future.result()

    def kill(self, index: int | None = None) -> None:
        """SIGKILL, like a machine crash; the next start recovers the member's logs."""
        for b in self._selected(index):
            b.kill()

    def restart(self, index: int | None = None) -> LocalCluster:
        self.stop(index)
        return self.start(index)

    def pause(self, index: int | None = None) -> None:
        """SIGSTOP: the member hangs with its sockets open (a hung, not a dead, node)."""
        for b in self._selected(index):
            b.pause()

    def resume(self, index: int | None = None) -> None:
        for b in self._selected(index):
            b.resume()

    def detach(self) -> list[int]:
        """Leave every member running after this object is gone; returns their pids."""
        return [b.detach() for b in self.brokers if b.is_running()]

    def close(self) -> None:
        """Stop, and delete the data directory if this object created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(f"=== node {b.node_id}\n{b.log_tail(lines)}" for b in self.brokers)

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        states = ", ".join(
            f"{b.node_id}:{b.pid if b.is_running() else 'stopped'}" for b in self.brokers)
        return f"LocalCluster({self.bootstrap}, kafka {self.kafka_version}, {states})"
