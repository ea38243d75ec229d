"""Test plugin: fails on every frame whose uniqueId is a multiple of ``every`` (default 5)."""

from pvaflow.frame import Frame
from pvaflow.plugin import Processor


class FailEvery(Processor):
    def process(self, frame: Frame) -> Frame:
        every = int(self.config.get("every", 5))
        if frame.unique_id % every == 0:
            raise ValueError(f"refusing uniqueId {frame.unique_id}")
        return frame
