"""Run a plugin over frames in-process, without Kafka: for plugin authors' unit tests.

By default every frame goes through the real codec first (encode then decode), so the plugin
sees exactly what it sees in production: a read-only numpy view, the same headers, the same
dtype and shape; writing into the input array fails here just as it would in the consumer.
Outputs are round-tripped too, so a frame the codec could not carry is caught in the test.

    from pvaflow.testing import run_plugin, make_frames
    result = run_plugin("rotate", make_frames(10, (4, 6)))
    assert result.outputs[0].shape == (6, 4) and not result.errors
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .codec import decode, encode
from .frame import EpicsTime, Frame
from .plugin import Processor, load_processor, outputs


@dataclass
class Result:
    outputs: list[Frame] = field(default_factory=list)
    errors: list[tuple[int, BaseException]] = field(default_factory=list)  # (uniqueId, exc)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def unique_ids(self) -> list[int]:
        return [f.unique_id for f in self.outputs]


def make_frames(n: int, shape: tuple[int, ...] = (128, 128), dtype: Any = np.uint8,
                first_id: int = 1, seed: int = 0) -> list[Frame]:
    """``n`` random frames with uniqueIds ``first_id``.. (as the AD simulator numbers them)."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    out = []
    for i in range(n):
        if dt.kind == "f":
            a = rng.random(shape).astype(dt)
        else:
            info = np.iinfo(dt)
            a = rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
        out.append(Frame(a, unique_id=first_id + i, timestamp=EpicsTime.now(), sequence=i))
    return out


def roundtrip(frame: Frame) -> Frame:
    """The frame as a consumer would decode it from Kafka."""
    key, value, headers = encode(frame)
    return decode(key, value.tobytes(), headers)


class Harness:
    """A plugin with its lifecycle: ``start`` on entry, ``stop`` on exit."""

    def __init__(self, plugin: Processor | str, config: dict[str, Any] | None = None,
                 codec_roundtrip: bool = True) -> None:
        self.plugin = plugin if isinstance(plugin, Processor) else load_processor(
            plugin, config=config)
        self.codec_roundtrip = codec_roundtrip

    def __enter__(self) -> Harness:
        self.plugin.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.plugin.stop()

    def process(self, frame: Frame) -> list[Frame]:
        """Outputs for one frame; exceptions propagate (the runner would dead-letter them)."""
        if self.codec_roundtrip:
            frame = roundtrip(frame)
        outs = outputs(self.plugin.process(frame))
        return [roundtrip(o) for o in outs] if self.codec_roundtrip else outs

    def run(self, frames: Iterable[Frame]) -> Result:
        result = Result()
        for frame in frames:
            try:
                result.outputs.extend(self.process(frame))
            except Exception as exc:
                result.errors.append((frame.unique_id, exc))
        result.stats = dict(self.plugin.get_stats())
        return result


def run_plugin(plugin: Processor | str, frames: Iterable[Frame], *,
               config: dict[str, Any] | None = None, codec_roundtrip: bool = True) -> Result:
    """Start the plugin, process every frame (collecting errors as the DLQ would), stop it.
    ``plugin`` is an instance or anything ``load_processor`` accepts as a spec."""
    with Harness(plugin, config, codec_roundtrip) as h:
        return h.run(frames)
