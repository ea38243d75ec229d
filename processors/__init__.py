"""Processors wing: runs user plugins inside a Kafka consumer group (``pvaflow-consumer``).

The plugin API lives in the core (:mod:`pvaflow.plugin`, shared with the collector) and is
re-exported here so plugin authors write ``from pvaflow.processors import Processor``.
"""

from pvaflow.frame import Frame
from pvaflow.plugin import Processor, PvaPyAdapter, load_processor

__all__ = ["Frame", "Processor", "PvaPyAdapter", "load_processor"]
