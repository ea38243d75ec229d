"""Test plugin: passthrough that sleeps ``delay`` seconds per frame (to keep frames in flight
while a consumer is killed) and records configure() calls in its stats."""

import time

from pvaflow.processors import Frame, Processor


class Slow(Processor):
    def process(self, frame: Frame) -> Frame:
        time.sleep(float(self.config.get("delay", 0.01)))
        return frame
