"""pvaflow: EPICS area-detector frames through Kafka to scaled Python processors."""

from .codec import FrameError, decode, encode
from .frame import Alarm, Attribute, Codec, Dimension, EpicsTime, Frame

__version__ = "0.1.0"
__all__ = [
    "Alarm", "Attribute", "Codec", "Dimension", "EpicsTime", "Frame", "FrameError",
    "__version__", "decode", "encode",
]
