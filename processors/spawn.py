"""``--n-consumers N``: N processes with ids consumer-id..consumer-id+N-1 in one group (or the
ids of ``--consumer-id-list``).

Each child is a plain single consumer (its own interpreter, its own GIL), started with the
same command line; Kafka's group protocol, not this parent, shares the partitions. The parent
forwards SIGINT/SIGTERM and returns the worst exit code, so a supervisor sees a failed member
even when the others stopped cleanly. The children run in their own process group: a signal
sent to the parent's group (Ctrl-C in a terminal, a supervisor's ``kill -TERM -PGID``) then
reaches each child once, through the parent, and is not taken for the second signal that means
"do not wait for a clean stop". A parent that dies takes its children along
(``die_with_parent``).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from collections.abc import Sequence
from types import FrameType

from pvaflow.options import flags
from pvaflow.process import die_with_parent

log = logging.getLogger(__name__)

# Options the parent sets per child (long and short spellings).
_REPLACED = frozenset(f for o in ("--n-consumers", "--consumer-id", "--consumer-id-list",
                                                 "--metrics-port")
                      for f in flags(o))


def child_argv(argv: Sequence[str], consumer_id: int, metrics_port: int | None) -> list[str]:
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in _REPLACED:
            skip = "=" not in a
            continue
        out.append(a)
    out += ["--n-consumers", "1", "--consumer-id", str(consumer_id)]
    if metrics_port is not None:
        out += ["--metrics-port", str(metrics_port)]
    return out


def exit_code(returncode: int) -> int:
    """A child killed by signal N (returncode -N) counts as the shell's 128+N, not as 0."""
    return 128 - returncode if returncode < 0 else returncode


def spawn(argv: Sequence[str], ids: Sequence[int], metrics_port: int | None) -> int:
    procs: list[subprocess.Popen[bytes]] = []
    for i, cid in enumerate(ids):
        port = None if metrics_port is None else (metrics_port + i if metrics_port else 0)
        cmd = [sys.executable, "-m", "pvaflow.processors.cli", *child_argv(argv, cid, port)]
        procs.append(subprocess.Popen(cmd, preexec_fn=die_with_parent, process_group=0))
        log.info("spawned consumer %d (pid %d)", cid, procs[-1].pid)

    def forward(signum: int, _frame: FrameType | None) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    return max(exit_code(p.wait()) for p in procs)
