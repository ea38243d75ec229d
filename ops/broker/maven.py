"""Resolution of the Kafka jars from Maven Central into a per-version cache.

Why Maven rather than the Kafka tarball: a JDK and Maven are all a development machine needs,
Maven picks the exact dependency set of the release, and its local repository doubles as an
offline mirror (``PVAFLOW_MAVEN_ARGS=-o``).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import BrokerError
from .procs import tail_text

DEFAULT_KAFKA_VERSION = "4.1.1"
LOG4J2_VERSION = "2.24.3"
SLF4J_VERSION = "1.7.36"
RELOAD4J_VERSION = "1.2.25"

VERSION_RE = re.compile(r"^\d+\.\d+(\.\d+)?([.-][A-Za-z0-9]+)*$")
_MARKER = "resolved.json"
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")  # Maven colours its output even with -B


def default_cache_root() -> Path:
    """``$PVAFLOW_CACHE`` or ``~/.cache/pvaflow``: shared by all checkouts and test runs."""
    env = os.environ.get("PVAFLOW_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pvaflow"


def default_kafka_version() -> str:
    """``$KAFKA_VERSION`` if set, else the version pvaflow is tested against."""
    return os.environ.get("KAFKA_VERSION") or DEFAULT_KAFKA_VERSION


def check_version(version: str) -> str:
    """The version, unchanged, if it looks like one: it becomes part of cache paths."""
    if not VERSION_RE.match(version):
        raise BrokerError(f"not a Kafka version: {version!r} (expected e.g. 4.1.1 or 3.9.1)")
    return version


def major(version: str) -> int:
    return int(check_version(version).split(".", 1)[0])


def kafka_libs_dir(version: str, cache_root: Path | None = None) -> Path:
    """Where the jars of one Kafka version live: ``<cache>/kafka-<version>/libs``."""
    root = cache_root if cache_root is not None else default_cache_root()
    return root / f"kafka-{check_version(version)}" / "libs"


def maven_artifacts(version: str) -> list[tuple[str, str, str]]:
    """Kafka plus the SLF4J binding its own distribution ships (log4j2 for 4.x, reload4j for
    3.x); without a binding the broker logs nothing, which makes failures undiagnosable."""
    arts = [("org.apache.kafka", "kafka_2.13", version)]
    if major(version) >= 4:
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
    version = check_version(version or default_kafka_version())
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
                out = tail_text(_ANSI_RE.sub("", proc.stdout + proc.stderr), 30)
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
