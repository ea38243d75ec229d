"""Test plugin: a native batch plugin that records the size of every batch it gets and how
long after the previous batch it came; it outputs its frames unchanged."""

import time

from pvaflow.processors import Frame, Processor


class BatchRecorder(Processor):
    def start(self) -> None:
        self.sizes: list[int] = []
        self.gaps: list[float] = []
        self._last = time.monotonic()

    def process_batch(self, frames: list[Frame]) -> list[Frame]:
        now = time.monotonic()
        self.sizes.append(len(frames))
        self.gaps.append(now - self._last)
        self._last = now
        return frames

    def get_stats(self) -> dict[str, str]:
        return {"sizes": ",".join(map(str, self.sizes)),
                "gaps": ",".join(f"{g:.2f}" for g in self.gaps)}
