"""Child-process helpers shared by the broker, the simulator and the consumer spawner."""

from __future__ import annotations

import ctypes
import signal
import socket
from collections.abc import Sequence


def die_with_parent() -> None:
    """``preexec_fn`` hook: the kernel SIGKILLs the child when its parent dies, so a crashed
    parent (or test run) never leaves a JVM, a PVA server or a consumer behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port(host: str = "127.0.0.1", exclude: Sequence[int] = ()) -> int:
    """A TCP port nobody listens on right now (the usual small race is accepted)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in exclude:
            return port
    raise OSError("could not find a free TCP port")
