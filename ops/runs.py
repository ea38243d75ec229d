"""``pvaflow runs TOPIC``: what a topic holds, as runs of a source.

Reads keys and headers only (``pf.uid``; the key when the header is missing), never decodes
pixels, and keeps a few numbers per run, so memory stays bounded however long the topic. A
run ends where the uniqueId goes backwards (the source restarted and counts from 1 again) or
jumps forward by more than ``--max-jump`` (a restart that continued from a higher id). Each
partition is split into segments this way; segments of different partitions that overlap in
time and in uniqueIds belong to the same run (the bridge spreads one run over the partitions).

Times are Kafka record timestamps, the ones ``--from-time`` / ``--to-time`` select on: the
first and last time of a run are what to pass to reprocess it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

from pvaflow import codec
from pvaflow.component import run_command
from pvaflow.errors import FrameError
from pvaflow.kafka.client import Kafka
from pvaflow.kafka.positions import ReplaySpec, WindowReader, iso
from pvaflow.options import Parser, add_kafka_args, add_log_args, add_replay_args, parse

PROG = "pvaflow runs"
MAX_JUMP = 1000


@dataclass
class Segment:
    """Consecutive records of one partition (or, merged, one run)."""

    first_uid: int
    last_uid: int
    first_ms: int
    last_ms: int
    frames: int = 1
    min_uid: int = 0
    max_uid: int = 0
    partitions: set[int] = field(default_factory=set)
    why: str = ""  # how the run before it ended

    def add(self, uid: int, ms: int) -> None:
        self.frames += 1
        self.last_uid = uid
        self.min_uid = min(self.min_uid, uid)
        self.max_uid = max(self.max_uid, uid)
        self.first_ms = min(self.first_ms, ms)
        self.last_ms = max(self.last_ms, ms)


@dataclass
class RunsReport:
    runs: list[Segment]
    records: int = 0
    not_frames: int = 0

    def to_json(self) -> dict[str, object]:
        out = []
        for i, r in enumerate(self.runs, 1):
            d = asdict(r)
            d["partitions"] = sorted(r.partitions)
            d.update(run=i, first_time=iso(r.first_ms), last_time=iso(r.last_ms),
                     missing=missing(r))
            out.append(d)
        return {"runs": out, "records": self.records, "not_frames": self.not_frames}


def missing(run: Segment) -> int:
    """uniqueIds inside the run's range that the topic does not hold (duplicates aside)."""
    return max(0, run.max_uid - run.min_uid + 1 - run.frames)


class RunFinder:
    """Feeds records (partition, uniqueId, time) and splits them into runs."""

    def __init__(self, max_jump: int = MAX_JUMP) -> None:
        self.max_jump = max_jump
        self.open: dict[int, Segment] = {}
        self.segments: list[Segment] = []

    def add(self, partition: int, uid: int, ms: int) -> None:
        seg = self.open.get(partition)
        if seg is not None:
            if uid < seg.last_uid:
                why = f"uniqueId went back from {seg.last_uid} to {uid}"
            elif uid - seg.last_uid > self.max_jump:
                why = f"uniqueId jumped from {seg.last_uid} to {uid}"
            else:
                seg.add(uid, ms)
                return
            self.segments.append(seg)
        else:
            why = ""
        self.open[partition] = Segment(uid, uid, ms, ms, 1, uid, uid, {partition}, why)

    def runs(self) -> list[Segment]:
        """Segments merged across partitions, in time order."""
        segs = sorted([*self.segments, *self.open.values()], key=lambda s: s.first_ms)
        runs: list[Segment] = []
        for seg in segs:
            for run in reversed(runs[-8:]):  # a run's partitions start close together
                if (seg.first_ms <= run.last_ms and seg.min_uid <= run.max_uid + self.max_jump
                        and seg.max_uid + self.max_jump >= run.min_uid
                        and not (seg.partitions & run.partitions)):
                    run.frames += seg.frames
                    run.min_uid = min(run.min_uid, seg.min_uid)
                    run.max_uid = max(run.max_uid, seg.max_uid)
                    run.first_ms = min(run.first_ms, seg.first_ms)
                    run.last_ms = max(run.last_ms, seg.last_ms)
                    run.partitions |= seg.partitions
                    break
            else:
                runs.append(Segment(seg.min_uid, seg.max_uid, seg.first_ms, seg.last_ms,
                                    seg.frames, seg.min_uid, seg.max_uid,
                                    set(seg.partitions), seg.why))
        for run in runs:
            run.first_uid, run.last_uid = run.min_uid, run.max_uid
        return runs


def find_runs(records: Iterable[tuple[int, bytes | None, object, int]],
              max_jump: int = MAX_JUMP) -> RunsReport:
    """Runs of ``(partition, key, headers, timestamp ms)`` records."""
    finder = RunFinder(max_jump)
    n = bad = 0
    for partition, key, headers, ms in records:
        n += 1
        raw = codec.header(headers, "pf.uid")  # type: ignore[arg-type]
        try:
            uid = int(raw) if raw is not None else codec.decode_key(key)
        except (ValueError, FrameError):
            bad += 1
            continue
        finder.add(partition, uid, ms)
    return RunsReport(finder.runs(), n, bad)


def format_report(topic: str, report: RunsReport) -> str:
    lines = [f"{topic}: {report.records} records, {len(report.runs)} run(s)"
             + (f", {report.not_frames} not pvaflow frames" if report.not_frames else "")]
    if report.runs:
        lines.append(f"{'run':>4}  {'first time':<29}  {'last time':<29}  {'frames':>8}  "
                     f"{'uniqueIds':<21}  {'missing':>7}  partitions")
    for i, r in enumerate(report.runs, 1):
        parts = ",".join(map(str, sorted(r.partitions)))
        lines.append(f"{i:>4}  {iso(r.first_ms):<29}  {iso(r.last_ms):<29}  {r.frames:>8}  "
                     f"{f'{r.first_uid}-{r.last_uid}':<21}  {missing(r):>7}  {parts}")
        if r.why:
            lines.append(f"      new run: {r.why} (source restart)")
    return "\n".join(lines)


def build_parser() -> Parser:
    p = Parser(prog=PROG, description=(
        "List the runs a topic holds: first/last time, frames, uniqueId ranges, and where a "
        "source restarted (uniqueId going back or jumping). Reads headers only."))
    p.add_argument("topic", metavar="TOPIC", help="frames topic")
    p.add_argument("--max-jump", type=int, default=MAX_JUMP, metavar="N",
                   help=f"a uniqueId step larger than N within a partition starts a new run "
                        f"(default: {MAX_JUMP})")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_replay_args(p)
    add_kafka_args(p)
    add_log_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    kafka = Kafka.from_args(args)
    kafka.check_reachable()
    reader = WindowReader(kafka, args.topic, ReplaySpec.from_args(args))
    try:
        total = reader.open()
        with tqdm(total=total, unit="rec", desc=args.topic, disable=None,
                  file=sys.stderr) as bar:
            def records() -> Iterable[tuple[int, bytes | None, object, int]]:
                for msg in reader:
                    bar.update()
                    yield (msg.partition() or 0, msg.key(), msg.headers(), msg.timestamp()[1])

            report = find_runs(records(), args.max_jump)
    finally:
        reader.close()
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(format_report(args.topic, report))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    return run_command(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
