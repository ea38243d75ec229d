"""pvapy's ``pvapy-ad-sim-server`` on loopback: the PVA source of the demo, tests and benchmarks.

Everything listens on 127.0.0.1; the EPICS search settings are applied process-wide once
because pvapy reads them when the process creates its first channel.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from pvaflow.process import die_with_parent, free_port

# pvapy-ad-sim-server starts its frame generator thread and, ``-std`` seconds later, its
# publisher. With ``-std 0`` the publisher can run before the generator has cached frame 0:
# ``getFrameFromCache`` raises ``KeyError: 0`` in the publisher's timer thread and the server
# listens but never publishes a frame. Random frames of test size are generated in
# milliseconds and one HDF5 chunk is read in well under a second, so a second is a wide
# margin; ``sim_args`` never passes less. (Not a readiness signal: wait for frames with
# :meth:`SimServer.wait_for_frames` when a test needs them.)
MIN_START_DELAY = 1.0

# A gated server (``sim_args(gated=True)``) publishes its first frame on
# :meth:`SimServer.release`, or after this many seconds if nobody releases it.
GATE_TIMEOUT = 300.0
GATED = "pvaflow.ops.sim_gate"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loopback_env(search_port: int | None = None) -> dict[str, str]:
    """EPICS settings confining pvAccess clients and servers to 127.0.0.1."""
    udp = str(search_port or free_udp_port())
    return {
        "EPICS_PVA_ADDR_LIST": "127.0.0.1",
        "EPICS_PVA_AUTO_ADDR_LIST": "NO",
        "EPICS_PVA_BROADCAST_PORT": udp,
        "EPICS_PVAS_BROADCAST_PORT": udp,
        "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_PVAS_BEACON_ADDR_LIST": "127.0.0.1",
    }


def ca_loopback_env(server_port: int | None = None) -> dict[str, str]:
    """EPICS Channel Access settings for a sim server serving CA metadata PVs (``-mpv
    ca://NAME``, an IOC embedded in the server) and its clients, on 127.0.0.1 and on a port of
    their own. Also points the embedded IOC at pvapy's dbd files, which it cannot find in a
    pip install. Apply to the server and to the CA clients (before their first CA channel)."""
    port = server_port or free_port()
    env = {
        "EPICS_CA_ADDR_LIST": "127.0.0.1", "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CA_SERVER_PORT": str(port), "EPICS_CA_REPEATER_PORT": str(free_udp_port()),
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1", "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
    }
    try:
        import pvaccess
    except ImportError:
        return env
    dbd = Path(pvaccess.__file__).parent / "dbd"
    if dbd.is_dir():
        env["EPICS_DB_INCLUDE_PATH"] = str(dbd)
    return env


def tcp_listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether some socket listens on host:port (IPv4), read from /proc/net/tcp.

    Never probe a pvAccess server by connecting to it: with pvapy 5.6 a bare TCP
    connect-and-close wedges the server, and later clients time out forever."""
    want = f"{socket.htonl(int.from_bytes(socket.inet_aton(host), 'big')):08X}:{port:04X}"
    any_addr = f"00000000:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if len(fields) > 3 and fields[3] == "0A" and fields[1] in (want, any_addr):
            return True
    return False


def sim_server_exe() -> str:
    exe = Path(sys.executable).parent / "pvapy-ad-sim-server"
    if exe.exists():
        return str(exe)
    found = shutil.which("pvapy-ad-sim-server")
    if found is None:
        raise FileNotFoundError("pvapy-ad-sim-server not found next to python or on PATH")
    return found


def sim_args(
    channel: str, *, nx: int = 64, ny: int = 64, datatype: str = "uint8", fps: float = 10.0,
    runtime: float = 3600.0, n_frames: int = 10, total_frames: int | None = None,
    start_delay: float = MIN_START_DELAY, report_period: int = 0, color_mode: int = 0,
    input_file: str | Path | None = None, hdf5_dataset: str | None = None,
    hdf5_compressed: bool = False, metadata_pvs: Sequence[str] = (),
    extra_args: Sequence[str] = (), gated: bool = False,
) -> list[str]:
    """Command line for the sim server. ``n_frames`` distinct frames are published
    round-robin until ``runtime``; ``total_frames=N`` publishes exactly N, then exits.

    File mode: ``input_file`` streams the frames of that file instead of random ones (``nx``,
    ``ny``, ``datatype`` then come from the file); an HDF5 file needs ``hdf5_dataset``, and
    ``hdf5_compressed`` streams its compressed chunks as they are stored (``-hcm``: bslz4,
    lz4 or blosc NTNDArrays, as a compressing detector serves them).

    ``metadata_pvs`` (``-mpv``): ``pva://NAME`` or ``ca://NAME`` records set to a random value
    just before each frame, stamped with the frame's time (PVA) or the put time (CA); CA ones
    need :func:`ca_loopback_env` in the server's and the clients' environment.
    ``start_delay`` below :data:`MIN_START_DELAY` is raised to it (``-std 0`` races).

    ``gated``: the first frame waits for :meth:`SimServer.release` instead of ``start_delay``
    (at most :data:`GATE_TIMEOUT`), for tests whose clients must connect before frame 1."""
    start_delay = GATE_TIMEOUT if gated else max(start_delay, MIN_START_DELAY)
    exe = [sys.executable, "-m", GATED] if gated else [sim_server_exe()]
    args = [*exe, "-cn", channel, "-nx", str(nx), "-ny", str(ny), "-dt", datatype,
            "-fps", str(fps), "-rt", str(runtime), "-std", str(start_delay), "-shd", "0",
            "-rp", str(report_period), "-cm", str(color_mode), "-dc"]
    if total_frames is not None:
        if total_frames < 2:
            raise ValueError("total_frames must be >= 2")
        # A cache smaller than the frame count makes pvapy stream each frame once, then exit.
        args += ["-nf", str(total_frames), "-cs", str(total_frames - 1)]
    else:
        args += ["-nf", str(n_frames)]
    if input_file is not None:
        args += ["-if", str(input_file)]
        if hdf5_dataset is not None:
            args += ["-hds", hdf5_dataset]
        if hdf5_compressed:
            args.append("-hcm")
    elif hdf5_dataset is not None or hdf5_compressed:
        raise ValueError("hdf5_dataset and hdf5_compressed need an input_file")
    if metadata_pvs:
        args += ["-mpv", ",".join(metadata_pvs)]
    return args + list(extra_args)


class SimServer:
    """One ``pvapy-ad-sim-server`` process serving NTNDArray frames on loopback.

    ``env``: the EPICS client settings to run clients with; ``server_env`` adds the server's
    own TCP port. Frames are numbered uniqueId 1, 2, ... from each (re)start.
    """

    def __init__(
        self, args: Sequence[str], channel: str, env: Mapping[str, str], log_path: Path,
        ready_timeout: float = 30.0,
    ) -> None:
        self.args = list(args)
        self.channel = channel
        self.env = dict(env)
        self.log_path = log_path
        self.ready_timeout = ready_timeout
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def server_env(self) -> dict[str, str]:
        return {**self.env, "EPICS_PVA_SERVER_PORT": str(self.port),
                "EPICS_PVAS_SERVER_PORT": str(self.port)}

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> SimServer:
        """Start on a fresh TCP port and wait until it listens.

        A fresh port on every start because a killed server leaves its old port in
        TIME_WAIT and pvAccess would then silently fall back to a random port."""
        if self.is_running():
            return self
        self.port = free_port()
        with open(self.log_path, "ab") as log:
            log.write(f"=== start {time.ctime()} port {self.port}: {' '.join(self.args)}\n"
                      .encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.args, env={**os.environ, **self.server_env}, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sim server exited (code {self.proc.returncode}):\n"
                                   f"{self.log_text()[-3000:]}")
            if self.listening():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"sim server not listening on {self.port} after "
                                   f"{self.ready_timeout} s:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM the server's process group, SIGKILL after ``timeout``; returns exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        return proc.returncode

    def listening(self) -> bool:
        return tcp_listening(self.port)

    def current_unique_id(self, timeout: float = 5.0) -> int:
        """The uniqueId the server publishes now (0 before its first frame), read with a
        pvAccess get of that one field (in this process: :meth:`apply_env` first)."""
        import pvaccess

        try:
            pv = pvaccess.Channel(self.channel).get("field(uniqueId)")
        except Exception:  # not connected yet, or no value yet
            return 0
        return int(pv["uniqueId"])

    def wait_for_frames(self, n: int = 1, timeout: float = 60.0) -> int:
        """Wait until the server has published ``n`` frames (uniqueId >= n); returns the
        uniqueId seen. Raises TimeoutError (with the server's log) if it does not."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_running():
                raise RuntimeError(f"sim server exited:\n{self.log_text()[-3000:]}")
            uid = self.current_unique_id()
            if uid >= n:
                return uid
            if time.monotonic() > deadline:
                raise TimeoutError(f"sim server published {uid} of {n} frames within "
                                   f"{timeout} s:\n{self.log_text()[-3000:]}")
            time.sleep(0.1)

    def release(self) -> None:
        """Let a gated server (``sim_args(gated=True)``) publish its first frame: call it once
        every client that must see frame 1 has connected."""
        if GATED not in self.args or self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"sim server {self.channel} is not a running gated server")
        os.kill(self.proc.pid, signal.SIGUSR1)

    def apply_env(self) -> None:
        """Client settings into os.environ: needed before this process's first channel."""
        os.environ.update(self.env)

    def restart(self) -> SimServer:
        """Stop and start again: same channel and search port, new TCP port, uniqueIds
        restart at 1 (what a real IOC restart looks like to a client)."""
        self.stop()
        return self.start()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __repr__(self) -> str:
        return f"SimServer({self.channel!r}, port={self.port}, pid={self.pid})"
