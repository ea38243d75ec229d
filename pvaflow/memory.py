"""Give frame-sized buffers back to the operating system when they are freed.

glibc serves a block above its mmap threshold with mmap and unmaps it on free, but it raises
the threshold to the size of every such block freed (up to 32 MiB). After the first 2 MiB
frame is freed, frames come from the heap and freed ones stay in the process: a consume ->
produce loop of 2 MiB frames held 80-135 MiB of freed heap at its peak RSS, 1 MiB with the
threshold fixed. Setting it once turns the raising off; frames below it (16 KiB) are not
affected.
"""

from __future__ import annotations

import ctypes
import os

FRAME_MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def release_large_frees(threshold: int = FRAME_MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; False when not glibc or when the
    operator chose one with ``MALLOC_MMAP_THRESHOLD_`` (theirs wins)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library already loaded
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))
