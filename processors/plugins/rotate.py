"""``rotate``: the seed's example processor (``hpcAdImageProcessorExample``), natively.

By default it swaps the image's x and y axes as the seed does; ``{"k": 1|2|3}`` turns it by
``k`` quarter-turns (``np.rot90``) instead. Dimension metadata is reset to plain dimensions of
the new shape. It reads ``frame.image``, so compressed frames work: they are decoded once, and
the stage's ``--output-codec`` (default ``same``) compresses the result again.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from pvaflow.frame import Frame
from pvaflow.plugin import Processor, StatValue


class Rotate(Processor):
    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self.reset_stats()

    def process(self, frame: Frame) -> Frame | None:
        if len(frame.shape) < 2:
            return frame
        t0 = time.perf_counter()
        pixels = frame.image  # a compressed frame is decoded here (FrameError if corrupt)
        k = int(self.config.get("k", 0))
        image = np.rot90(pixels, k) if k % 4 else np.swapaxes(pixels, 0, 1)
        out = frame.with_image(np.ascontiguousarray(image))
        self.n_processed += 1
        self.processing_time += time.perf_counter() - t0
        return out

    def reset_stats(self) -> None:
        self.n_processed = 0
        self.processing_time = 0.0

    def get_stats(self) -> dict[str, StatValue]:
        t = self.processing_time
        return {"nProcessed": self.n_processed, "processingTime": t,
                "processingRate": self.n_processed / t if t > 0 else 0.0}
