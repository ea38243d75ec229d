"""Where ordered frames go besides the output topic: a PVA channel and files.

Every output gets the frame after the collector's ``--output-codec`` policy.

* ``npy`` / ``tiff``: one file per frame, named by uniqueId, holding the pixels (a compressed
  frame is decoded). Rewriting a frame after a crash (it was written but its transaction did
  not commit) overwrites the same file instead of duplicating it.
* ``h5``: one NeXus-style file per collector, ``<dir>/<group>.<collector id>.h5``
  (:mod:`pvaflow.hdf5`): ``/entry/data/data`` grows by one frame per chunk, in the emitted
  (uniqueId) order, with ``/entry/data/uniqueId`` and ``/entry/data/timestamp`` beside it.
  ``bslz4`` frames are written as their compressed chunks (``--h5-compression bslz4``, the
  default; other frames are compressed once), or as plain pixels with ``none``. The file is
  flushed before every commit of the collector's transaction, and a restarted collector
  continues the same file: a frame emitted again after a crash rewrites its own row (found
  by uniqueId), so the file holds each frame once.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pvaflow.frame import Frame
from pvaflow.hdf5 import H5Writer

log = logging.getLogger(__name__)

FORMATS = ("npy", "h5", "tiff")


class Output(Protocol):
    def write(self, frame: Frame) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def file_output(directory: str, fmt: str = "npy", *, name: str = "collector",
                h5_compression: str = "bslz4") -> Output:
    """The file output for ``--output-dir``/``--output-format``; ``name`` names the h5 file."""
    if fmt == "h5":
        return H5Output(directory, name, h5_compression)
    return FileWriter(directory, fmt)


class H5Output:
    """All frames in ``<directory>/<name>.h5`` (see :class:`pvaflow.hdf5.H5Writer`)."""

    def __init__(self, directory: str, name: str, compression: str = "bslz4") -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        self.writer = H5Writer(self.dir / f"{safe}.h5", compression)

    @property
    def path(self) -> Path:
        return self.writer.path

    @property
    def written(self) -> int:
        return self.writer.written

    def write(self, frame: Frame) -> None:
        self.writer.write(frame)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class FileWriter:
    """``<dir>/<prefix><uniqueId:08d>.<format>`` (npy or tiff) holding the frame's pixels."""

    def __init__(self, directory: str, fmt: str = "npy", prefix: str = "frame_") -> None:
        if fmt not in ("npy", "tiff"):
            raise ValueError(f"one file per frame is npy or tiff, not {fmt!r}")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fmt, self.prefix = fmt, prefix
        self.written = 0

    def path(self, unique_id: int) -> Path:
        return self.dir / f"{self.prefix}{unique_id:08d}.{self.fmt}"

    def write(self, frame: Frame) -> None:
        path = self.path(frame.unique_id)
        tmp = path.with_name(path.name + ".tmp")
        pixels = frame.image  # a compressed frame is decoded (FrameError when corrupt)
        if self.fmt == "npy":
            with open(tmp, "wb") as fh:
                np.save(fh, pixels)
        else:
            import tifffile

            tifffile.imwrite(tmp, pixels)
        tmp.replace(path)  # atomic: a reader never sees a half-written frame
        self.written += 1

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class PvaOutput:
    """Serves ordered frames as an NTNDArray channel (what PvaPy's collector output was).

    The server starts with the first frame, so a collector that cannot reach Kafka never
    opened a PVA server."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.server: Any = None

    def write(self, frame: Frame) -> None:
        from pvaflow.ntnda import ntnda_from_frame

        nt = ntnda_from_frame(frame)
        if self.server is None:
            import pvaccess as pva

            self.server = pva.PvaServer()
            self.server.addRecord(self.channel, nt)
        else:
            self.server.update(self.channel, nt)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
