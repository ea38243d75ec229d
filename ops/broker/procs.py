"""Process and socket helpers for the broker JVMs.

Kept apart from the broker itself because the daemon commands use them on processes this
Python process did not start (a broker started by an earlier ``pvaflow-broker start``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import BrokerError

HOST = "127.0.0.1"
"""Everything binds to loopback: a development broker must not be reachable from outside."""


def port_in_use(port: int, host: str = HOST) -> bool:
    """Whether binding ``port`` would fail right now."""
    # SO_REUSEADDR like the JVM's server sockets, so TIME_WAIT left by our own previous run
    # does not count as "in use" (a restart must get the same port back).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def can_connect(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """A cheap check before a metadata request: the client library would retry for long."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail_text(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def tail_file(path: Path, lines: int = 40) -> str:
    """The end of a log for an error message; reads at most 64 KiB of a possibly huge file."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read().decode(errors="replace")
    except OSError:
        return ""
    return tail_text(data, lines)


def find_java() -> str:
    """``$JAVA_HOME/bin/java`` first, as the Kafka scripts do, else ``java`` on PATH."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise BrokerError("no 'java' on PATH and no JAVA_HOME: Kafka needs a JDK/JRE 17+")
    return java


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs; zombies count as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is dead for our purposes (its parent may never reap it)
    return _state(Path(f"/proc/{pid}/stat")) != "Z"


def _state(stat: Path) -> str | None:
    """The state letter of a ``/proc/.../stat`` file (after the command name, which may hold
    spaces and parentheses), or None when it cannot be read (the process or thread is gone)."""
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def signal_process(pid: int, sig: int) -> None:
    """Signal the process group if the process leads one (we start it that way), else it."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def all_threads_stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is in the stopped state (``T``), or the process is gone.

    ``killpg(SIGSTOP)`` returns before each thread has taken the signal; a thread does only when
    the scheduler next runs it, so on a loaded machine a "paused" broker may still answer for a
    moment. A pause is done when this is true.
    """
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return True
    # a thread that ended meanwhile (None) does not count
    return all(_state(task / "stat") in (None, "T", "t") for task in tasks)


def kill_at_exit(proc: subprocess.Popen[bytes]) -> None:
    """Finalizer of a broker object: a forgotten broker must not outlive the interpreter."""
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            signal_process(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)


def stop_pids(pids: Sequence[int], timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` s, for processes we cannot ``wait()`` on.
    All are signalled at once: the members of a cluster shut down together."""
    for pid in pids:
        signal_process(pid, signal.SIGCONT)  # a paused JVM cannot shut down
        signal_process(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(pid_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            for pid in pids:
                signal_process(pid, signal.SIGKILL)
            end = time.monotonic() + 10
            while any(pid_alive(pid) for pid in pids) and time.monotonic() < end:
                time.sleep(0.1)
            break
        time.sleep(0.1)
