"""A real single-node Apache Kafka broker (KRaft, combined mode) on 127.0.0.1.

Why this exists: pvaflow's integration tests and demo must run against real Kafka, never a
mock, on machines without Docker or a Kafka install. Maven and a JDK are enough: the broker's
jars are resolved from Maven Central once (``org.apache.kafka:kafka_2.13`` plus a logging
binding), cached, and the broker is started straight from them with ``kafka.Kafka``.

Python use::

    with LocalBroker() as broker:          # temp data dir, free port, stopped on exit
        produce_to(broker.bootstrap)
        broker.stop(); broker.start()      # outage with data kept, same port

Command line (``pvaflow-broker`` / ``python -m pvaflow.ops.broker`` / ``scripts/kafka-local``)::

    pvaflow-broker fetch                   # resolve the jars, print where they are
    pvaflow-broker run [--port 9092]       # foreground until Ctrl-C
    pvaflow-broker start / stop / status   # background broker tracked by a state file

Environment: ``KAFKA_VERSION`` (default 4.1.1; 3.x works too), ``PVAFLOW_CACHE`` (cache root,
default ``~/.cache/pvaflow``), ``PVAFLOW_MAVEN_ARGS`` (extra Maven arguments, e.g.
``-o -Dmaven.repo.local=/path``), ``MAVEN_REPO_LOCAL`` (shortcut for the latter),
``PVAFLOW_KAFKA_OPTS`` (extra JVM options), ``JAVA_HOME``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

from pvaflow.process import die_with_parent, free_port

__all__ = [
    "DEFAULT_KAFKA_VERSION",
    "BrokerError",
    "LocalBroker",
    "default_cache_root",
    "fetch_kafka",
    "free_port",
    "kafka_libs_dir",
    "main",
    "new_cluster_id",
]

DEFAULT_KAFKA_VERSION = "4.1.1"
LOG4J2_VERSION = "2.24.3"
SLF4J_VERSION = "1.7.36"
RELOAD4J_VERSION = "1.2.25"
HOST = "127.0.0.1"
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
"""Largest record batch the broker accepts: detector frames are several MiB each."""

_MARKER = "resolved.json"
_STATE = "broker.json"
_VERSION_RE = re.compile(r"^\d+\.\d+(\.\d+)?([.-][A-Za-z0-9]+)*$")
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")  # Maven colours its output even with -B


class BrokerError(RuntimeError):
    """The broker could not be fetched, started or stopped; the message says why."""


# --------------------------------------------------------------------------------------------
# Jar resolution


def default_cache_root() -> Path:
    """``$PVAFLOW_CACHE`` or ``~/.cache/pvaflow``: shared by all checkouts and test runs."""
    env = os.environ.get("PVAFLOW_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pvaflow"


def default_kafka_version() -> str:
    """``$KAFKA_VERSION`` if set, else the version pvaflow is tested against."""
    return os.environ.get("KAFKA_VERSION") or DEFAULT_KAFKA_VERSION


def _check_version(version: str) -> str:
    if not _VERSION_RE.match(version):
        raise BrokerError(f"not a Kafka version: {version!r} (expected e.g. 4.1.1 or 3.9.1)")
    return version


def _major(version: str) -> int:
    return int(_check_version(version).split(".", 1)[0])


def kafka_libs_dir(version: str, cache_root: Path | None = None) -> Path:
    """Where the jars of one Kafka version live: ``<cache>/kafka-<version>/libs``."""
    root = cache_root if cache_root is not None else default_cache_root()
    return root / f"kafka-{_check_version(version)}" / "libs"


def maven_artifacts(version: str) -> list[tuple[str, str, str]]:
    """Kafka plus the SLF4J binding its own distribution ships (log4j2 for 4.x, reload4j for
    3.x); without a binding the broker logs nothing, which makes failures undiagnosable."""
    arts = [("org.apache.kafka", "kafka_2.13", version)]
    if _major(version) >= 4:
        arts += [
            ("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J2_VERSION),
            ("org.apache.logging.log4j", "log4j-core", LOG4J2_VERSION),
        ]
    else:
        arts += [
            ("org.slf4j", "slf4j-reload4j", SLF4J_VERSION),
            ("ch.qos.reload4j", "reload4j", RELOAD4J_VERSION),
        ]
    return arts


def _pom(artifacts: Sequence[tuple[str, str, str]]) -> str:
    deps = "\n".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>"
        for g, a, v in artifacts
    )
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        "  <modelVersion>4.0.0</modelVersion>\n"
        "  <groupId>local.pvaflow</groupId><artifactId>kafka-libs</artifactId>"
        "<version>1</version><packaging>pom</packaging>\n"
        f"  <dependencies>\n{deps}\n  </dependencies>\n</project>\n"
    )


def _maven_extra_args() -> list[str]:
    args = shlex.split(os.environ.get("PVAFLOW_MAVEN_ARGS", ""))
    repo = os.environ.get("MAVEN_REPO_LOCAL")
    if repo and not any(a.startswith("-Dmaven.repo.local=") for a in args):
        args.append(f"-Dmaven.repo.local={repo}")
    return args


def _resolved(libs: Path, marker: Path, coords: list[str]) -> bool:
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return recorded.get("artifacts") == coords and any(libs.glob("kafka_2.13-*.jar"))


def fetch_kafka(
    version: str | None = None,
    *,
    cache_root: Path | None = None,
    force: bool = False,
    timeout: float = 900.0,
) -> Path:
    """Resolve the broker's jars into the cache with Maven and return the libs directory.

    Idempotent and safe to call concurrently: a marker file records what was resolved, a file
    lock serialises resolvers, and jars are copied to a scratch directory that is renamed into
    place only after Maven succeeded, so a killed run never leaves a half-filled cache.
    """
    version = _check_version(version or default_kafka_version())
    libs = kafka_libs_dir(version, cache_root)
    home = libs.parent
    marker = home / _MARKER
    arts = maven_artifacts(version)
    coords = [":".join(a) for a in arts]
    if not force and _resolved(libs, marker, coords):
        return libs
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and _resolved(libs, marker, coords):
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError("Maven ('mvn') is not on PATH; it is needed once to fetch Kafka")
        pom = home / "pom.xml"
        pom.write_text(_pom(arts))
        scratch = Path(tempfile.mkdtemp(prefix="libs.partial-", dir=home))
        cmd = [
            mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
            f"-DoutputDirectory={scratch}", "-DincludeScope=runtime", "-Dstyle.color=never",
            *_maven_extra_args(),
        ]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, check=False,
            )
            if proc.returncode != 0 or not any(scratch.glob("kafka_2.13-*.jar")):
                out = _tail_text(_ANSI_RE.sub("", proc.stdout + proc.stderr), 30)
                raise BrokerError(
                    f"Maven could not resolve Kafka {version} (exit {proc.returncode}):\n"
                    f"  {shlex.join(cmd)}\n{out}"
                )
            marker.unlink(missing_ok=True)
            if libs.exists():
                shutil.rmtree(libs)
            scratch.rename(libs)
            marker.write_text(json.dumps(
                {"artifacts": coords, "resolved_at": time.time()}, indent=1) + "\n")
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(f"Maven did not finish within {timeout:.0f} s") from exc
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return libs


# --------------------------------------------------------------------------------------------
# Small helpers


def _port_in_use(port: int, host: str = HOST) -> bool:
    # SO_REUSEADDR like the JVM's server sockets, so TIME_WAIT left by our own previous run
    # does not count as "in use" (a restart must get the same port back).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _can_connect(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def new_cluster_id() -> str:
    """A Kafka cluster id (URL-safe base64 of a random UUID), made without starting a JVM.

    Like Kafka's own ``Uuid.randomUuid`` it never starts with '-', which command-line parsers
    would take for an option."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _tail_text(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _tail_file(path: Path, lines: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read().decode(errors="replace")
    except OSError:
        return ""
    return _tail_text(data, lines)


