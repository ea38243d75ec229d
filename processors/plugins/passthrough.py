"""``passthrough``: every frame out unchanged. The baseline for measuring framework cost, and
a way to copy a topic (e.g. into a read_committed, exactly-once stream)."""

from __future__ import annotations

from pvaflow.frame import Frame
from pvaflow.plugin import Processor


class Passthrough(Processor):
    def process(self, frame: Frame) -> Frame:
        return frame
