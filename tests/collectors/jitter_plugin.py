"""Test plugin: a random per-frame delay (so frames leave the consumers out of order) and an
optional ``tag`` attribute on every output, changeable at runtime with ``configure``."""

import random
import time

from pvaflow.frame import Attribute, Frame
from pvaflow.plugin import Processor


class Jitter(Processor):
    def process(self, frame: Frame) -> Frame:
        time.sleep(random.uniform(0, float(self.config.get("max_delay", 0.02))))
        tag = self.config.get("tag")
        if tag is not None:
            frame.attributes = [*frame.attributes, Attribute("tag", str(tag), "string")]
        return frame

    def get_stats(self) -> dict[str, float | int | str]:
        return {"tag": str(self.config.get("tag", ""))}
