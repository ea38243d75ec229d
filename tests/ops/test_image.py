"""The container image ``make image`` builds (buildah), run as it would run in a pod.

The image's root filesystem (``buildah from`` + ``buildah mount``) is bind-mounted read-only
in a private mount namespace (``unshare``), a writable directory goes to ``/tmp`` (the chart's
emptyDir), and the entry point runs under ``chroot --userspec`` as the image's USER, with the
image's environment and working directory and the host's network (the test broker is on
127.0.0.1). No container runtime is needed, only root, buildah and util-linux; without them
(or without the image) these tests skip with a pointer to ``make tools`` / ``make image``,
except under CI, where ``make test`` has built the image and a missing piece fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer

import pvaflow
from pvaflow.codec import decode, encode
from pvaflow.testing import make_frames

from .conftest import missing

IMAGE = os.environ.get("PVAFLOW_IMAGE", "localhost/pvaflow:latest")
UID = 10001

# Runs in the new mount namespace: $1 image rootfs, $2 writable dir for /tmp, $3 user:group,
# then the command. The rootfs is bound read-only; /dev, /proc and the host's name files are
# bound in (mount points over a read-only tree are fine); chroot drops to the user.
RUN_SCRIPT = """set -eu
root="$1"; tmp="$2"; user="$3"; shift 3
mnt="$(mktemp -d)"
mount --bind "$root" "$mnt"
mount -o remount,bind,ro "$mnt"
mount --bind "$tmp" "$mnt/tmp"
mount --rbind /dev "$mnt/dev"
mount --rbind /proc "$mnt/proc"
for f in /etc/hosts /etc/resolv.conf; do
    if [ -e "$mnt$f" ] && [ -e "$f" ]; then mount --bind "$f" "$mnt$f"; fi
done
exec chroot --userspec="$user" "$mnt" "$@"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Image:
    """The image's configuration and a mounted copy of its root filesystem."""

    def __init__(self, rootfs: Path, config: dict[str, Any]) -> None:
        self.rootfs, self.config = rootfs, config

    @property
    def env(self) -> dict[str, str]:
        return dict(e.split("=", 1) for e in self.config.get("Env", []))

    def command(self, args: Sequence[str], tmp: Path, *, user: str | None = None,
                entrypoint: Sequence[str] | None = None,
                env: dict[str, str] | None = None) -> list[str]:
        """argv running ``entrypoint args`` in the image, as a container runtime would."""
        entry = list(self.config.get("Entrypoint") or []) if entrypoint is None else entrypoint
        full_env = {**self.env, **(env or {})}
        workdir = self.config.get("WorkingDir") or "/"
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", RUN_SCRIPT, "sh",
                str(self.rootfs), str(tmp), user or self.config.get("User") or "0:0",
                "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in full_env.items()),
                "sh", "-c", 'cd "$0" && exec "$@"', workdir, *entry, *args]

    def run(self, args: Sequence[str], tmp: Path, timeout: float = 120,
            **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(args, tmp, **kwargs), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    if os.geteuid() != 0:
        missing("running the image needs root (mount namespace, chroot)")
    for tool in ("buildah", "unshare", "chroot"):
        if shutil.which(tool) is None:
            missing(f"{tool} is missing: run `make tools`")
    inspect = subprocess.run(["buildah", "inspect", "--type", "image", IMAGE],
                             capture_output=True, text=True, timeout=60)
    if inspect.returncode != 0:
        why = (inspect.stderr.strip().splitlines() or ["buildah inspect failed"])[-1]
        missing(f"image {IMAGE} is missing: run `make image` ({why})")
    config = json.loads(inspect.stdout)["OCIv1"]["config"]
    name = f"pvaflow-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["buildah", "from", "--pull-never", "--name", name, IMAGE],
                   check=True, capture_output=True, timeout=120)
    try:
        mount = subprocess.run(["buildah", "mount", name], check=True, capture_output=True,
                               text=True, timeout=60)
        yield Image(Path(mount.stdout.strip()), config)
    finally:
        subprocess.run(["buildah", "umount", name], capture_output=True, timeout=60)
        subprocess.run(["buildah", "rm", name], capture_output=True, timeout=60)


@pytest.fixture
def writable_tmp(tmp_path: Path) -> Path:
    """The pod's emptyDir: a host directory the image's user may write, mounted at /tmp."""
    d = tmp_path / "container-tmp"
    d.mkdir()
    d.chmod(0o1777)
    return d


@pytest.fixture
def pva_ports() -> dict[str, str]:
    """The session's loopback pvAccess settings and a TCP port of its own (the consumer
    serves PVA status; the host network is shared)."""
    env = {k: v for k, v in os.environ.items() if k.startswith("EPICS_")}
    port = str(free_port())
    return {**env, "EPICS_PVA_SERVER_PORT": port, "EPICS_PVAS_SERVER_PORT": port}


