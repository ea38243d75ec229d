"""glibc keeps freed frame-sized blocks unless the mmap threshold is fixed (pvaflow.memory)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Report how much freed memory the process still holds (mallinfo2's fordblks) in MiB after a
# workload, with glibc's defaults, with pvaflow's setting ("fixed"), or with the mmap
# threshold alone fixed ("mmap-only", which freezes the trim threshold at 128 KiB).
# large: free one 2 MiB block (glibc raises its threshold), then hold 40 frames with a small
# object allocated after each (so the heap cannot shrink from the top) and free the frames.
# small: hold 512 frames of 16 KiB at the top of the heap and free them.
PROBE = """
import ctypes, sys
from pvaflow.memory import release_large_frees
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
                .split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
mode, workload = sys.argv[1:]
if mode == "fixed":
    assert release_large_frees()
elif mode == "mmap-only":
    assert libc.mallopt(-3, 1 << 20)
if workload == "large":
    bytearray(2 << 20)  # allocated and freed at once
    frames, pins = [], []
    for _ in range(40):
        frames.append(bytearray(2 << 20))
        pins.append(bytearray(64 << 10))
    del frames[:]
else:
    frames = [bytearray(16 << 10) for _ in range(512)]
    del frames[:]
print(libc.mallinfo2().fordblks / 2**20)
"""


def held_after_free(mode: str, workload: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode, workload], capture_output=True,
                         text=True, check=True, env={"PATH": "/usr/bin:/bin"})
    return float(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_fixed_threshold_returns_freed_frames_to_the_os():
    assert held_after_free("default", "large") > 40  # the problem: ~80 MiB of freed frames kept
    assert held_after_free("fixed", "large") < 4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_small_frames_stay_for_reuse():
    # The mmap threshold alone gives the 8 MiB back at once (to be faulted in again by the
    # next frames); pvaflow's setting keeps it.
    assert held_after_free("mmap-only", "small") < 1
    assert held_after_free("fixed", "small") > 7


def test_an_operator_choice_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    from pvaflow.memory import release_large_frees

    assert release_large_frees() is False
