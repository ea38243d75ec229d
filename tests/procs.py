"""Processes and waits for the integration tests.

A command runs in its own process group (``--n-consumers`` children are reached through their
parent, a test's signal never reaches pytest), its output in a log file, and is stopped by pid
at teardown. Every wait is on a condition with a bound: the suite runs on small shared
machines, often beside other work, so nothing may assume a process starts within a second.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent  # the venv's console scripts


class Proc:
    """A command in its own process group, stdout and stderr appended to ``log``."""

    def __init__(self, argv: Sequence[str | Path], log: Path,
                 env: Mapping[str, str] | None = None) -> None:
        self.args = [str(a) for a in argv]
        self.log = log
        self.started = time.monotonic()
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=dict(os.environ if env is None else env), start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def name(self) -> str:
        return self.log.stem

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float = 60.0) -> int:
        return self.popen.wait(timeout)

    def signal(self, sig: int) -> None:
        """``sig`` to the process group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def kill(self) -> None:
        """SIGKILL, as a crash would; returns once it is gone."""
        self.signal(signal.SIGKILL)
        self.popen.wait(15)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM to the group, SIGKILL after ``timeout``; the exit code."""
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(15)
        return self.popen.returncode


def wait_for(cond: Callable[[], Any], timeout: float, what: str, *, every: float = 0.3,
             logs: Iterable[Proc] = ()) -> Any:
    """``cond()``'s first true value; after ``timeout`` s an AssertionError naming ``what``
    with the tail of each of ``logs``."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            tails = "".join(f"\n--- {p.log.name}\n{p.text()[-2000:]}" for p in logs)
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{tails}")
        time.sleep(every)
