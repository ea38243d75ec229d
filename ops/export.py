"""``pvaflow export TOPIC --to FILE``: a window of a frames topic to files.

Formats (from ``--format``, else the extension of ``--to``):

* ``h5`` (.h5 .hdf5 .nxs): NeXus-style ``/entry/data/data`` of shape (N, ...), one frame per
  chunk. Compressed frames are written as they are, with direct chunk writes: bslz4 under the
  bitshuffle filter (32008), lz4 under the LZ4 filter (32004), blosc under the Blosc filter
  (32001), so any HDF5 reader with hdf5plugin decodes them and no pixel is recompressed.
  ``/entry/data/uniqueId`` and ``/entry/data/timestamp`` hold ids and frame times, numeric
  scalar NDAttributes go to ``/entry/instrument/NDAttributes/<name>``, and ``/entry/pvaflow``
  keeps what ``pvaflow replay`` needs to rebuild each record bit for bit (its headers, Kafka
  time, partition, offset, and how many framing bytes the chunk got).
* ``npy`` (.npy): one array of shape (N, ...) of the pixels (decoded) and a sidecar
  ``<stem>.jsonl``, one JSON object per frame (uniqueId, times, attributes, headers).
* ``tiff`` (.tif .tiff): one file per frame, ``<stem>_<index:06d>.tif``, pixels decoded; the
  frame's JSON (as in the sidecar) is the TIFF image description.
* ``csv`` (.csv): for 1-D time-series streams (frames of shape (n,) or (n, channels), as
  :mod:`pvaflow.stream` sends them): one row per sample: uniqueId, frame time, sample index,
  then one column per channel.

The window is ``--from-time / --to-time / --from-offset`` (default: all the topic holds now);
no consumer group is joined and nothing is committed.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from confluent_kafka import Message

from pvaflow import codec
from pvaflow.codecs import Bslz4
from pvaflow.component import run_command
from pvaflow.errors import FrameError, UsageError
from pvaflow.frame import Frame
from pvaflow.kafka.client import Kafka
from pvaflow.kafka.positions import ReplaySpec, WindowReader
from pvaflow.options import Parser, add_kafka_args, add_log_args, add_replay_args, parse

PROG = "pvaflow export"
FORMAT_VERSION = 1
FORMATS = {".h5": "h5", ".hdf5": "h5", ".nxs": "h5", ".npy": "npy", ".tif": "tiff",
           ".tiff": "tiff", ".csv": "csv"}

# HDF5 filters a compressed frame's payload is written under, untouched.
H5_FILTERS = {"bslz4": 32008, "lz4": 32004, "blosc": 32001}
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


# -- per-frame metadata (sidecars, TIFF descriptions, /entry/pvaflow/headers) -----------------

def headers_text(headers: Any) -> str:
    """A record's headers as JSON text (values base64, so any bytes survive)."""
    items = headers.items() if isinstance(headers, dict) else (headers or [])
    return json.dumps([[k, None if v is None else base64.b64encode(
        v.encode() if isinstance(v, str) else v).decode()] for k, v in items],
        separators=(",", ":"))


def headers_from_text(text: str | bytes) -> codec.Headers:
    return [(k, None if v is None else base64.b64decode(v)) for k, v in json.loads(text)]


def frame_meta(msg: Message, frame: Frame) -> dict[str, Any]:
    """What a sidecar line says about one frame: readable fields, and the exact record."""
    return {
        "uniqueId": frame.unique_id,
        "timestamp": list(frame.timestamp), "dataTimestamp": list(frame.data_timestamp),
        "codec": frame.codec.name if frame.codec is not None else None,
        "attributes": {a.name: a.value for a in frame.attributes},
        "kafka": {"timestamp": msg.timestamp()[1], "partition": msg.partition(),
                  "offset": msg.offset(), "key": (msg.key() or b"").hex(),
                  "headers": headers_text(msg.headers())},
    }


# -- writers ------------------------------------------------------------------------------------

class Writer(Protocol):
    def write(self, msg: Message, frame: Frame) -> None: ...
    def close(self) -> None: ...


