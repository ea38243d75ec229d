"""Compressed frames from a real ``pvapy-ad-sim-server -hcm``: the raw HDF5 chunks of a file
written by ops/synthetic.py arrive as bslz4 NTNDArrays and decode in pvaflow bit-identically."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from pvaflow.ops.synthetic import DATASET, write_hdf5

from pvaflow.codec import decode, encode
from pvaflow.codecs import encode_frame
from pvaflow.frame import Frame

pytestmark = pytest.mark.integration

# A fresh interpreter (it reads exactly the EPICS settings it is given) that monitors the
# channel and pickles {uniqueId: Frame} with the payload copied out of pvapy's buffer.
CLIENT = r"""
import os, pickle, sys, threading, time
from dataclasses import replace
import pvaccess as pva
from pvaflow.errors import FrameError
from pvaflow.ntnda import frame_from_ntnda
out, name, want, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
frames, lock = {}, threading.Lock()
def cb(pv):
    try:
        f = frame_from_ntnda(pv, name)
    except FrameError:
        return  # the record's initial empty value
    with lock:
        frames[f.unique_id] = replace(f, array=f.array.copy())
ch = pva.Channel(name)
ch.monitor(cb, "record[queueSize=100]field()")
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    with lock:
        if len(frames) >= want:
            break
    time.sleep(0.05)
ch.stopMonitor()
with lock, open(out, "wb") as fh:
    pickle.dump(frames, fh)
# pvapy's channel destructors can abort at exit under load (see tests/bridge/pva_client.py)
sys.stdout.flush()
os._exit(0)
"""


def receive(channel: str, env: dict[str, str], n: int, out: Path,
            timeout: float = 60.0) -> dict[int, Frame]:
    r = subprocess.run([sys.executable, "-c", CLIENT, str(out), channel, str(n), str(timeout)],
                       env={**os.environ, **env}, capture_output=True, text=True,
                       timeout=timeout + 60, check=False)
    assert r.returncode == 0, r.stderr
    frames: dict[int, Frame] = pickle.loads(out.read_bytes())
    assert len(frames) >= n, f"got {len(frames)} of {n} frames"
    return frames


def test_sim_server_bslz4_frames_decode_bit_identically(
    sim_server: Callable[..., Any], tmp_path: Path,
) -> None:
    path = tmp_path / "rings.h5"
    pixels = write_hdf5(path, 3, (1024, 1024), codec="bslz4", seed=5)
    with h5py.File(path) as f:
        chunks = [f[DATASET].id.read_direct_chunk((i, 0, 0))[1] for i in range(3)]
    # pvapy 5.6 publishes from a frame dict its producer thread fills; with no start delay
    # the publisher can look for frame 0 before the file is read, and its thread dies. The
    # delay is the server's own head start (reading 3 chunks takes milliseconds), not a wait.
    server = sim_server(fps=10, start_delay=2.0, extra_args=[
        "-if", str(path), "-hds", DATASET, "-hcm"])
    frames = receive(server.channel, server.env, 5, tmp_path / "frames.pkl")

    seen = set()
    for uid, frame in frames.items():
        assert frame.compressed and frame.codec is not None
        assert frame.codec.name == "bslz4"
        assert frame.codec.dtype == np.uint16 and frame.shape == (1024, 1024)
        assert frame.codec.uncompressed_size == 1024 * 1024 * 2
        # the payload is the file's chunk, HDF5 filter header and all ...
        index = chunks.index(frame.array.tobytes())
        seen.add(index)
        # ... which pvaflow decodes to exactly the file's pixels
        np.testing.assert_array_equal(frame.image, pixels[index])
        assert frame.image.dtype == np.uint16
        # through Kafka's native format it stays the same bytes, still decodable
        key, value, headers = encode(encode_frame(frame))
        back = decode(key, value.tobytes(), headers)
        assert back.array.tobytes() == chunks[index]
        np.testing.assert_array_equal(back.image, pixels[index])
        assert uid > 0
    assert seen == {0, 1, 2}
    ratio = pixels[0].nbytes / len(chunks[0])
    assert 5.0 < ratio < 6.0, ratio
