"""The collector's file outputs (no Kafka): one HDF5 file per collector, pixels for npy."""

from __future__ import annotations

from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
from pvaflow.collectors.outputs import FileWriter, H5Output, file_output

from pvaflow.codecs import recompress
from pvaflow.frame import Frame


def frame(uid: int, codec: str = "bslz4") -> Frame:
    pixels = np.full((16, 24), uid, np.uint16)
    pixels[uid % 16] = 1000
    return recompress(Frame(pixels, unique_id=uid), codec)


def test_h5_is_one_file_per_collector_and_a_replay_does_not_duplicate(tmp_path: Path) -> None:
    out = file_output(str(tmp_path), "h5", name="my group.1")
    assert isinstance(out, H5Output) and out.path.name == "my_group.1.h5"
    for uid in (1, 2, 3):
        out.write(frame(uid))
    out.flush()
    out.close()
    again = file_output(str(tmp_path), "h5", name="my group.1")  # restarted after a crash
    for uid in (3, 4):
        again.write(frame(uid, "lz4"))
    again.close()
    with h5py.File(tmp_path / "my_group.1.h5") as h:
        ds = h["entry/data/data"]
        assert list(h["entry/data/uniqueId"]) == [1, 2, 3, 4]
        assert ds.id.get_create_plist().get_filter(0)[0] == hdf5plugin.BSHUF_ID
        for row, uid in enumerate((1, 2, 3, 4)):
            np.testing.assert_array_equal(ds[row], frame(uid, "none").image)


def test_h5_without_compression(tmp_path: Path) -> None:
    out = file_output(str(tmp_path), "h5", name="c", h5_compression="none")
    out.write(frame(1))
    out.close()
    with h5py.File(tmp_path / "c.h5") as h:
        assert h["entry/data/data"].id.get_create_plist().get_nfilters() == 0
        np.testing.assert_array_equal(h["entry/data/data"][0], frame(1, "none").image)


def test_npy_holds_the_pixels_of_a_compressed_frame(tmp_path: Path) -> None:
    out = file_output(str(tmp_path), "npy")
    assert isinstance(out, FileWriter)
    out.write(frame(7, "blosc"))
    np.testing.assert_array_equal(np.load(tmp_path / "frame_00000007.npy"),
                                  frame(7, "none").image)
