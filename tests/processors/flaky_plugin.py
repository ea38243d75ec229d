"""Test plugin: raises on every 10th frame (by uniqueId), passes the rest through."""

from pvaflow.processors import Frame, Processor


class EveryTenthFails(Processor):
    def process(self, frame: Frame) -> Frame:
        if frame.unique_id % 10 == 0:
            raise RuntimeError(f"frame {frame.unique_id} is a multiple of ten")
        return frame
