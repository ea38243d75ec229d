"""The mirror serves bslz4 frames as areaDetector's NDPluginCodec does, so a PvaPy client
decompresses them with ``AdImageUtility`` (what pvapy's plugins and viewers call) to exactly
the source's pixels."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pvaflow.process import free_port

from .conftest import BridgeProcess

pytestmark = pytest.mark.integration
FRAMES = 6

# Monitors the source (plain pixels) and the mirror (bslz4, decoded the PvaPy way), pickles
# {"source": {uid: image}, "mirror": {uid: (image, codec fields)}}.
CLIENT = r"""
import os, pickle, sys, threading, time
import numpy as np
import pvaccess as pva
from pvapy.utility.adImageUtility import AdImageUtility
out, source, mirror, want, timeout = sys.argv[1:4] + [int(sys.argv[4]), float(sys.argv[5])]
got, lock = {"source": {}, "mirror": {}}, threading.Lock()
def on_source(pv):
    if not pv["value"][0]:
        return
    uid, image, *_ = AdImageUtility.reshapeNtNdArray(pv)
    with lock:
        got["source"][uid] = np.array(image)
def on_mirror(pv):
    if not pv["value"][0]:
        return
    uid, image, *_ = AdImageUtility.reshapeNtNdArray(pv)
    fields = {"name": pv["codec"]["name"], "type": pv["codec.parameters"][0]["value"],
              "compressedSize": pv["compressedSize"],
              "uncompressedSize": pv["uncompressedSize"],
              "payload": len(pv["value"][0]["ubyteValue"])}
    with lock:
        got["mirror"][uid] = (np.array(image), fields)
chans = [pva.Channel(source), pva.Channel(mirror)]
chans[0].monitor(on_source, "record[queueSize=100]field()")
chans[1].monitor(on_mirror, "record[queueSize=100]field()")
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    with lock:
        if all(len(v) >= want for v in got.values()):
            break
    time.sleep(0.05)
for ch in chans:
    ch.stopMonitor()
with lock, open(out, "wb") as fh:
    pickle.dump(got, fh)
# pvapy's channel destructors can abort at exit under load (see tests/bridge/pva_client.py)
sys.stdout.flush()
os._exit(0)
"""


def test_pvapy_decompresses_the_mirrors_bslz4_frames_to_the_source_pixels(
    sim_server: Callable[..., Any], bridge_process: Callable[..., BridgeProcess],
    make_topic: Callable[..., str], kafka_bootstrap: str, tmp_path: Path,
) -> None:
    sim = sim_server(nx=256, ny=128, datatype="uint16", fps=10, total_frames=FRAMES,
                     start_delay=10)
    topic = make_topic(1)
    channel = f"mirror:{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {**os.environ, "EPICS_PVAS_SERVER_PORT": str(port), "EPICS_PVA_SERVER_PORT": str(port)}
    mirror_out = tmp_path / "mirror.out"
    with open(mirror_out, "wb") as out:
        mirror = subprocess.Popen(
            [sys.executable, "-m", "pvaflow.bridge.mirror_cli", "--topic", topic,
             "--output-channel", channel, "--offset", "earliest", "--report-period", "1",
             "--bootstrap-servers", kafka_bootstrap],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        bridge = bridge_process("--input-channel", sim.channel, "--topic", topic,
                                "--codec", "bslz4")
        result = tmp_path / "frames.pkl"
        client = subprocess.run(
            [sys.executable, "-c", CLIENT, str(result), sim.channel, channel, str(FRAMES),
             "60"], env=dict(os.environ), timeout=120, capture_output=True, text=True)
        assert client.returncode == 0, client.stderr
        s = bridge.final()
        assert s["codec_frames"] == FRAMES
    finally:
        mirror.send_signal(signal.SIGINT)
        code = mirror.wait(30)
    assert code == 0, mirror_out.read_text()
    got = pickle.loads(result.read_bytes())
    source, served = got["source"], got["mirror"]
    assert sorted(source) == list(range(1, FRAMES + 1))
    assert sorted(served) == sorted(source), mirror_out.read_text()[-2000:]
    import pvaccess as pva

    for uid, want in source.items():
        image, fields = served[uid]
        assert want.shape == (128, 256) and want.dtype == np.uint16
        assert image.dtype == want.dtype and image.shape == want.shape
        assert np.array_equal(image, want), f"uniqueId {uid} differs"
        assert fields["name"] == "bslz4" and fields["type"] == int(pva.USHORT)
        assert fields["uncompressedSize"] == want.nbytes
        assert fields["compressedSize"] == fields["payload"]  # random pixels: no smaller
