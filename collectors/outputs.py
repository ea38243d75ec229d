"""Where ordered frames go besides the output topic: a PVA channel and files.

Files are one per frame, named by uniqueId, so rewriting a frame after a crash (it was written
but its transaction did not commit) overwrites the same file instead of duplicating it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pvaflow.frame import Frame

log = logging.getLogger(__name__)

FORMATS = ("npy", "h5", "tiff")


class Output(Protocol):
    def write(self, frame: Frame) -> None: ...
    def close(self) -> None: ...


class FileWriter:
    """``<dir>/<prefix><uniqueId:08d>.<format>``; the array is stored as decoded (a compressed
    frame is stored as its compressed bytes, with the codec in the HDF5 attributes)."""

    def __init__(self, directory: str, fmt: str = "npy", prefix: str = "frame_") -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown output format {fmt!r}; one of: {', '.join(FORMATS)}")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fmt, self.prefix = fmt, prefix
        self.written = 0

    def path(self, unique_id: int) -> Path:
        return self.dir / f"{self.prefix}{unique_id:08d}.{self.fmt}"

    def write(self, frame: Frame) -> None:
        path = self.path(frame.unique_id)
        tmp = path.with_name(path.name + ".tmp")
        if self.fmt == "npy":
            with open(tmp, "wb") as fh:
                np.save(fh, frame.array)
        elif self.fmt == "h5":
            import h5py

            with h5py.File(tmp, "w") as h5:
                ds = h5.create_dataset("data", data=frame.array)
                ds.attrs["uniqueId"] = frame.unique_id
                ds.attrs["timestamp"] = frame.timestamp.seconds + frame.timestamp.nanoseconds * 1e-9
                if frame.codec is not None:
                    ds.attrs["codec"] = frame.codec.name
                for a in frame.attributes:
                    _set_attr(ds.attrs, a.name, a.value)
        else:
            import tifffile

            tifffile.imwrite(tmp, frame.array)
        tmp.replace(path)  # atomic: a reader never sees a half-written frame
        self.written += 1

    def close(self) -> None:
        pass


def _set_attr(attrs: Any, name: str, value: Any) -> None:
    try:
        attrs[name] = value
    except (TypeError, ValueError):
        attrs[name] = str(value)


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

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
