"""One channel's path from a PVA update to a produced record: parse, account, route, encode."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from pvaflow import codec
from pvaflow.codec import SESSION_HEADER, FrameError, Headers
from pvaflow.frame import Frame
from pvaflow.ntnda import frame_from_ntnda

from . import ad00
from .compress import CodecPool, CodecStage
from .loss import LossTracker, Seen
from .metadata import MetadataJoin
from .plan import PLAN_HEADER, Plan
from .producer import Encoded, FrameProducer
from .stats import ChannelStats

log = logging.getLogger(__name__)

FORMATS = ("native", "ad00")


class Intake:
    """Callable handed to :class:`~.source.Source`; runs on the intake thread of one channel.

    ``auto_first`` anchors the plan at the first uniqueId received (and again after a source
    restart), like a distributor that starts counting when it starts; otherwise the plan is
    fixed, so a replay or a second bridge routes identically.

    With a ``codec`` pool, frames go through a :class:`~.compress.CodecStage` (compressed on
    the pool, produced in arrival order by the stage's sender thread). ``borrowed``: the
    update's buffer is only valid during the call (pvapy's monitor callback without a
    client queue), so a frame kept for later is copied first.
    """

    def __init__(
        self,
        channel: str,
        plan: Plan,
        producer: FrameProducer,
        stats: ChannelStats,
        *,
        fmt: str = "native",
        auto_first: bool = False,
        codec: CodecPool | None = None,
        borrowed: bool = False,
        metadata: MetadataJoin | None = None,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
        self.channel = channel
        self.producer = producer
        self.stats = stats
        # a fixed --distributor-first is where the stream starts: earlier ids never seen are
        # missed (a late-started bridge); with auto nothing before the first frame is known
        self.tracker = LossTracker(start_first=None if auto_first else plan.first)
        self._fmt = fmt
        self._auto_first = auto_first
        self._borrowed = borrowed
        self._metadata = metadata
        self.stage = (CodecStage(channel, codec, producer, stats, self._encode)
                      if codec is not None else None)
        self._set_plan(plan)

    def _set_plan(self, plan: Plan) -> None:
        self.plan = plan
        self._extra: Headers = [
            (PLAN_HEADER, plan.describe().encode()),
            (SESSION_HEADER, self.producer.session.encode()),
        ]

    def __call__(self, pv: Any) -> None:
        s = self.stats
        try:
            frame = frame_from_ntnda(pv, self.channel)
        except FrameError as exc:
            if "no value" in exc.reason:
                s.empty += 1  # a record's initial, never-published state
                return
            s.received += 1
            s.dropped["invalid"] += 1
            log.error("dropping an update of %s that is not a frame: %s", self.channel, exc)
            return
        uid = frame.unique_id
        seen = self.tracker.observe(uid)
        if seen is Seen.DUPLICATE:
            s.duplicates += 1
            return
        if seen is Seen.RESTART:
            s.restarts = self.tracker.restarts
            log.warning("%s restarted (uniqueId %d after %s): %d frames of the new run missed",
                        self.channel, uid, s.last_id, self.tracker.gap)
        elif seen is Seen.FIRST and self.tracker.gap:
            s.missed_at_start = self.tracker.missed_at_start
            log.warning("%s: first frame is uniqueId %d, the stream starts at %d: %d frames "
                        "published before the bridge started counted as missed", self.channel,
                        uid, self.plan.first, self.tracker.gap)
        elif self.tracker.gap:
            log.debug("%s: %d frames missing before uniqueId %d", self.channel,
                      self.tracker.gap, uid)
        if self._auto_first and seen in (Seen.FIRST, Seen.RESTART):
            self._set_plan(self.plan.rebased(uid))
        s.missed = self.tracker.missed
        s.received += 1
        s.bytes_received += frame.nbytes
        if s.first_id is None:
            s.first_id = uid
        s.last_id = uid
        if self._metadata is not None:
            self._metadata.join(frame)  # metadata channels' values as attributes
        route = self.plan.route(uid)
        if self.stage is not None:
            if self._borrowed:
                frame = replace(frame, array=frame.array.copy())
                pv = None
            self.stage.submit(frame, route, self._extra, pv)
            return
        try:
            encoded = self._encode(frame, self._extra)
        except FrameError as exc:
            s.dropped["invalid"] += 1
            log.error("cannot encode uniqueId %d of %s: %s", uid, self.channel, exc)
            return
        try:
            self.producer.send(route.topic, route.partition, encoded, s, uid)
        except Exception:
            s.dropped["produce_error"] += 1
            raise

    def close(self) -> None:
        """Produce what the codec stage still holds (after the source stopped)."""
        if self.stage is not None:
            self.stage.close()

    def _encode(self, frame: Frame, extra: Headers) -> Encoded:
        if self._fmt == "ad00":
            key, raw, headers = ad00.encode(frame)
            return key, raw, headers + extra
        key, value, headers = codec.encode(frame, sequence=-1)
        return key, value, headers + extra
