"""A real single-node Apache Kafka broker (KRaft, combined mode) on 127.0.0.1.

Why this exists: pvaflow's integration tests and demo must run against real Kafka, never a
mock, on machines without Docker or a Kafka install. Maven and a JDK are enough: the broker's
jars are resolved from Maven Central once (``org.apache.kafka:kafka_2.13`` plus a logging
binding), cached, and the broker is started straight from them with ``kafka.Kafka``.

Python use::

    with LocalBroker() as broker:          # temp data dir, free port, stopped on exit
        produce_to(broker.bootstrap)
        broker.stop(); broker.start()      # outage with data kept, same port

    with LocalCluster(brokers=3) as cluster:   # 3 replicating nodes, for fault tests
        cluster.kill(0); cluster.start(0)      # crash and restart one member

    with LocalBroker(security="sasl_ssl") as broker:   # SASL_SSL + SCRAM-SHA-512 listener
        Producer(broker.client_settings())     # bootstrap, protocol, user, password, CA

Command line (``pvaflow-broker`` / ``python -m pvaflow.ops.broker`` / ``scripts/kafka-local``)::

    pvaflow-broker fetch                   # resolve the jars, print where they are
    pvaflow-broker run [--port 9092]       # foreground until Ctrl-C
    pvaflow-broker run --brokers 3         # a local 3-node cluster (see ``cluster``)
    pvaflow-broker start / stop / status   # background broker tracked by a state file
    pvaflow-broker run --security sasl_ssl # SASL_SSL (SCRAM-SHA-512) listener, see ``security``

The package is split by job: ``maven`` (jar resolution and cache), ``procs`` (process and
socket helpers), ``lifecycle`` (``LocalBroker``), ``cluster`` (``LocalCluster``), ``daemon``
(the state file of a background broker), ``security`` (the TLS material, SCRAM user and
client settings of a secured listener) and ``cli`` (``pvaflow-broker``). This module
re-exports what callers use.

Environment: ``KAFKA_VERSION`` (default 4.1.1; 3.x works too), ``PVAFLOW_CACHE`` (cache root,
default ``~/.cache/pvaflow``), ``PVAFLOW_MAVEN_ARGS`` (extra Maven arguments, e.g.
``-o -Dmaven.repo.local=/path``), ``MAVEN_REPO_LOCAL`` (shortcut for the latter),
``PVAFLOW_BROKER_JVM_OPTS`` (extra JVM options), ``JAVA_HOME``.
"""

from __future__ import annotations

from pvaflow.process import free_port

from .cli import main
from .cluster import LocalCluster
from .errors import BrokerError
from .lifecycle import MAX_MESSAGE_BYTES, LocalBroker, external_or_local, new_cluster_id
from .maven import (
    DEFAULT_KAFKA_VERSION,
    default_cache_root,
    default_kafka_version,
    fetch_kafka,
    kafka_libs_dir,
    maven_artifacts,
)
from .security import SECURITY_MODES, SecurityFiles

__all__ = [
    "DEFAULT_KAFKA_VERSION",
    "MAX_MESSAGE_BYTES",
    "SECURITY_MODES",
    "BrokerError",
    "LocalBroker",
    "LocalCluster",
    "SecurityFiles",
    "default_cache_root",
    "default_kafka_version",
    "external_or_local",
    "fetch_kafka",
    "free_port",
    "kafka_libs_dir",
    "main",
    "maven_artifacts",
    "new_cluster_id",
]