class H5Writer:
    """NeXus-style HDF5, one frame per chunk, compressed frames by direct chunk writes."""

    GROW = 64

    def __init__(self, path: Path, topic: str) -> None:
        import h5py

        self.path, self.topic = path, topic
        self.h5 = h5py.File(path, "w")
        self.n = 0
        self._shape: tuple[int, ...] | None = None
        self._dtype: np.dtype[Any] | None = None
        self._codec: str | None = None
        self._ds: dict[str, Any] = {}
        self._attrs: dict[str, Any] = {}

    def _create(self, frame: Frame) -> None:
        import h5py
        import hdf5plugin

        h5 = self.h5
        image_shape = frame.codec.shape if frame.codec is not None else frame.array.shape
        dtype = np.dtype(frame.codec.dtype if frame.codec is not None
                         else frame.array.dtype).newbyteorder("<")
        self._shape, self._dtype = tuple(image_shape), dtype
        self._codec = frame.codec.name if frame.codec is not None else None
        entry = h5.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry.attrs["default"] = "data"
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        data.attrs["signal"] = "data"
        filters: dict[str, Any] = {}
        if self._codec == "bslz4":
            filters = dict(hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))
        elif self._codec == "lz4":
            filters = dict(hdf5plugin.LZ4(nbytes=0))
        elif self._codec == "blosc":
            filters = dict(hdf5plugin.Blosc())
        elif self._codec is not None:
            raise UsageError(f"frames compressed with {self._codec!r} cannot go to HDF5 as "
                             f"they are", hint="use --format npy or tiff (pixels decoded)")
        chunk = (1, *self._shape) if self._shape else None
        ds = data.create_dataset("data", shape=(0, *self._shape), dtype=dtype,
                                 maxshape=(None, *self._shape), chunks=chunk, **filters)
        if self._codec:
            ds.attrs["pvaflow_codec"] = self._codec
        self._ds["data"] = ds
        self._ds["uniqueId"] = data.create_dataset("uniqueId", (0,), "<i8", maxshape=(None,))
        self._ds["timestamp"] = data.create_dataset("timestamp", (0,), "<f8", maxshape=(None,))
        self._ds["timestamp"].attrs["units"] = "s"
        pf = entry.create_group("pvaflow")
        pf.attrs["NX_class"] = "NXcollection"
        pf.attrs["topic"] = self.topic
        pf.attrs["format_version"] = FORMAT_VERSION
        text = h5py.string_dtype()
        for name, dt in (("headers", text), ("key", h5py.vlen_dtype(np.uint8)),
                         ("kafka_timestamp", "<i8"), ("partition", "<i4"), ("offset", "<i8"),
                         ("chunk_prefix", "u1")):
            self._ds[name] = pf.create_dataset(name, (0,), dt, maxshape=(None,))
        self._nda = entry.create_group("instrument").create_group("NDAttributes")
        self._nda.parent.attrs["NX_class"] = "NXinstrument"
        self._nda.attrs["NX_class"] = "NXcollection"

    def write(self, msg: Message, frame: Frame) -> None:
        if self._shape is None:
            self._create(frame)
        shape = frame.codec.shape if frame.codec is not None else frame.array.shape
        name = frame.codec.name if frame.codec is not None else None
        dtype = np.dtype(frame.codec.dtype if frame.codec is not None else frame.array.dtype)
        if tuple(shape) != self._shape or name != self._codec or \
                dtype.newbyteorder("<") != self._dtype:
            raise UsageError(
                f"frame {frame.unique_id} is {dtype}{tuple(shape)} ({name or 'raw'}), the "
                f"file holds {self._dtype}{self._shape} ({self._codec or 'raw'}); one HDF5 "
                f"dataset holds one kind of frame",
                hint="export the runs separately (pvaflow runs TOPIC shows them) or use "
                     "--format tiff")
        i = self.n
        if i >= len(self._ds["data"]):
            for ds in self._ds.values():
                ds.resize(i + self.GROW, axis=0)
        prefix = 0
        if frame.codec is None:
            self._ds["data"][i] = frame.array
        else:
            chunk, prefix = h5_chunk(frame)
            self._ds["data"].id.write_direct_chunk((i, *(0,) * len(shape)), chunk)
        ts = frame.timestamp
        self._ds["uniqueId"][i] = frame.unique_id
        self._ds["timestamp"][i] = ts.seconds + ts.nanoseconds * 1e-9
        self._ds["headers"][i] = headers_text(msg.headers())
        self._ds["key"][i] = np.frombuffer(msg.key() or b"", np.uint8)
        self._ds["kafka_timestamp"][i] = msg.timestamp()[1]
        self._ds["partition"][i] = msg.partition() or 0
        self._ds["offset"][i] = msg.offset() or 0
        self._ds["chunk_prefix"][i] = prefix
        for a in frame.attributes:
            if isinstance(a.value, bool | int | float) and not isinstance(a.value, str):
                self._attribute(a.name)[i] = a.value
        self.n += 1

    def _attribute(self, name: str) -> Any:
        ds = self._attrs.get(name)
        if ds is None:
            ds = self._nda.create_dataset(name.replace("/", "_"), (len(self._ds["data"]),),
                                          "<f8", maxshape=(None,), fillvalue=math.nan)
            self._attrs[name] = ds
        if len(ds) < len(self._ds["data"]):
            ds.resize(len(self._ds["data"]), axis=0)
        return ds

    def close(self) -> None:
        for ds in (*self._ds.values(), *self._attrs.values()):
            ds.resize(self.n, axis=0)
        self.h5.close()


