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

from .conftest import BridgeProcess, release_when_subscribed, start_client

pytestmark = pytest.mark.integration
FRAMES = 6

# Monitors the source (plain pixels) and the mirror (bslz4, decoded the PvaPy way), pickles
# {"source": {uid: image}, "mirror": {uid: (image, codec fields)}}.
# Takes pva_client.py's command line (OUT N TIMEOUT SOURCE MIRROR) and, like it, prints
# "subscribed" once both monitors have started.
CLIENT = r"""
import os, pickle, sys, threading, time
import numpy as np
import pvaccess as pva
from pvapy.utility.adImageUtility import AdImageUtility
out, want, timeout, source, mirror = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), \
    sys.argv[4], sys.argv[5]
got, lock, started = {"source": {}, "mirror": {}}, threading.Lock(), set()
def on_source(pv):
    with lock:
        started.add("source")
    if not pv["value"][0]:
        return
    uid, image, *_ = AdImageUtility.reshapeNtNdArray(pv)
    with lock:
        got["source"][uid] = np.array(image)
def on_mirror(pv):
    with lock:
        started.add("mirror")
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
deadline, announced = time.monotonic() + timeout, False
while time.monotonic() < deadline:
    with lock:
        if not announced and len(started) == 2:  # both monitors started
            print("subscribed", flush=True)
            announced = True
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
                     gated=True)
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
        client = start_client(tmp_path, result, FRAMES, 120, sim.channel, channel,
                              script=("-c", CLIENT))
        release_when_subscribed(sim, bridge, client, tmp_path)
        assert client.wait(150) == 0, (tmp_path / "client.out").read_text()
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