def _find_java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise BrokerError("no 'java' on PATH and no JAVA_HOME: Kafka needs a JDK/JRE 17+")
    return java


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes (its parent may never reap it)
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _signal_process(pid: int, sig: int) -> None:
    """Signal the process group if the process leads one (we start it that way), else it."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _render_properties(props: Mapping[str, object]) -> str:
    return "".join(f"{k}={v}\n" for k, v in props.items())


def _kill_at_exit(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            _signal_process(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


# --------------------------------------------------------------------------------------------
# The broker


class LocalBroker:
    """One KRaft broker+controller process bound to 127.0.0.1.

    The data directory holds everything: ``server.properties``, the log4j config,
    ``kraft/`` (topic data), ``logs/server.log`` (broker log) and ``logs/kafka.out`` (JVM
    stdout/stderr). ``stop()``/``start()`` keep the data and the port, so tests can simulate a
    broker outage; ``kill()`` simulates a crash; ``pause()``/``resume()`` (SIGSTOP/SIGCONT)
    simulate a hung broker whose connections stay open. With ``data_dir=None`` a temporary
    directory is used and removed by ``close()``/``__exit__``.

    ``die_with_parent=True`` makes the kernel kill the JVM when the starting *thread* exits
    (PR_SET_PDEATHSIG): right for test fixtures, wrong for a broker started from a worker
    thread that ends early.
    """

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
    ) -> None:
        self.kafka_version = _check_version(kafka_version or default_kafka_version())
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
            "node.id": 1,
            # Static quorum: works unchanged on 3.x and 4.x, needs no --standalone at format
            # time, and tolerates a different controller port on a later start.
            "controller.quorum.voters": f"1@{HOST}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
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
        if _major(self.kafka_version) >= 4:
            props["share.coordinator.state.topic.replication.factor"] = 1
            props["share.coordinator.state.topic.min.isr"] = 1
        props.update(self.extra_properties)
        return props

    def _logging_config(self) -> tuple[Path, str, str]:
        """(path, content, JVM option) for the log4j config that sends logs to the data dir."""
        log = self.log_path
        if _major(self.kafka_version) >= 4:
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
            _find_java(),
            f"-Xmx{self.heap_max}", f"-Xms{self.heap_min}",
            "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
            "-Djava.awt.headless=true", log_opt, f"-Dkafka.logs.dir={self.log_dir}",
            *shlex.split(os.environ.get("PVAFLOW_KAFKA_OPTS", "")), *self.jvm_opts,
            "-cp", str(libs / "*"),
        ]

    def _prepare(self) -> list[str]:
        """Fetch jars, write configs, format storage once; return the broker command line."""
        libs = fetch_kafka(self.kafka_version, cache_root=self.cache_root)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        self.properties_path.write_text(
            "# Written by pvaflow.ops.broker on every start; pass overrides as properties=...\n"
            + _render_properties(self.server_properties())
        )
        cfg, text, log_opt = self._logging_config()
        cfg.write_text(text)
        jvm = self._jvm(libs, log_opt)
        if self.cluster_id is None:
            fmt = [*jvm, "kafka.tools.StorageTool", "format",
                   "-t", new_cluster_id(), "-c", str(self.properties_path)]
            proc = subprocess.run(fmt, capture_output=True, text=True, timeout=120, check=False)
            if proc.returncode != 0 or self.cluster_id is None:
                raise BrokerError(
                    f"formatting {self.kraft_dir} failed (exit {proc.returncode}):\n"
                    + _tail_text(proc.stdout + proc.stderr, 30)
                )
        return [*jvm, "kafka.Kafka", str(self.properties_path)]

    # -- lifecycle

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> LocalBroker:
        """Start the broker and wait until it answers a metadata request; idempotent."""
        if self.is_running():
            return self
        t0 = time.monotonic()
        cmd = self._prepare()
        for port in (self.port, self.controller_port):
            if _port_in_use(port):
                raise BrokerError(f"port {port} on {HOST} is already in use")
        self._out = open(self.stdout_path, "ab")  # noqa: SIM115 - lives as long as the JVM
        self._out.write(f"\n=== pvaflow broker start {time.ctime()}: {shlex.join(cmd)}\n".encode())
        self._out.flush()
        self._proc = subprocess.Popen(
            cmd, cwd=self.data_dir, stdin=subprocess.DEVNULL, stdout=self._out,
            stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent if self.die_with_parent else None,
        )
        self._finalizer = weakref.finalize(self, _kill_at_exit, self._proc)
        try:
            self.wait_ready(max(1.0, self.start_timeout - (time.monotonic() - t0)))
        except BaseException:
            self.kill()
            raise
        self.last_start_seconds = time.monotonic() - t0
        return self

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
            if _can_connect(self.port) and self._metadata_ok(min(left, 5.0)):
                return
            time.sleep(0.1)

    def _metadata_ok(self, timeout: float) -> bool:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        try:
            md = admin.list_topics(timeout=max(timeout, 0.5))
        except KafkaException:
            return False
        return md.cluster_id == self.cluster_id and 1 in md.brokers

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM (controlled shutdown), then SIGKILL after ``timeout`` s; data is kept."""
        proc = self._proc
        if proc is None:
            return None
        timeout = self.stop_timeout if timeout is None else timeout
        if proc.poll() is None:
            _signal_process(proc.pid, signal.SIGCONT)  # a paused JVM cannot shut down
            _signal_process(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_process(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self._release()
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL, like a machine crash: the next start recovers the logs."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            _signal_process(proc.pid, signal.SIGKILL)
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

    def pause(self) -> None:
        """SIGSTOP: the broker hangs with its sockets open (clients see timeouts)."""
        if self._proc is not None and self._proc.poll() is None:
            _signal_process(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause()``."""
        if self._proc is not None and self._proc.poll() is None:
            _signal_process(self._proc.pid, signal.SIGCONT)

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
            tail = _tail_file(path, lines)
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
        return (f"LocalBroker({self.bootstrap}, kafka {self.kafka_version}, "
                f"{self.data_dir}, {state})")


# --------------------------------------------------------------------------------------------
# Command line


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


def _state_path(data_dir: Path) -> Path:
    return data_dir / _STATE


def _read_state(data_dir: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(_state_path(data_dir).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _is_our_broker(pid: int, data_dir: Path) -> bool:
    """Guard against pid reuse: the process must be kafka.Kafka on this data dir."""
    if not _pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    props = str(data_dir / "server.properties").encode()
    return b"kafka.Kafka" in cmdline and props in cmdline


def _write_state(broker: LocalBroker, pid: int) -> None:
    state = {
        "pid": pid,
        "bootstrap": broker.bootstrap,
        "port": broker.port,
        "controller_port": broker.controller_port,
        "kafka_version": broker.kafka_version,
        "log": str(broker.log_path),
        "stdout": str(broker.stdout_path),
        "started_at": time.time(),
    }
    tmp = _state_path(broker.data_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.replace(_state_path(broker.data_dir))


def _clear_state(data_dir: Path) -> None:
    _state_path(data_dir).unlink(missing_ok=True)


def _running_pid(data_dir: Path) -> tuple[int, dict[str, Any]] | None:
    state = _read_state(data_dir)
    if state is None or not isinstance(state.get("pid"), int):
        return None
    if not _is_our_broker(state["pid"], data_dir):
        return None
    return state["pid"], state


def _line(state: Mapping[str, Any]) -> str:
    return f"bootstrap={state['bootstrap']} pid={state['pid']} log={state['log']}"


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error instead of usage + error (scripts grep stderr)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {text!r}")
    return value


def _version(text: str) -> str:
    if not _VERSION_RE.match(text):
        raise argparse.ArgumentTypeError(f"not a Kafka version: {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pvaflow-broker",
        description=(
            "Run a real single-node Apache Kafka broker (KRaft) on 127.0.0.1 for pvaflow\n"
            "development, tests and demos. Jars come from Maven Central (needs mvn and java)\n"
            "and are cached under $PVAFLOW_CACHE (default ~/.cache/pvaflow)."
        ),
        epilog=(
            "examples:\n"
            "  pvaflow-broker run                 # foreground on 127.0.0.1:9092, Ctrl-C stops\n"
            "  pvaflow-broker start --port 0      # background on a free port\n"
            "  export PVAFLOW_BOOTSTRAP=$(pvaflow-broker status --bootstrap)\n"
            "  pvaflow-broker stop"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def common(p: argparse.ArgumentParser, *, ports: bool, timeout: float | None) -> None:
        p.add_argument("--kafka-version", type=_version, default=None,
                       help=f"Kafka version ($KAFKA_VERSION, default {DEFAULT_KAFKA_VERSION})")
        p.add_argument("--cache-dir", type=Path, default=None,
                       help="cache root for jars ($PVAFLOW_CACHE, default ~/.cache/pvaflow)")
        if ports or timeout is not None:
            p.add_argument("--data-dir", type=Path, default=None,
                           help="broker data + logs (default <cache>/broker-<version>)")
        if ports:
            p.add_argument("--port", type=_port, default=9092,
                           help="client port on 127.0.0.1 (default 9092; 0 = any free port)")
            p.add_argument("--controller-port", type=_port, default=0,
                           help="KRaft controller port (default 0 = any free port)")
        if timeout is not None:
            p.add_argument("--timeout", type=_positive, default=timeout,
                           help=f"seconds to wait (default {timeout:g})")

    p = sub.add_parser("fetch", help="resolve the Kafka jars with Maven and print where they are")
    common(p, ports=False, timeout=None)
    p.add_argument("--force", action="store_true", help="resolve again even if cached")
    p = sub.add_parser("run", help="run in the foreground until SIGINT/SIGTERM")
    common(p, ports=True, timeout=60.0)
    p = sub.add_parser("start", help="start in the background and record it in the data dir")
    common(p, ports=True, timeout=60.0)
    p = sub.add_parser("stop", help="stop the background broker recorded in the data dir")
    common(p, ports=False, timeout=20.0)
    p = sub.add_parser("status", help="print the recorded broker; exit 1 if it is not running")
    common(p, ports=False, timeout=20.0)
    p.add_argument("--bootstrap", action="store_true", help="print only host:port")
    return parser


def _data_dir(args: argparse.Namespace) -> Path:
    if args.data_dir is not None:
        return Path(args.data_dir).resolve()
    root = args.cache_dir if args.cache_dir is not None else default_cache_root()
    return root / f"broker-{args.kafka_version or default_kafka_version()}"


def _make_broker(args: argparse.Namespace, data_dir: Path) -> LocalBroker:
    return LocalBroker(
        data_dir, args.port or None, controller_port=args.controller_port or None,
        kafka_version=args.kafka_version, cache_root=args.cache_dir,
        start_timeout=args.timeout,
    )


def _cmd_run(args: argparse.Namespace, data_dir: Path) -> int:
    if (running := _running_pid(data_dir)) is not None:
        raise BrokerError(f"a broker already runs on {data_dir}: {_line(running[1])}")
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    broker = _make_broker(args, data_dir)
    try:
        broker.start()
        assert broker.pid is not None
        _write_state(broker, broker.pid)
        print(f"bootstrap={broker.bootstrap} pid={broker.pid} log={broker.log_path}", flush=True)
        print(f"started in {broker.last_start_seconds:.1f} s; Ctrl-C stops", file=sys.stderr)
        while not stop.wait(0.5):
            if not broker.is_running():
                print(f"pvaflow-broker: error: Kafka exited unexpectedly\n{broker.log_tail()}",
                      file=sys.stderr)
                return 1
        print("stopping...", file=sys.stderr, flush=True)
        return 0
    finally:
        broker.stop()
        _clear_state(data_dir)
        for s, h in old.items():
            signal.signal(s, h)


def _cmd_start(args: argparse.Namespace, data_dir: Path) -> int:
    if (running := _running_pid(data_dir)) is not None:
        print(f"already running: {_line(running[1])}")
        return 0
    broker = _make_broker(args, data_dir)
    broker.start()
    pid = broker.detach()
    _write_state(broker, pid)
    print(f"bootstrap={broker.bootstrap} pid={pid} log={broker.log_path}", flush=True)
    return 0


def _stop_pid(pid: int, timeout: float) -> None:
    _signal_process(pid, signal.SIGCONT)
    _signal_process(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            _signal_process(pid, signal.SIGKILL)
            end = time.monotonic() + 10
            while _pid_alive(pid) and time.monotonic() < end:
                time.sleep(0.1)
            break
        time.sleep(0.1)


def _cmd_stop(args: argparse.Namespace, data_dir: Path) -> int:
    running = _running_pid(data_dir)
    if running is None:
        _clear_state(data_dir)
        print(f"no broker running on {data_dir}", file=sys.stderr)
        return 0
    pid, state = running
    _stop_pid(pid, args.timeout)
    if _pid_alive(pid):
        raise BrokerError(f"pid {pid} survived SIGKILL")
    _clear_state(data_dir)
    print(f"stopped pid={pid} ({state['bootstrap']})")
    return 0


def _cmd_status(args: argparse.Namespace, data_dir: Path) -> int:
    running = _running_pid(data_dir)
    if running is None:
        print(f"no broker running on {data_dir}", file=sys.stderr)
        return 1
    print(running[1]["bootstrap"] if args.bootstrap else _line(running[1]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pvaflow-broker``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "fetch":
            t0 = time.monotonic()
            libs = fetch_kafka(args.kafka_version, cache_root=args.cache_dir, force=args.force)
            n = len(list(libs.glob("*.jar")))
            print(libs)
            print(f"{n} jars, {time.monotonic() - t0:.1f} s", file=sys.stderr)
            return 0
        data_dir = _data_dir(args)
        commands: dict[str, Callable[[argparse.Namespace, Path], int]] = {
            "run": _cmd_run, "start": _cmd_start, "stop": _cmd_stop, "status": _cmd_status,
        }
        return commands[args.command](args, data_dir)
    except BrokerError as exc:
        print(f"pvaflow-broker: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
