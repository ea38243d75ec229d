"""``pvaflow demo --realistic``: compressed diffraction frames from a real sim server through a
real broker, bridge, two rotate consumers and the collector into an HDF5 file that opens with
h5py + hdf5plugin and holds the rotated source frames in uniqueId order."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pvaflow.ops.synthetic import diffraction_frames

from pvaflow.kafka.settings import ENV_BOOTSTRAP

pytestmark = pytest.mark.integration

SIZE, FRAMES = 256, 8


def test_realistic_demo_writes_an_hdf5_file_of_the_frames(
    kafka_bootstrap: str, tmp_path: Path,
) -> None:
    import h5py
    import hdf5plugin  # noqa: F401

    r = subprocess.run(
        [sys.executable, "-m", "pvaflow.cli", "demo", "--realistic", "--runtime", "12",
         "--size", str(SIZE), "--frames", str(FRAMES), "--fps", "10"],
        env={**os.environ, ENV_BOOTSTRAP: kafka_bootstrap}, cwd=tmp_path,
        capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    found = re.search(r"HDF5 file (\S+\.h5): ", r.stdout)
    assert found, r.stdout[-3000:]
    path = Path(found.group(1))
    assert path.is_file() and path.is_relative_to(tmp_path)
    source = np.stack(list(diffraction_frames(FRAMES, (SIZE, SIZE), np.uint16)))
    with h5py.File(path, "r") as f:
        data = f["entry/data/data"]
        uids = f["entry/data/uniqueId"][:]
        assert data.dtype == np.uint16 and data.shape[1:] == (SIZE, SIZE)
        assert data.shape[0] == len(uids) >= 20  # ~10 s at 10 fps, minus start-up
        assert list(uids) == sorted(uids)
        for row in range(0, data.shape[0], 7):
            # the sim serves the file's frames round-robin from uniqueId 1; rotate swaps axes
            want = source[(int(uids[row]) - 1) % FRAMES].T
            assert np.array_equal(data[row], want), f"row {row} (uniqueId {uids[row]})"
