"""``pvaflow replay FILE... --topic T``: frames from files back into a topic.

Reads what ``pvaflow export`` writes and gives each frame back its record: from HDF5 the
exact headers, key and (compressed) payload bytes, so topic -> HDF5 -> topic is bit-identical
for raw and compressed frames; from an NPY stack (with its ``.jsonl`` sidecar) or a TIFF series
the pixels and the original headers (a compressed frame is compressed again with its codec).
Files that ``export`` did not write work too: an areaDetector/NeXus HDF5 file
(``/entry/data/data``; bitshuffle/LZ4 chunks are sent compressed as bslz4, as
``pvapy-ad-sim-server -hcm`` does), any .npy stack (N, ...) or .tif files become frames with
uniqueIds 1, 2, ...

``--fresh-ids`` numbers the frames from ``--first-id`` instead of keeping their uniqueIds;
``--rate`` paces the sending (frames per second, or ``max``). Each record goes to its original
partition when the topic has it, else where its key hashes.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pvaflow import codec
from pvaflow.codecs import compress_image
from pvaflow.component import run_command
from pvaflow.errors import KafkaFailure, UsageError
from pvaflow.frame import Codec, EpicsTime, Frame
from pvaflow.kafka.client import Kafka
from pvaflow.kafka.produce import Sender
from pvaflow.kafka.topics import ensure_topic
from pvaflow.options import Parser, add_kafka_args, add_log_args, flags, parse, positive_int

from .export import FORMATS, headers_from_text

PROG = "pvaflow replay"
BSHUF_FILTER = 32008
LZ4_FILTER = 32004


@dataclass
class Record:
    key: bytes
    value: Any  # bytes or a C-contiguous array
    headers: codec.Headers
    partition: int | None = None


def _encoded(frame: Frame, partition: int | None = None) -> Record:
    key, value, headers = codec.encode(frame)
    return Record(key, value, headers, partition)


def _restored(key: bytes, value: Any, headers_text: str | bytes, partition: int | None,
              image: np.ndarray[Any, Any] | None = None) -> Record:
    """A record from its stored headers; ``image`` (pixels) is compressed again when the
    headers name a codec (NPY and TIFF store pixels)."""
    headers = headers_from_text(headers_text)
    if image is not None:
        name = codec.header(headers, "pf.codec")
        if name:
            value, _ = compress_image(image, name.decode())
        else:
            value = np.ascontiguousarray(image).reshape(-1)
    return Record(key, value, headers, partition)


# -- readers ------------------------------------------------------------------------------------

def read_h5(path: Path) -> Iterator[Record]:
    import h5py
    import hdf5plugin  # noqa: F401  (registers the compression filters)

    with h5py.File(path, "r") as h5:
        ds = h5.get("entry/data/data")
        if not isinstance(ds, h5py.Dataset):
            raise UsageError(f"{path}: no /entry/data/data dataset")
        pf = h5.get("entry/pvaflow")
        filters = ds.id.get_create_plist()
        filter_ids = {filters.get_filter(i)[0] for i in range(filters.get_nfilters())}
        ndim = ds.ndim - 1
        for i in range(ds.shape[0]):
            origin = (i, *(0,) * ndim)
            if pf is not None:
                prefix = int(pf["chunk_prefix"][i])
                key = bytes(pf["key"][i])
                part = int(pf["partition"][i])
                headers = pf["headers"][i]
                if codec.header(headers_from_text(headers), "pf.codec"):
                    _mask, chunk = ds.id.read_direct_chunk(origin)
                    yield _restored(key, chunk[prefix:], headers, part)
                else:
                    yield _restored(key, np.ascontiguousarray(ds[i]).reshape(-1), headers, part)
                continue
            # a file pvaflow did not write: frames 1, 2, ...
            now = EpicsTime.now()
            if BSHUF_FILTER in filter_ids and len(filter_ids) == 1:
                _mask, chunk = ds.id.read_direct_chunk(origin)
                shape = tuple(ds.shape[1:])
                dtype = np.dtype(ds.dtype)
                frame = Frame(np.frombuffer(chunk, np.uint8), i + 1, now, now,
                              codec=Codec("bslz4", dtype, shape,
                                          int(np.prod(shape)) * dtype.itemsize))
            else:
                frame = Frame(np.ascontiguousarray(ds[i]), i + 1, now, now)
            yield _encoded(frame)


def read_npy(path: Path) -> Iterator[Record]:
    stack = np.load(path, mmap_mode="r")
    side = path.with_suffix(".jsonl")
    if side.exists():
        with open(side) as fh:
            for i, line in enumerate(fh):
                meta = json.loads(line)
                k = meta["kafka"]
                yield _restored(bytes.fromhex(k["key"]), None, k["headers"], k["partition"],
                                image=stack[i])
        return
    for i in range(len(stack)):
        now = EpicsTime.now()
        yield _encoded(Frame(np.ascontiguousarray(stack[i]), i + 1, now, now))


def read_tiffs(paths: Sequence[Path], first: int) -> Iterator[Record]:
    import tifffile

    for i, path in enumerate(paths):
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            image = page.asarray()
            desc = getattr(page, "description", "")
        try:
            k = json.loads(desc)["kafka"]
        except (ValueError, KeyError, TypeError):
            now = EpicsTime.now()
            yield _encoded(Frame(np.ascontiguousarray(image), first + i, now, now))
            continue
        yield _restored(bytes.fromhex(k["key"]), None, k["headers"], k["partition"],
                        image=image)


def records(paths: Sequence[Path]) -> Iterator[Record]:
    tiffs: list[Path] = []
    for path in paths:
        if not path.exists():
            raise UsageError(f"{path}: no such file")
        fmt = FORMATS.get(path.suffix.lower())
        if fmt == "tiff":
            tiffs.append(path)
            continue
        if tiffs:
            yield from read_tiffs(tiffs, 1)
            tiffs = []
        if fmt == "h5":
            yield from read_h5(path)
        elif fmt == "npy":
            yield from read_npy(path)
        else:
            raise UsageError(f"{path}: cannot replay {path.suffix or 'this'} files",
                             hint="replay .h5/.hdf5/.nxs, .npy or .tif/.tiff")
    if tiffs:
        yield from read_tiffs(tiffs, 1)


def count(paths: Sequence[Path]) -> int | None:
    """Frames in ``paths`` (for the progress bar), when cheap to know."""
    n = 0
    for path in paths:
        fmt = FORMATS.get(path.suffix.lower())
        try:
            if fmt == "h5":
                import h5py

                with h5py.File(path, "r") as h5:
                    n += int(h5["entry/data/data"].shape[0])
            elif fmt == "npy":
                n += len(np.load(path, mmap_mode="r"))
            else:
                n += 1
        except (OSError, KeyError, ValueError):
            return None
    return n


def fresh(rec: Record, uid: int) -> Record:
    """``rec`` with uniqueId ``uid`` (key and ``pf.uid``)."""
    headers = [(k, str(uid).encode() if k == "pf.uid" else v) for k, v in rec.headers]
    return Record(codec.encode_key(uid), rec.value, headers, rec.partition)


# -- the command -------------------------------------------------------------------------------

def rate_arg(text: str) -> float | None:
    if text.lower() == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected frames per second or 'max', "
                                         f"got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a rate is > 0, got {value:g}")
    return value


def build_parser() -> Parser:
    p = Parser(prog=PROG, description=(
        "Send frames from files (what pvaflow export writes, NeXus/areaDetector HDF5, NPY "
        "stacks, TIFF series) to a topic, with their original or fresh uniqueIds."))
    p.add_argument("files", nargs="+", metavar="FILE", help="files to replay, in order")
    p.add_argument(*flags("--topic"), metavar="TOPIC", help="topic to write (required)")
    p.add_argument("--partitions", type=positive_int, default=1, metavar="N",
                   help="partitions when creating the topic (default: 1)")
    p.add_argument("--rate", type=rate_arg, default=None, metavar="FPS|max",
                   help="frames per second, or max (default: max)")
    p.add_argument("--fresh-ids", action="store_true",
                   help="number the frames from --first-id instead of keeping their uniqueIds")
    p.add_argument("--first-id", type=int, default=1, metavar="ID",
                   help="first uniqueId with --fresh-ids (default: 1)")
    add_kafka_args(p)
    add_log_args(p)
    return p


def replay(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if not args.topic:
        raise UsageError("--topic TOPIC is required: where to replay to")
    paths = [Path(f) for f in args.files]
    for path in paths:
        if not path.exists():
            raise UsageError(f"{path}: no such file")
    kafka = Kafka.from_args(args)
    kafka.check_reachable()
    parts = ensure_topic(args.topic, args.partitions, admin=kafka.admin(), strict=False)
    producer = kafka.producer()
    stop = threading.Event()
    sender = Sender(producer, stop=stop, on_full="fail", health=kafka.health)
    failed: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    sent = 0
    uid = args.first_id
    start = time.monotonic()
    with tqdm(total=count(paths), unit="frame", desc=f"replay -> {args.topic}", disable=None,
              file=sys.stderr) as bar:
        for rec in records(paths):
            if args.fresh_ids:
                rec = fresh(rec, uid)
                uid += 1
            if args.rate is not None:
                wait = start + sent / args.rate - time.monotonic()
                if wait > 0:
                    producer.poll(wait)
            part = rec.partition if rec.partition is not None and rec.partition < parts \
                else None
            sender.send(args.topic, rec.value, rec.key, partition=part, headers=rec.headers,
                        on_delivery=delivered)
            producer.poll(0)
            sent += 1
            bar.update()
            kafka.health.check()
    left = producer.flush(60)
    if left or failed:
        raise KafkaFailure(f"{left + len(failed)} of {sent} frames were not delivered to "
                           f"{args.topic}" + (f": {failed[0]}" if failed else ""))
    took = time.monotonic() - start
    print(f"replayed {sent} frames from {len(paths)} file(s) to {args.topic} in {took:.1f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    return run_command(PROG, lambda: replay(args))


if __name__ == "__main__":
    sys.exit(main())