def h5_chunk(frame: Frame) -> tuple[bytes, int]:
    """The HDF5 chunk for a compressed frame's payload, and how many framing bytes were put
    in front of it (``replay`` takes them off again to restore the record)."""
    assert frame.codec is not None
    payload = np.ascontiguousarray(frame.array).view(np.uint8).tobytes()
    c = frame.codec
    nbytes = c.uncompressed_size
    framed = len(payload) >= 12 and _U64.unpack_from(payload, 0)[0] == nbytes
    if c.name == "bslz4":
        if framed:  # already behind the HDF5/Dectris header (pvapy-ad-sim-server -hcm)
            return payload, 0
        block = Bslz4.default_block(np.dtype(c.dtype).itemsize) * np.dtype(c.dtype).itemsize
        return _U64.pack(nbytes) + _U32.pack(block) + payload, 12
    if c.name == "lz4":
        if framed and len(payload) >= 16:
            return payload, 0
        if len(payload) == nbytes:  # the HDF5 LZ4 filter would read it as a raw block
            raise FrameError(f"frame {frame.unique_id}: an LZ4 block as large as its data "
                             f"cannot be framed for HDF5; use --format npy")
        return _U64.pack(nbytes) + _U32.pack(nbytes) + _U32.pack(len(payload)) + payload, 16
    return payload, 0  # blosc: a Blosc chunk is what the Blosc filter stores


class NpyWriter:
    """``FILE.npy`` (N, ...) written as frames come (the header is rewritten at close) and
    ``FILE.jsonl``, one line per frame."""

    def __init__(self, path: Path, topic: str) -> None:
        self.path = path
        self.fh = open(path, "wb")  # noqa: SIM115 (closed by close())
        self.side = open(path.with_suffix(".jsonl"), "w")  # noqa: SIM115
        self.n = 0
        self._shape: tuple[int, ...] | None = None
        self._dtype: np.dtype[Any] | None = None
        self._header_len = 0

    def _header(self, n: int) -> bytes:
        assert self._shape is not None and self._dtype is not None
        d = {"descr": np.lib.format.dtype_to_descr(self._dtype), "fortran_order": False,
             "shape": (n, *self._shape)}
        text = repr(d).encode("latin1")
        # room for any count: the header keeps one size from the first frame to the last
        width = self._header_len or (10 + len(text) + 24 + 63) // 64 * 64
        self._header_len = width
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", width - 10) + \
            text.ljust(width - 11) + b"\n"

    def write(self, msg: Message, frame: Frame) -> None:
        image = np.ascontiguousarray(frame.image)
        if self._shape is None:
            self._shape, self._dtype = tuple(image.shape), image.dtype.newbyteorder("<")
            self.fh.write(self._header(0))
        if tuple(image.shape) != self._shape or image.dtype.newbyteorder("<") != self._dtype:
            raise UsageError(f"frame {frame.unique_id} is {image.dtype}{image.shape}, the "
                             f"stack holds {self._dtype}{self._shape}",
                             hint="export the runs separately, or use --format tiff")
        self.fh.write(image.astype(self._dtype, copy=False).tobytes())
        self.side.write(json.dumps(frame_meta(msg, frame), default=_plain) + "\n")
        self.n += 1

    def close(self) -> None:
        if self._shape is None:  # nothing exported: an empty (0,) stack
            self._shape, self._dtype = (), np.dtype("<u1")
            self.fh.write(self._header(0))
        self.fh.seek(0)
        self.fh.write(self._header(self.n))
        self.fh.close()
        self.side.close()


class TiffWriter:
    """``<stem>_<index:06d>.tif``, one per frame, the frame's JSON as the description."""

    def __init__(self, path: Path, topic: str) -> None:
        self.dir, self.stem, self.suffix = path.parent, path.stem, path.suffix
        self.n = 0

    def write(self, msg: Message, frame: Frame) -> None:
        import tifffile

        meta = json.dumps(frame_meta(msg, frame), default=_plain)
        tifffile.imwrite(self.dir / f"{self.stem}_{self.n:06d}{self.suffix}",
                         np.ascontiguousarray(frame.image), description=meta, metadata=None)
        self.n += 1

    def close(self) -> None:
        pass


