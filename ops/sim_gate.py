"""``pvapy-ad-sim-server`` whose first frame waits for a signal instead of a timer.

pvapy's server publishes frame 1 ``-std`` seconds after it starts, whether or not anyone
listens yet. A test that needs every frame from uniqueId 1 (exact counts, first id, a
distribution pattern) would otherwise bet that its bridge starts, checks Kafka and connects
within that delay, a bet a loaded machine sometimes loses. Here the server starts as pvapy's
does (frames generated and cached, the channel served) and the publisher waits until the
process gets ``SIGUSR1`` (:meth:`SimServer.release`), with ``-std`` as the upper bound of the
wait. Everything else is pvapy's own code and command line.

Run as ``python -m pvaflow.ops.sim_gate <pvapy-ad-sim-server options>``.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from pvapy.cli import adSimServer

RELEASE = threading.Event()  # set by SIGUSR1


class GatedAdSimServer(adSimServer.AdSimServer):
    """pvapy's server with :meth:`start` publishing on :data:`RELEASE` instead of a timer."""

    def start(self) -> None:
        threading.Thread(target=self.frameProducer, daemon=True).start()
        self.pvaServer.start()
        threading.Thread(target=self._publish_when_released, daemon=True).start()

    def _publish_when_released(self) -> None:
        RELEASE.wait(self.startDelay)
        self.framePublisher()


def _released(_signum: int, _frame: Any) -> None:
    RELEASE.set()


def main() -> None:
    # before the server listens: a release can only come after that, so never too early
    signal.signal(signal.SIGUSR1, _released)
    adSimServer.AdSimServer = GatedAdSimServer
    sys.argv[0] = "pvapy-ad-sim-server"
    adSimServer.main()


if __name__ == "__main__":
    main()