def test_image_runs_as_uid_10001_with_pvaflow_as_entry_point(image: Image) -> None:
    c = image.config
    assert c["User"] == f"{UID}:{UID}"
    assert c["Entrypoint"] == ["pvaflow"]
    assert c["WorkingDir"] == "/tmp"
    assert image.env["HOME"] == "/tmp" and image.env["TMPDIR"] == "/tmp"


def test_version_on_a_read_only_root_as_non_root(image: Image, writable_tmp: Path) -> None:
    r = image.run(["--version"], writable_tmp)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"pvaflow {pvaflow.__version__}"
    assert "Traceback" not in r.stderr
    probe = ("id -u; id -g; touch /opt/pvaflow/probe 2>&1 || true; "
             "touch /probe 2>&1 || true; python3 -c 'import tempfile; print(tempfile.gettempdir())'"
             " && touch /tmp/written && echo $HOME $(pwd)")
    r = image.run(["-c", probe], writable_tmp, entrypoint=["sh"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0:2] == [str(UID), str(UID)], r.stdout
    assert "Read-only file system" in lines[2] and "Read-only file system" in lines[3], r.stdout
    assert lines[4:] == ["/tmp", "/tmp /tmp"], r.stdout
    assert (writable_tmp / "written").stat().st_uid == UID


class Running:
    """A command in the image in the background (stopped by pid at teardown)."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        self._fh = open(log, "wb")  # noqa: SIM115 - closed in stop()
        # unshare, sh, chroot, env and sh all exec: the pid is the component's
        self.popen = subprocess.Popen(argv, stdout=self._fh, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        self._fh.close()
        return self.popen.returncode


@pytest.fixture
def start(image: Image, writable_tmp: Path, tmp_path: Path) -> Iterator[Callable[..., Running]]:
    procs: list[Running] = []

    def factory(*args: str, env: dict[str, str] | None = None, name: str = "c") -> Running:
        p = Running(image.command(args, writable_tmp, env=env), tmp_path / f"{name}.log")
        procs.append(p)
        return p

    yield factory
    for p in procs:
        p.stop()


def wait_for(cond: Callable[[], bool], timeout: float, proc: Running, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.popen.poll() is not None:
            pytest.fail(f"exited ({proc.popen.returncode}) before {what}:\n{proc.text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout:.0f} s:\n{proc.text()}")
        time.sleep(0.2)


def test_consumer_in_the_image_processes_frames_from_the_host_broker(
    start: Callable[..., Running], kafka_bootstrap: str, make_topic: Callable[..., str],
    pva_ports: dict[str, str], writable_tmp: Path,
) -> None:
    src, out = make_topic(suffix="in"), make_topic(suffix="out")
    frames = make_frames(5, (32, 24), "uint16")
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for seq, f in enumerate(frames):
        key, value, headers = encode(f, sequence=seq)
        producer.produce(src, cast(bytes, value), key, headers=headers)
    assert producer.flush(30) == 0

    proc = start("consumer", "--bootstrap-servers", kafka_bootstrap, "--input-topic", src,
                 "--output-topic", out, "--processor", "passthrough", "--runtime", "240",
                 "--control-topic", "", "--status-topic", "", env=pva_ports)
    reader = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"read-{out}",
                       "auto.offset.reset": "earliest", "enable.auto.commit": False})
    reader.subscribe([out])
    got: dict[int, Any] = {}
    try:
        def all_out() -> bool:
            msg = reader.poll(0.5)
            if msg is not None and msg.error() is None:
                f = decode(msg.key(), msg.value(), msg.headers())
                got[f.unique_id] = f
            return len(got) == len(frames)
        wait_for(all_out, 180, proc, "processed frames on the output topic")
    finally:
        reader.close()
    for f in frames:
        np.testing.assert_array_equal(got[f.unique_id].array, f.array)
    assert proc.stop() == 0, proc.text()
    assert "Traceback" not in proc.text()


def test_monitor_keeps_its_data_dir_under_tmp_on_a_read_only_root(
    start: Callable[..., Running], kafka_bootstrap: str, make_topic: Callable[..., str],
    writable_tmp: Path,
) -> None:
    status = make_topic(suffix="status")
    app_id = f"image-monitor-{uuid.uuid4().hex[:8]}"
    port = free_port()
    proc = start("monitor", "--bootstrap-servers", kafka_bootstrap, "--status-topic", status,
                 "--app-id", app_id, "--web-port", str(port), "--runtime", "240",
                 name="monitor")

    def serving() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False
    wait_for(serving, 180, proc, "monitor answering /status")
    assert (writable_tmp / "pvaflow-monitor" / app_id).is_dir()
    assert proc.stop() == 0, proc.text()
    assert "Traceback" not in proc.text()
