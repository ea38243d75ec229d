"""glibc keeps freed frame-sized blocks unless the mmap threshold is fixed (pvaflow.memory)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Free one 2 MiB block (glibc raises its threshold), then hold 40 frames with a small object
# allocated after each (so the heap cannot shrink from the top), free the frames and report
# how much freed memory the process still holds (mallinfo2's fordblks) in MiB.
PROBE = """
import ctypes, sys
from pvaflow.memory import release_large_frees
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
                .split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "fixed":
    assert release_large_frees()
bytearray(2 << 20)  # allocated and freed at once
frames, pins = [], []
for _ in range(40):
    frames.append(bytearray(2 << 20))
    pins.append(bytearray(64 << 10))
del frames[:]
print(libc.mallinfo2().fordblks / 2**20)
"""


def held_after_free(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin"})
    return float(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_fixed_threshold_returns_freed_frames_to_the_os():
    assert held_after_free("default") > 40  # the problem: ~80 MiB of freed frames kept
    assert held_after_free("fixed") < 4


def test_an_operator_choice_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    from pvaflow.memory import release_large_frees

    assert release_large_frees() is False
