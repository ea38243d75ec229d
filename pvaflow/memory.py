"""Serve frame-sized buffers from the heap and reuse them, instead of mapping fresh memory for
each frame.

glibc serves a block above its mmap threshold (128 KiB at start) with a fresh mmap and unmaps
it on free. Fresh memory is faulted in and zeroed page by page: in the whole pipeline at
60 fps of 2 MiB frames, page faults, zeroing and unmapping were about a third of the bridge's
and the collector's CPU, and fixing the threshold above the frame size halved the CPU of the
bridge and the consumers (docs/performance.md, "Frames from the heap"). glibc raises the
threshold by itself after a large free, but only to the size of that block, so a frame larger
than any freed before is mapped again; fixing it at glibc's maximum (32 MiB, the largest
record pvaflow produces) keeps every frame in the heap.

The price is memory: frames freed after a burst stay in the process for the next ones, so
RSS stays near its peak instead of falling back (the peak itself is the sum of the queue
bounds, docs/plugins.md "Memory"). Only freed memory at the heap's top beyond
``HEAP_TRIM_THRESHOLD`` goes back to the system.

Fixing the mmap threshold also freezes glibc's trim threshold, at 128 KiB unless it is set:
a heap of small frames cycling through a cache then gave its top back and faulted it in
again (the collector took 330-380k page faults per 200,000 frames of 16 KiB in about half of
its runs, ~1.7x the CPU per frame of the other half), hence ``HEAP_TRIM_THRESHOLD``.
"""

from __future__ import annotations

import ctypes
import os

FRAME_MMAP_THRESHOLD = 32 << 20  # glibc's largest: HEAP_MAX_SIZE / 2 on 64-bit
HEAP_TRIM_THRESHOLD = 32 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def reuse_frame_memory(threshold: int = FRAME_MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes and its trim threshold at
    ``HEAP_TRIM_THRESHOLD``; False when not glibc or when the operator chose the mmap
    threshold with ``MALLOC_MMAP_THRESHOLD_`` (theirs wins, as does
    ``MALLOC_TRIM_THRESHOLD_``)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library already loaded
    except (OSError, AttributeError):
        return False
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        mallopt(_M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD)
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))
