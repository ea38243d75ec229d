"""``file-writer``: saves frames to files and passes them on (PvaPy's adOutputFileProcessor).

Config: ``{"format": "hdf5"|"npy"|"tiff", "directory": ".", "name": "frame_{uid:06d}",
"passthrough": true}``. NPY and TIFF write one file per frame (name from ``name``; ``{uid}``
is the uniqueId). HDF5 appends every frame to one file per consumer,
``<directory>/<file or frames_<pid>.h5>``: dataset ``/entry/data/data`` (frames along axis 0,
chunked one frame per chunk) and ``/entry/data/unique_id``; all frames in it must share shape
and dtype. Files are flushed every ``flush_seconds`` (default 1) and closed on stop.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from pvaflow.frame import Frame
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
        self._h5: Any = None
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
        if frame.codec is not None:
            raise ValueError(f"frame {frame.unique_id} is {frame.codec.name}-encoded; decode "
                             "it before writing")
        if self.format == "hdf5":
            self._append_h5(frame)
        else:
            path = self.directory / (self.name.format(uid=frame.unique_id) + "." + self.format)
            if self.format == "npy":
                np.save(path, frame.array)
            else:
                self._tifffile.imwrite(path, frame.array)
        self.n_written += 1
        self.n_bytes += frame.array.nbytes
        return frame if self.passthrough else None

    def _append_h5(self, frame: Frame) -> None:
        import h5py

        if self._h5 is None:
            name = str(self.config.get("file") or f"frames_{os.getpid()}.h5")
            self._h5 = h5py.File(self.directory / name, "a")
            grp = self._h5.require_group("entry/data")
            if "data" not in grp:
                shape = frame.array.shape
                grp.create_dataset("data", shape=(0, *shape), maxshape=(None, *shape),
                                   dtype=frame.array.dtype, chunks=(1, *shape))
                grp.create_dataset("unique_id", shape=(0,), maxshape=(None,), dtype="i8",
                                   chunks=(4096,))
        grp = self._h5["entry/data"]
        data, uids = grp["data"], grp["unique_id"]
        if data.shape[1:] != frame.array.shape or data.dtype != frame.array.dtype:
            raise ValueError(f"frame {frame.unique_id} is {frame.array.dtype}{frame.array.shape}"
                             f"; this file holds {data.dtype}{data.shape[1:]}")
        n = data.shape[0]
        data.resize(n + 1, axis=0)
        uids.resize(n + 1, axis=0)
        data[n] = frame.array
        uids[n] = frame.unique_id
        now = time.monotonic()
        if now >= self._next_flush:
            self._h5.flush()
            self._next_flush = now + self.flush_seconds

    def stop(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
