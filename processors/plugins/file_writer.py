"""``file-writer``: saves frames to files and passes them on (PvaPy's adOutputFileProcessor).

Config: ``{"format": "hdf5"|"npy"|"tiff", "directory": ".", "name": "frame_{uid:06d}",
"file": "frames_<pid>.h5", "compression": "bslz4"|"none", "passthrough": true}``.

* NPY and TIFF: one file per frame (name from ``name``; ``{uid}`` is the uniqueId) holding
  the pixels (a compressed frame is decoded).
* HDF5: every frame goes into one NeXus-style file per consumer, ``<directory>/<file>``
  (:mod:`pvaflow.hdf5`): ``/entry/data/data`` (frames along axis 0, one chunk per frame) with
  ``/entry/data/uniqueId`` and ``/entry/data/timestamp`` beside it; all frames of a file share
  shape and dtype. ``compression`` ``bslz4`` (default) stores chunks with the HDF5 bitshuffle
  filter, writing a ``bslz4`` frame's compressed bytes directly (no decompression);
  ``none`` stores plain pixels. A uniqueId written again (a frame reprocessed after a
  restart) rewrites its row. The file is flushed every ``flush_seconds`` (default 1) and
  closed on stop; name ``file`` per consumer (e.g. by consumer id) so that a restarted
  consumer continues its file.

The frame passed on is the input itself, untouched (compressed frames stay compressed).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from pvaflow.frame import Frame
from pvaflow.hdf5 import COMPRESSIONS, H5Writer
from pvaflow.plugin import Processor, StatValue

FORMATS = ("hdf5", "npy", "tiff")


class FileWriter(Processor):
    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__(config)
        fmt = str(self.config.get("format", "hdf5")).lower()
        self.format = {"h5": "hdf5", "tif": "tiff"}.get(fmt, fmt)
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {self.format!r}")
        self.directory = Path(str(self.config.get("directory", "."))).expanduser()
        self.name = str(self.config.get("name", "frame_{uid:06d}"))
        self.passthrough = bool(self.config.get("passthrough", True))
        self.flush_seconds = float(self.config.get("flush_seconds", 1.0))
        self.compression = str(self.config.get("compression", "bslz4")).lower()
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, not "
                             f"{self.compression!r}")
        self._h5: H5Writer | None = None
        self._next_flush = 0.0
        if self.format == "tiff":
            import tifffile  # fail at start, not on the first frame

            self._tifffile = tifffile
        self.reset_stats()

    def reset_stats(self) -> None:
        self.n_written = 0
        self.n_bytes = 0

    def get_stats(self) -> dict[str, StatValue]:
        return {"nWritten": self.n_written, "nBytes": self.n_bytes}

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def process(self, frame: Frame) -> Frame | None:
        if self.format == "hdf5":
            self._append_h5(frame)
        else:
            path = self.directory / (self.name.format(uid=frame.unique_id) + "." + self.format)
            if self.format == "npy":
                np.save(path, frame.image)
            else:
                self._tifffile.imwrite(path, frame.image)
        self.n_written += 1
        self.n_bytes += frame.nbytes
        return frame if self.passthrough else None

    def _append_h5(self, frame: Frame) -> None:
        if self._h5 is None:
            name = str(self.config.get("file") or f"frames_{os.getpid()}.h5")
            self._h5 = H5Writer(self.directory / name, self.compression)
        self._h5.write(frame)
        now = time.monotonic()
        if now >= self._next_flush:
            self._h5.flush()
            self._next_flush = now + self.flush_seconds

    def stop(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