class CsvWriter:
    """One row per sample of 1-D (or samples x channels) time-series frames."""

    def __init__(self, path: Path, topic: str) -> None:
        self.fh = open(path, "w")  # noqa: SIM115 (closed by close())
        self.channels: int | None = None
        self.n = 0

    def write(self, msg: Message, frame: Frame) -> None:
        data = frame.image
        if data.ndim not in (1, 2):
            raise UsageError(f"frame {frame.unique_id} has shape {data.shape}: CSV holds "
                             f"time series (n,) or (n, channels)",
                             hint="use --format h5, npy or tiff for images")
        table = data.reshape(len(data), -1)
        if self.channels is None:
            self.channels = table.shape[1]
            cols = ["value"] if data.ndim == 1 else [f"ch{i}" for i in range(self.channels)]
            self.fh.write(",".join(["uniqueId", "timestamp", "sample", *cols]) + "\n")
        if table.shape[1] != self.channels:
            raise UsageError(f"frame {frame.unique_id} has {table.shape[1]} channels, earlier "
                             f"frames {self.channels}")
        ts = frame.timestamp
        head = f"{frame.unique_id},{ts.seconds}.{ts.nanoseconds:09d}"
        rows = (f"{head},{i}," + ",".join(map(repr, row)) for i, row in
                enumerate(table.tolist()))
        self.fh.write("\n".join(rows) + "\n")
        self.n += 1

    def close(self) -> None:
        self.fh.close()


WRITERS: dict[str, type[H5Writer] | type[NpyWriter] | type[TiffWriter] | type[CsvWriter]] = {
    "h5": H5Writer, "npy": NpyWriter, "tiff": TiffWriter, "csv": CsvWriter}


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def file_format(path: Path, given: str | None) -> str:
    if given:
        return given
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(f"cannot tell the format of {str(path)!r} from its extension",
                         hint=f"use --format {'|'.join(WRITERS)} or one of "
                              f"{', '.join(FORMATS)}")
    return fmt


# -- the command -------------------------------------------------------------------------------

def build_parser() -> Parser:
    p = Parser(prog=PROG, description=(
        "Export a window of a frames topic to HDF5 (NeXus-style, compressed frames kept as "
        "they are), an NPY stack, a TIFF series or CSV (time series)."))
    p.add_argument("topic", metavar="TOPIC", help="frames topic")
    p.add_argument("--to", metavar="FILE",
                   help="output file, required (.h5/.hdf5/.nxs, .npy, .tif/.tiff = "
                        "FILE_<index>.tif, .csv)")
    p.add_argument("--format", choices=tuple(WRITERS), default=None,
                   help="output format (default: from the extension of --to)")
    p.add_argument("--partition", type=int, action="append", default=None, metavar="N",
                   help="export only this partition; repeatable (default: all)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --to file")
    add_replay_args(p)
    add_kafka_args(p)
    add_log_args(p)
    return p


def export(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if not args.to:
        raise UsageError("--to FILE is required: where to export to")
    path = Path(args.to)
    fmt = file_format(path, args.format)
    if path.exists() and not args.overwrite:
        raise UsageError(f"{path} exists", hint="use --overwrite or another --to")
    if not path.parent.is_dir():
        raise UsageError(f"directory {path.parent} does not exist")
    kafka = Kafka.from_args(args)
    kafka.check_reachable()
    reader = WindowReader(kafka, args.topic, ReplaySpec.from_args(args),
                          partitions=args.partition)
    skipped = 0
    uids: list[int] = []
    writer: Writer | None = None
    try:
        total = reader.open()
        writer = WRITERS[fmt](path, args.topic)
        with tqdm(total=total, unit="frame", desc=f"export {args.topic}", disable=None,
                  file=sys.stderr) as bar:
            for msg in reader:
                bar.update()
                try:
                    frame = codec.decode(msg.key(), msg.value(), msg.headers())
                except FrameError:
                    skipped += 1
                    continue
                writer.write(msg, frame)
                uid = frame.unique_id
                uids[:] = [uid, uid] if not uids else [min(uids[0], uid), max(uids[1], uid)]
    finally:
        reader.close()
        if writer is not None:
            writer.close()
    n = getattr(writer, "n", 0)
    ids = f" (uniqueId {uids[0]}-{uids[1]})" if uids else ""
    extra = f", skipped {skipped} records that are not pvaflow frames" if skipped else ""
    print(f"exported {n} frames{ids} from {args.topic} to {path} ({fmt}){extra}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    return run_command(PROG, lambda: export(args))


if __name__ == "__main__":
    sys.exit(main())
