"""The lifecycle of one local Kafka process: configure, format, start, wait, stop.

Why a broker+controller in one JVM (KRaft combined mode): a development broker needs no
ZooKeeper and no second process, and one JVM is what a 2-core laptop or CI runner can spare.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from pvaflow.process import die_with_parent, free_port

from .errors import BrokerError
from .maven import check_version, default_kafka_version, fetch_kafka, major
from .procs import (
    HOST,
    all_threads_stopped,
    can_connect,
    find_java,
    kill_at_exit,
    port_in_use,
    signal_process,
    tail_file,
    tail_text,
)
from .security import (
    INTERNAL_LISTENER,
    SASL_SSL,
    SECURE_LISTENER,
    SecurityFiles,
    check_security,
)

MAX_MESSAGE_BYTES = 32 * 1024 * 1024
"""Largest record batch the broker accepts: detector frames are several MiB each."""


def new_cluster_id() -> str:
    """A Kafka cluster id (URL-safe base64 of a random UUID), made without starting a JVM.

    Like Kafka's own ``Uuid.randomUuid`` it never starts with '-', which command-line parsers
    would take for an option."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def render_properties(props: Mapping[str, object]) -> str:
    return "".join(f"{k}={v}\n" for k, v in props.items())


class LocalBroker:
    """One KRaft broker+controller process bound to 127.0.0.1.

    The data directory holds everything: ``server.properties``, the log4j config,
    ``kraft/`` (topic data), ``logs/server.log`` (broker log) and ``logs/kafka.out`` (JVM
    stdout/stderr). ``stop()``/``start()`` keep the data and the port, so tests can simulate a
    broker outage; ``kill()`` simulates a crash; ``pause()``/``resume()`` (SIGSTOP/SIGCONT)
    simulate a hung broker whose connections stay open. With ``data_dir=None`` a temporary
    directory is used and removed by ``close()``/``__exit__``.

    ``security="sasl_ssl"`` makes the client port a SASL_SSL listener (SCRAM-SHA-512, TLS with a
    certificate made for this data directory) instead of a PLAINTEXT one; the brokers talk to
    each other on a PLAINTEXT listener on ``internal_port`` (127.0.0.1 only) and the KRaft
    controller listener stays PLAINTEXT too. ``client_settings()`` is what a client needs;
    ``security_files`` names the files written (see ``pvaflow.ops.broker.security``).

    ``die_with_parent=True`` makes the kernel kill the JVM when the starting *thread* exits
    (PR_SET_PDEATHSIG): right for test fixtures, wrong for a broker started from a worker
    thread that ends early.
    """

    node_id: int = 1
    """KRaft node id; members of a ``LocalCluster`` get their own."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        *,
        controller_port: int | None = None,
        kafka_version: str | None = None,
        cache_root: Path | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 20.0,
        heap_max: str = "512m",
        heap_min: str = "256m",
        jvm_opts: Sequence[str] = (),
        properties: Mapping[str, object] | None = None,
        die_with_parent: bool = False,
        security: str = "plaintext",
        internal_port: int | None = None,
        security_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.kafka_version = check_version(kafka_version or default_kafka_version())
        self.cache_root = cache_root
        self._own_dir = data_dir is None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix="pvaflow-kafka-")) if data_dir is None
            else Path(data_dir).resolve()
        )
        self.port = port or free_port()
        self.controller_port = controller_port or free_port(exclude=(self.port,))
        if self.port == self.controller_port:
            raise BrokerError("the broker and controller ports must differ")
        self.security = check_security(security)
        self.internal_port: int | None = None
        self.security_files: SecurityFiles | None = None
        if self.security == SASL_SSL:
            self.internal_port = internal_port or free_port(
                exclude=(self.port, self.controller_port))
            if self.internal_port in (self.port, self.controller_port):
                raise BrokerError("the internal port must differ from the other ports")
            self.security_files = SecurityFiles(
                Path(security_dir) if security_dir is not None else self.data_dir / "security")
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.heap_max = heap_max
        self.heap_min = heap_min
        self.jvm_opts = list(jvm_opts)
        self.extra_properties = dict(properties or {})
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self.last_start_seconds: float | None = None

    # -- paths and addresses

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:<port>``: what ``bootstrap.servers`` should be set to."""
        return f"{HOST}:{self.port}"

    @property
    def secured(self) -> bool:
        return self.security_files is not None

    def client_settings(self, bootstrap: str | None = None) -> dict[str, str]:
        """The librdkafka settings a client needs: ``bootstrap.servers`` and, when secured,
        ``security.protocol``, ``sasl.mechanism``, ``sasl.username``, ``sasl.password`` and
        ``ssl.ca.location``. Holds the password: never log it (``redact`` it)."""
        where = bootstrap or self.bootstrap
        if self.security_files is None:
            return {"bootstrap.servers": where}
        return self.security_files.client_settings(where)

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def log_path(self) -> Path:
        """The broker's own log (log4j)."""
        return self.log_dir / "server.log"

    @property
    def stdout_path(self) -> Path:
        """JVM stdout/stderr: crashes before logging is set up end up here."""
        return self.log_dir / "kafka.out"

    @property
    def properties_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def kraft_dir(self) -> Path:
        return self.data_dir / "kraft"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def cluster_id(self) -> str | None:
        """The id recorded when the storage was formatted (None before the first start)."""
        try:
            text = (self.kraft_dir / "meta.properties").read_text()
        except OSError:
            return None
        m = re.search(r"^cluster\.id=(\S+)", text, re.M)
        return m.group(1) if m else None

    # -- configuration

    def server_properties(self) -> dict[str, object]:
        """The broker configuration: single node, loopback only, sized for multi-MB frames."""
        props: dict[str, object] = {
            "process.roles": "broker,controller",
            "node.id": self.node_id,
            # Static quorum: works unchanged on 3.x and 4.x, needs no --standalone at format
            # time, and tolerates a different controller port on a later start.
            "controller.quorum.voters": f"1@{HOST}:{self.controller_port}",
            **self._listener_properties(),
            "log.dirs": str(self.kraft_dir),
            "num.partitions": 1,
            # Frames are several MiB: let batches of up to 32 MiB through end to end.
            "message.max.bytes": MAX_MESSAGE_BYTES,
            "replica.fetch.max.bytes": MAX_MESSAGE_BYTES,
            "replica.fetch.response.max.bytes": 2 * MAX_MESSAGE_BYTES,
            "socket.request.max.bytes": 128 * 1024 * 1024,
            # Kafka's 100 KiB socket buffers cap multi-MB frames at ~300 MB/s on loopback;
            # letting the kernel autotune them measured ~1.5x that (docs/performance.md).
            "socket.receive.buffer.bytes": -1,
            "socket.send.buffer.bytes": -1,
            # One node: internal topics cannot be replicated, and one partition each keeps the
            # first consumer group / first transaction from creating 50 partitions.
            "offsets.topic.replication.factor": 1,
            "offsets.topic.num.partitions": 1,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "transaction.state.log.num.partitions": 1,
            # Tests start consumers one after another: do not wait 3 s for more members.
            "group.initial.rebalance.delay.ms": 0,
            # After a crash (kill()) the restarted broker cannot register until the old
            # registration's session expires: 3 s instead of 9 s keeps outage tests short.
            "broker.session.timeout.ms": 3000,
            "broker.heartbeat.interval.ms": 500,
            # The default 128 MiB cleaner buffer would take a quarter of the small heap.
            "log.cleaner.dedupe.buffer.size": 16 * 1024 * 1024,
        }
        if major(self.kafka_version) >= 4:
            props["share.coordinator.state.topic.replication.factor"] = 1
            props["share.coordinator.state.topic.min.isr"] = 1
        props.update(self.extra_properties)
        return props

    def _listener_properties(self) -> dict[str, object]:
        controller = f"CONTROLLER://{HOST}:{self.controller_port}"
        if self.security_files is None:
            return {
                "listeners": f"PLAINTEXT://{HOST}:{self.port},{controller}",
                "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
                "controller.listener.names": "CONTROLLER",
                "inter.broker.listener.name": "PLAINTEXT",
                "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            }
        # Clients only ever see the secured listener: a metadata response lists the
        # addresses of the listener the request came in on.
        secure = f"{SECURE_LISTENER}://{HOST}:{self.port}"
        internal = f"{INTERNAL_LISTENER}://{HOST}:{self.internal_port}"
        return {
            "listeners": f"{secure},{internal},{controller}",
            "advertised.listeners": f"{secure},{internal}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": INTERNAL_LISTENER,
            "listener.security.protocol.map": (f"{SECURE_LISTENER}:SASL_SSL,"
                                               f"{INTERNAL_LISTENER}:PLAINTEXT,"
                                               "CONTROLLER:PLAINTEXT"),
            **self.security_files.listener_properties(),
        }

    def _logging_config(self) -> tuple[Path, str, str]:
        """(path, content, JVM option) for the log4j config that sends logs to the data dir."""
        log = self.log_path
        if major(self.kafka_version) >= 4:
            text = (
                "status = warn\n"
                "appender.file.type = File\n"
                "appender.file.name = FILE\n"
                f"appender.file.fileName = {log}\n"
                "appender.file.layout.type = PatternLayout\n"
                "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
                "rootLogger.level = INFO\n"
                "rootLogger.appenderRef.file.ref = FILE\n"
                "logger.request.name = kafka.request.logger\n"
                "logger.request.level = WARN\n"
            )
            path = self.data_dir / "log4j2.properties"
            return path, text, f"-Dlog4j2.configurationFile={path}"
        text = (
            "log4j.rootLogger=INFO, file\n"
            "log4j.appender.file=org.apache.log4j.FileAppender\n"
            f"log4j.appender.file.File={log}\n"
            "log4j.appender.file.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
            "log4j.logger.kafka.request.logger=WARN\n"
        )
        path = self.data_dir / "log4j.properties"
        return path, text, f"-Dlog4j.configuration=file:{path}"

    def _jvm(self, libs: Path, log_opt: str) -> list[str]:
        return [
            find_java(),
            f"-Xmx{self.heap_max}", f"-Xms{self.heap_min}",
            "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
            "-Djava.awt.headless=true", log_opt, f"-Dkafka.logs.dir={self.log_dir}",
            *shlex.split(os.environ.get("PVAFLOW_BROKER_JVM_OPTS", "")), *self.jvm_opts,
            "-cp", str(libs / "*"),
        ]

    def _prepare(self) -> list[str]:
        """Fetch jars, write configs, format storage once; return the broker command line."""
        if (self.security_files is not None and self.cluster_id is not None
                and not self.security_files.has_credentials()):
            raise BrokerError(
                f"{self.kraft_dir} was formatted without SCRAM credentials (a plaintext "
                "broker); a secured broker needs a fresh --data-dir")
        libs = fetch_kafka(self.kafka_version, cache_root=self.cache_root)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        scram: list[str] = []
        if self.security_files is not None:
            self.security_files.ensure()
            self._write_client_files()
            scram = ["--add-scram", self.security_files.scram_argument()]
        self.properties_path.write_text(
            "# Written by pvaflow.ops.broker on every start; pass overrides as properties=...\n"
            + render_properties(self.server_properties())
        )
        cfg, text, log_opt = self._logging_config()
        cfg.write_text(text)
        jvm = self._jvm(libs, log_opt)
        if self.cluster_id is None:
            fmt = [*jvm, "kafka.tools.StorageTool", "format",
                   "-t", self._format_cluster_id(), "-c", str(self.properties_path),
                   *scram]
            proc = subprocess.run(fmt, capture_output=True, text=True, timeout=120, check=False)
            if proc.returncode != 0 or self.cluster_id is None:
                raise BrokerError(
                    f"formatting {self.kraft_dir} failed (exit {proc.returncode}):\n"
                    + tail_text(proc.stdout + proc.stderr, 30)
                )
        return [*jvm, "kafka.Kafka", str(self.properties_path)]

    def _write_client_files(self) -> None:
        """``client.properties`` and ``client.env`` for this broker's clients (a cluster
        writes its own, listing every member)."""
        if self.security_files is not None:
            self.security_files.write_client_files(self.bootstrap)

    def _format_cluster_id(self) -> str:
        """The id to format fresh storage with: a new one, unless the node joins others."""
        return new_cluster_id()

    # -- lifecycle

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> LocalBroker:
        """Start the broker and wait until it answers a metadata request; idempotent."""
        if self.is_running():
            return self
        t0 = time.monotonic()
        self.launch()
        try:
            self.wait_ready(max(1.0, self.start_timeout - (time.monotonic() - t0)))
        except BaseException:
            self.kill()
            raise
        self.last_start_seconds = time.monotonic() - t0
        return self

    def launch(self) -> None:
        """Start the JVM without waiting for it: the members of a cluster must all be up
        before any of them can answer (a controller quorum needs a majority)."""
        if self.is_running():
            return
        cmd = self._prepare()
        for port in (self.port, self.controller_port, self.internal_port):
            if port is not None and port_in_use(port):
                raise BrokerError(f"port {port} on {HOST} is already in use")
        self._out = open(self.stdout_path, "ab")  # noqa: SIM115 - lives as long as the JVM
        self._out.write(f"\n=== pvaflow broker start {time.ctime()}: {shlex.join(cmd)}\n".encode())
        self._out.flush()
        self._proc = subprocess.Popen(
            cmd, cwd=self.data_dir, stdin=subprocess.DEVNULL, stdout=self._out,
            stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent if self.die_with_parent else None,
        )
        self._finalizer = weakref.finalize(self, kill_at_exit, self._proc)

    def wait_ready(self, timeout: float) -> None:
        """Block until a metadata request returns this broker and this cluster id."""
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise BrokerError(f"Kafka exited during startup (exit {code}).\n{self.log_tail()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrokerError(
                    f"Kafka did not answer on {self.bootstrap} within {timeout:.1f} s.\n"
                    f"{self.log_tail()}"
                )
            if can_connect(self.port) and self._metadata_ok(min(left, 5.0)):
                return
            time.sleep(0.1)

    def _metadata_ok(self, timeout: float) -> bool:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({**self.client_settings(), "log_level": 0})
        try:
            md = admin.list_topics(timeout=max(timeout, 0.5))
        except KafkaException:
            return False
        return md.cluster_id == self.cluster_id and self.node_id in md.brokers

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM (controlled shutdown), then SIGKILL after ``timeout`` s; data is kept."""
        proc = self._proc
        if proc is None:
            return None
        timeout = self.stop_timeout if timeout is None else timeout
        if proc.poll() is None:
            signal_process(proc.pid, signal.SIGCONT)  # a paused JVM cannot shut down
            signal_process(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                signal_process(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self._release()
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL, like a machine crash: the next start recovers the logs."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            signal_process(proc.pid, signal.SIGKILL)
            proc.wait(10)
        self._release()
        return proc.returncode

    def _release(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._out is not None:
            self._out.close()
            self._out = None
        self._proc = None

    def restart(self) -> LocalBroker:
        self.stop()
        return self.start()

    def pause(self, timeout: float = 60.0) -> None:
        """SIGSTOP: the broker hangs with its sockets open (clients see timeouts). Returns once
        every JVM thread has stopped, so a client that asks after this gets no answer."""
        if self._proc is not None and self._proc.poll() is None:
            pid = self._proc.pid
            signal_process(pid, signal.SIGSTOP)
            deadline = time.monotonic() + timeout
            while not all_threads_stopped(pid):
                if time.monotonic() > deadline:
                    raise BrokerError(f"broker pid {pid} still running {timeout:g} s after SIGSTOP")
                time.sleep(0.01)

    def resume(self) -> None:
        """SIGCONT after ``pause()``."""
        if self._proc is not None and self._proc.poll() is None:
            signal_process(self._proc.pid, signal.SIGCONT)

    def detach(self) -> int:
        """Leave the JVM running after this object and this Python process are gone (used by
        ``pvaflow-broker start``); returns its pid."""
        if self._proc is None:
            raise BrokerError("broker is not running")
        pid = self._proc.pid
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._out is not None:
            self._out.close()
            self._out = None
        self._proc = None
        return pid

    def close(self) -> None:
        """Stop, and delete the data directory if this object created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        """The end of both logs, for error messages."""
        parts = []
        for path in (self.stdout_path, self.log_path):
            tail = tail_file(path, lines)
            if tail:
                parts.append(f"--- {path} (last {lines} lines)\n{tail}")
        return "\n".join(parts) or f"(no logs in {self.log_dir})"

    def __enter__(self) -> LocalBroker:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.is_running() else "stopped"
        secured = ", sasl_ssl" if self.secured else ""
        return (f"LocalBroker({self.bootstrap}{secured}, kafka {self.kafka_version}, "
                f"{self.data_dir}, {state})")


@contextlib.contextmanager
def external_or_local(data_dir: str | os.PathLike[str] | None = None
                      ) -> Iterator[tuple[str, LocalBroker | None]]:
    """``$PVAFLOW_BOOTSTRAP`` when set, else a LocalBroker for the duration of the block;
    yields the bootstrap address and the broker (None when external)."""
    external = os.environ.get("PVAFLOW_BOOTSTRAP")
    if external:
        yield external, None
        return
    with LocalBroker(data_dir) as broker:
        yield broker.bootstrap, broker
