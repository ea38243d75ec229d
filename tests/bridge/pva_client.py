"""A direct PVA client (run as a subprocess): what an EPICS client receives, for comparison.

``python pva_client.py OUT.pkl N TIMEOUT CHANNEL...`` monitors every channel and pickles
``{channel: {uniqueId: Frame}}`` (arrays copied) once N frames per channel arrived. Prints
``subscribed`` once every monitor has delivered its first update (the record's value when the
monitor started): from then on it sees every frame published (what a gated sim server waits for).
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time
from dataclasses import replace
from typing import Any

import pvaccess as pva

from pvaflow.codec import FrameError
from pvaflow.ntnda import frame_from_ntnda


def main() -> None:
    out, n, timeout, channels = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
    frames: dict[str, dict[int, Any]] = {c: {} for c in channels}
    lock = threading.Lock()
    chans = []
    started: set[str] = set()
    for name in channels:
        def cb(pv: Any, name: str = name) -> None:
            with lock:
                started.add(name)
            try:
                f = frame_from_ntnda(pv, name)
            except FrameError:
                return  # the record's initial empty value
            with lock:
                frames[name][f.unique_id] = replace(f, array=f.array.copy())
        ch = pva.Channel(name)
        ch.monitor(cb, "record[queueSize=100]field()")
        chans.append(ch)
    print("monitoring", flush=True)
    deadline = time.monotonic() + timeout
    announced = False
    while time.monotonic() < deadline:
        with lock:
            if not announced and len(started) == len(channels):
                print("subscribed", flush=True)
                announced = True
            if all(len(v) >= n for v in frames.values()):
                break
        time.sleep(0.05)
    for ch in chans:
        ch.stopMonitor()
    with lock, open(out, "wb") as f:
        pickle.dump(frames, f)
    sys.stdout.flush()
    # pvapy's channel destructors can abort the interpreter (SIGABRT under load with ten
    # channels: "PyThreadState_Get: ... the GIL is released"), at exit or as soon as `chans`
    # goes out of scope. The result is on disk: leave here, with every channel still alive.
    os._exit(0)


if __name__ == "__main__":
    main()
