"""Frames come from glibc's heap and are reused (pvaflow.memory), within the peak they reached."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Runs a workload in a fresh interpreter with glibc's defaults ("default"), pvaflow's setting
# ("fixed"), every frame mapped ("mmap": the threshold at 1 MiB) or the mmap threshold alone
# fixed ("mmap-only", which freezes the trim threshold at 128 KiB), and reports in JSON:
# faults: minor page faults during the workload;
# held: freed memory the process still holds (mallinfo2's fordblks), MiB;
# grew: how far the heap grew (arena + mapped blocks) in the workload's second round, MiB.
PROBE = """
import ctypes, json, resource, sys
from pvaflow.memory import FRAME_MMAP_THRESHOLD, reuse_frame_memory
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
                .split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
MiB = 2**20
def size():
    m = libc.mallinfo2()
    return (m.arena + m.hblkhd) / MiB
mode, workload = sys.argv[1:]
if mode == "fixed":
    assert reuse_frame_memory()
elif mode == "mmap":
    assert libc.mallopt(-3, 1 << 20)
elif mode == "mmap-only":
    assert libc.mallopt(-3, FRAME_MMAP_THRESHOLD)
out = {}
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
if workload == "stream":
    # one frame at a time, each a page larger than the last
    for i in range(200):
        frame = bytearray((2 << 20) + 4096 * i)
        del frame
elif workload == "burst":
    # 40 frames held at once with a small object allocated after each (so the heap cannot
    # shrink from the top), freed, then the same again
    for round in range(2):
        before = size()
        frames, pins = [], []
        for _ in range(40):
            frames.append(bytearray(2 << 20))
            pins.append(bytearray(64 << 10))
        del frames[:]
        out["held"] = libc.mallinfo2().fordblks / MiB
        out["grew"] = size() - before
else:
    frames = [bytearray(16 << 10) for _ in range(512)]
    del frames[:]
    out["held"] = libc.mallinfo2().fordblks / MiB
out["faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
print(json.dumps(out))
"""


def probe(mode: str, workload: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode, workload], capture_output=True,
                         text=True, check=True, env={"PATH": "/usr/bin:/bin"})
    result: dict[str, float] = json.loads(out.stdout)
    return result


glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")


@glibc
def test_a_stream_of_frames_reuses_memory_instead_of_faulting_it_in():
    # 200 frames of 2 MiB are 100k pages: mapped afresh, each page faults once
    assert probe("mmap", "stream")["faults"] > 80_000
    # glibc's own rule maps each frame larger than the largest freed so far
    assert probe("default", "stream")["faults"] > 80_000
    assert probe("fixed", "stream")["faults"] < 5_000


@glibc
def test_freed_frames_are_kept_for_the_next_burst_and_the_heap_stays_at_its_peak():
    fixed = probe("fixed", "burst")
    assert fixed["held"] > 70  # the 40 frames' 80 MiB, kept for reuse
    assert fixed["grew"] < 4  # the second burst fits in them: the peak is the bound
    assert probe("mmap", "burst")["held"] < 4  # mapped frames go back at once


@glibc
def test_freed_small_frames_stay_for_reuse():
    # The mmap threshold alone gives the 8 MiB back at once (to be faulted in again by the
    # next frames); pvaflow's setting keeps it.
    assert probe("mmap-only", "small")["held"] < 1
    assert probe("fixed", "small")["held"] > 7


def test_an_operator_choice_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    from pvaflow.memory import reuse_frame_memory

    assert reuse_frame_memory() is False
