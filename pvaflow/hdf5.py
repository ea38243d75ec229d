"""Frames into one NeXus-style HDF5 file, compressed chunks written as they came.

The file writer plugin and the collector's ``--output-format h5`` both use :class:`H5Writer`:

* ``/entry`` (``NX_class = NXentry``) and ``/entry/data`` (``NXdata``, ``signal = "data"``);
* ``/entry/data/data``: every frame along axis 0, one frame per chunk;
* ``/entry/data/uniqueId`` (int64) and ``/entry/data/timestamp`` (float64, EPICS time as
  seconds since the Unix epoch) beside it, one row per frame.

With ``compression="bslz4"`` (the default) the dataset carries the HDF5 bitshuffle filter
(id 32008, LZ4, the options ``hdf5plugin.Bitshuffle(cname="lz4")`` sets) and every chunk is
written with ``write_direct_chunk``: a ``bslz4`` frame's payload goes into the file as it is
(only the filter's 12-byte header is added when the payload has none), so a compressed stream
is never decompressed nor compressed again. Frames in another form are compressed once.
``compression="none"`` stores plain pixels (compressed frames are decoded). The file reads
back with h5py once ``hdf5plugin`` is imported, and with any HDF5 tool that has the
bitshuffle plugin.

Writing a uniqueId the file already holds rewrites that frame's row instead of adding one
(the ids of an existing file are read when it is opened), so a stage that emits a frame again
after a crash does not duplicate it. :meth:`H5Writer.flush` makes what was written durable;
the collector calls it before each commit of its offsets.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FrameError
from .frame import Frame

DATA = "entry/data/data"
UIDS = "entry/data/uniqueId"
TIMES = "entry/data/timestamp"
COMPRESSIONS = ("bslz4", "none")
BITSHUFFLE_FILTER = 32008
_HEADER = struct.Struct(">QI")


def bslz4_chunk(frame: Frame) -> bytes:
    """The chunk the HDF5 bitshuffle filter stores for ``frame``'s pixels: its 12-byte header
    (total bytes, block size in bytes; both big-endian) and the size-prefixed LZ4 blocks.

    A ``bslz4`` frame's payload is used as it is (it may already carry the header, as frames
    streamed from an HDF5 file by ``pvapy-ad-sim-server -hcm`` do); any other frame's pixels are
    compressed once."""
    from .codecs import Bslz4, compress_image

    codec = frame.codec
    if codec is not None and codec.name == "bslz4":
        payload = np.ascontiguousarray(frame.array).reshape(-1).view(np.uint8)
        nbytes, itemsize = codec.uncompressed_size, np.dtype(codec.dtype).itemsize
    else:
        payload, made = compress_image(frame.image, "bslz4")
        nbytes, itemsize = made.uncompressed_size, np.dtype(made.dtype).itemsize
    raw = payload.tobytes()
    if len(raw) >= _HEADER.size and _HEADER.unpack_from(raw)[0] == nbytes:
        return raw
    block = Bslz4.default_block(itemsize) * itemsize
    return _HEADER.pack(nbytes, block) + raw


class H5Writer:
    """Appends frames to ``path`` (created, or opened and continued). All frames of one file
    share shape and dtype; a frame that does not fit raises ``FrameError``."""

    def __init__(self, path: str | Path, compression: str = "bslz4") -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"HDF5 compression must be one of {', '.join(COMPRESSIONS)}, "
                             f"not {compression!r}")
        self.path = Path(path)
        self.compression = compression
        self.written = 0
        self._h5: Any = None
        self._rows: dict[int, int] = {}

    def _open(self, frame: Frame) -> Any:
        import h5py
        import hdf5plugin

        self.path.parent.mkdir(parents=True, exist_ok=True)
        h5 = self._h5 = h5py.File(self.path, "a")
        if DATA in h5:
            uids = h5[UIDS][...]
            self._rows = {int(u): i for i, u in enumerate(uids)}
            filters = h5[DATA].id.get_create_plist()
            has = any(filters.get_filter(i)[0] == BITSHUFFLE_FILTER
                      for i in range(filters.get_nfilters()))
            self.compression = "bslz4" if has else "none"
            return h5
        entry = h5.require_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        grp = h5.require_group("entry/data")
        grp.attrs["NX_class"] = "NXdata"
        grp.attrs["signal"] = "data"
        shape, dtype = frame.shape, np.dtype(frame.dtype).newbyteorder("<")
        extra = dict(hdf5plugin.Bitshuffle(cname="lz4")) if self.compression == "bslz4" else {}
        grp.create_dataset("data", shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                           chunks=(1, *shape), **extra)
        grp.create_dataset("uniqueId", shape=(0,), maxshape=(None,), dtype="<i8",
                           chunks=(4096,))
        grp.create_dataset("timestamp", shape=(0,), maxshape=(None,), dtype="<f8",
                           chunks=(4096,))
        grp["timestamp"].attrs["units"] = "s"
        self._rows = {}
        return h5

    def write(self, frame: Frame) -> None:
        h5 = self._h5 if self._h5 is not None else self._open(frame)
        data = h5[DATA]
        if tuple(data.shape[1:]) != tuple(frame.shape) or data.dtype != frame.dtype:
            raise FrameError(f"frame {frame.unique_id} is {frame.dtype}{frame.shape}; "
                             f"{self.path.name} holds {data.dtype}{data.shape[1:]}")
        row = self._rows.get(frame.unique_id)
        if row is None:  # a new frame: one more row (a frame seen before keeps its row)
            row = data.shape[0]
            for name in (DATA, UIDS, TIMES):
                h5[name].resize(row + 1, axis=0)
            self._rows[frame.unique_id] = row
        if self.compression == "bslz4":
            data.id.write_direct_chunk((row,) + (0,) * len(frame.shape), bslz4_chunk(frame), 0)
        else:
            data[row] = frame.image
        h5[UIDS][row] = frame.unique_id
        h5[TIMES][row] = frame.timestamp.to_float()
        self.written += 1

    def flush(self) -> None:
        if self._h5 is not None:
            self._h5.flush()

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
