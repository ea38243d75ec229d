"""Entry-point plugin used by the tests: multiplies pixel values by ``factor`` (default 2)."""

import numpy as np
from pvaflow.processors import Frame, Processor


class Scale(Processor):
    def process(self, frame: Frame) -> Frame:
        factor = int(self.config.get("factor", 2))
        return frame.with_array((frame.array.astype(np.int64) * factor).astype(frame.dtype))

    def get_stats(self) -> dict:
        return {"factor": int(self.config.get("factor", 2))}
