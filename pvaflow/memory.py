"""Give frame-sized buffers back to the operating system when they are freed.

glibc serves a block above its mmap threshold with mmap and unmaps it on free, but it raises
the threshold to the size of every such block freed (up to 32 MiB). After the first 2 MiB
frame is freed, frames come from the heap and freed ones stay in the process: a consume ->
produce loop of 2 MiB frames held 80-135 MiB of freed heap at its peak RSS, 1 MiB with the
threshold fixed. Setting it once turns the raising off; frames below it (16 KiB) are not
affected.

Fixing it also freezes glibc's trim threshold at 128 KiB (the dynamic rule raises both), and
then a heap of small frames cycling through a cache gave its top back and faulted it in
again: the collector took 330-380k page faults per 200,000 frames of 16 KiB in about half of
its runs, ~1.7x the CPU per frame of the other half. So up to ``HEAP_TRIM_THRESHOLD`` of freed
memory at the heap's top is kept for reuse.
"""

from __future__ import annotations

import ctypes
import os

FRAME_MMAP_THRESHOLD = 1 << 20
HEAP_TRIM_THRESHOLD = 32 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def release_large_frees(threshold: int = FRAME_MMAP_THRESHOLD) -> bool:
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
