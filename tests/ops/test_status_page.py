"""The monitor's status page: thumbnails and topics (pure), then the page in a real headless
Chromium against a live pipeline.

sim server (bslz4-compressed diffraction frames from an HDF5 file) -> ``pvaflow bridge`` ->
``pvaflow consume`` (passthrough) -> ``pvaflow collect``, plus ``pvaflow monitor
--thumbnail-topic`` on the frames and the ordered topic. Chromium is driven over the DevTools
protocol (aiohttp's websocket client): the page loads without console errors or exceptions,
its counters grow, the thumbnails show frames and change while frames flow.

Chromium is Debian's ``chromium`` package (``make tools`` installs it when missing;
``$PVAFLOW_CHROMIUM`` names another binary). Without it the browser test skips, except under
CI, where it fails. Set ``PVAFLOW_STATUS_PAGE_PNG=docs/img/status-page.png`` to keep the
screenshot the test takes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import struct
import subprocess
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pvaflow.ops.monitor import latest_from_messages, pipeline_view, stats_topics
from pvaflow.ops.page import asset, index_html
from pvaflow.ops.thumbnail import as_picture, png, scale_down, stretch, thumbnail_png

from pvaflow.process import die_with_parent, free_port

from .conftest import missing
from .test_dashboards_live import Procs, procs, pvaflow, wait_until  # noqa: F401 (fixture)

# -- pure -----------------------------------------------------------------------------------


def read_png(data: bytes) -> tuple[int, int, int, np.ndarray[Any, Any]]:
    """(width, height, colour type, pixels) of an 8-bit, filter-0, non-interlaced PNG; every
    chunk's CRC checked."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        chunks.append((kind, body))
        pos += 12 + n
    assert [k for k, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    w, h, depth, colour, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, comp, filt, interlace) == (8, 0, 0, 0)
    channels = {0: 1, 2: 3}[colour]
    raw = np.frombuffer(zlib.decompress(chunks[1][1]), np.uint8).reshape(h, 1 + w * channels)
    assert not raw[:, 0].any(), "filter type 0 on every row"
    pixels = raw[:, 1:].reshape(h, w, channels)
    return w, h, colour, pixels[..., 0] if channels == 1 else pixels


def test_png_round_trips_grey_and_rgb() -> None:
    grey = np.arange(12 * 7, dtype=np.uint8).reshape(12, 7)
    assert read_png(png(grey))[:3] == (7, 12, 0)
    assert (read_png(png(grey))[3] == grey).all()
    rgb = np.random.default_rng(1).integers(0, 256, (5, 9, 3), dtype=np.uint8)
    w, h, colour, pixels = read_png(png(rgb))
    assert (w, h, colour) == (9, 5, 2) and (pixels == rgb).all()
    with pytest.raises(ValueError, match="PNG needs"):
        png(np.zeros((2, 2, 2), np.uint8))


def test_thumbnail_is_small_stretched_and_keeps_the_aspect() -> None:
    big = np.zeros((1024, 700), np.uint16)
    big[:, 350:] = 4000  # right half bright
    small = scale_down(big, 256)
    assert small.shape == (256, 175) and small.dtype == np.float32
    assert small[:, :87].max() == 0 and small[:, 88:].min() == 4000
    w, h, colour, pixels = read_png(thumbnail_png(big))
    assert (w, h, colour) == (175, 256, 0) and max(w, h) <= 256
    assert pixels[:, :87].max() == 0 and pixels[:, 88:].min() == 255
    # Percentiles, not min/max: one hot pixel does not turn the picture black.
    noisy = np.random.default_rng(2).poisson(20, (64, 64)).astype(np.float64)
    noisy[0, 0] = 1e9
    out = stretch(noisy)
    assert out.dtype == np.uint8 and out.mean() > 60 and out[0, 0] == 255
    assert stretch(np.full((4, 4), 7.0)).max() == 0  # flat: no division by zero
    assert stretch(np.array([[np.nan, 1.0], [np.inf, 2.0]])).dtype == np.uint8
    # Colour planes end up last; a small picture is not scaled.
    assert as_picture(np.zeros((3, 10, 20))).shape == (10, 20, 3)
    assert as_picture(np.zeros((10, 3, 20))).shape == (10, 20, 3)
    assert as_picture(np.zeros(30)).shape == (1, 30)
    assert read_png(thumbnail_png(np.zeros((3, 40, 50), np.uint8)))[:3] == (50, 40, 2)


def test_view_names_the_topics_a_stage_reads_and_writes() -> None:
    assert stats_topics({"partition_gaps": {"frames[0]": 0, "frames[1]": 2},
                         "output_topics": ["out", "out"], "input_topic": "extra"}) == (
        ["extra", "frames"], ["out"])
    assert stats_topics({"received": 1, "input_topics": [3, ""]}) == ([], [])
    msgs = [{"type": "status", "component": f"consumer/g/{i}", "kind": "consumer", "group": "g",
             "id": str(i), "time": 1.0, "final": False,
             "stats": {"received": 1, "processed": 1,
                       "partition_gaps": {f"frames[{i}]": 0}}} for i in (0, 1)]
    (stage,) = pipeline_view(latest_from_messages(msgs), now=2.0)["stages"]
    assert (stage["topics_in"], stage["topics_out"]) == (["frames"], [])


def test_page_is_self_contained_and_escapes_topic_names() -> None:
    page = index_html(['a"b<c>', "frames"])
    assert '&quot;a\\&quot;b&lt;c&gt;&quot;, &quot;frames&quot;' in page and "<c>" not in page
    for text in (page, asset("status.css"), asset("status.js")):
        # nothing loaded from elsewhere (the SVG namespace is a name, not a download)
        assert "https://" not in text and "http://" not in text.replace(
            "http://www.w3.org/2000/svg", "")


# -- the page in Chromium -------------------------------------------------------------------

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--hide-scrollbars", "--mute-audio",
         "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1")


def chromium_binary() -> str:
    """``$PVAFLOW_CHROMIUM`` or Debian's chromium on the PATH (skip, or fail under CI)."""
    named = os.environ.get("PVAFLOW_CHROMIUM")
    found = shutil.which(named) if named else next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
    if not found:
        missing(f"{named or 'chromium'} is missing: run `make tools` (Debian's chromium "
                "package) or set PVAFLOW_CHROMIUM")
    assert found is not None
    return found


@pytest.fixture
def chromium_bin() -> str:
    """Checked before the broker and the pipeline start."""
    return chromium_binary()


class Cdp:
    """A DevTools protocol session on one page target: ``send`` waits for the reply;
    every event is kept in ``events``."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self._next = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            fut = self._pending.pop(data.get("id", -1), None)
            if fut is None:
                self.events.append(data)
            elif "error" in data:
                fut.set_exception(AssertionError(f"DevTools error: {data['error']}"))
            else:
                fut.set_result(data.get("result", {}))

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next] = fut
        await self.ws.send_str(json.dumps({"id": self._next, "method": method,
                                           "params": params}))
        return await asyncio.wait_for(fut, 60)

    async def evaluate(self, expression: str) -> Any:
        r = await self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                            awaitPromise=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"{expression!r} raised: {r['exceptionDetails']}")
        return r["result"].get("value")

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(f"console.{p['type']}: {[a.get('value') for a in p['args']]}")
            elif m == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails']}")
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.ws.close()


@contextlib.asynccontextmanager
async def chromium(binary: str, profile: Path) -> AsyncIterator[Cdp]:
    """A headless Chromium (its own session, stopped by pid) and a DevTools session on its
    page."""
    import aiohttp

    with open(profile.parent / "chromium.log", "wb") as log:
        proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}",
                                 "about:blank"], stdout=subprocess.DEVNULL, stderr=log,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=die_with_parent)
    try:
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (active.is_file() and len(active.read_text().splitlines()) >= 2):
            assert proc.poll() is None, (profile.parent / "chromium.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "chromium wrote no DevToolsActivePort in 60 s"
            await asyncio.sleep(0.1)
        port = int(active.read_text().splitlines()[0])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                targets = await r.json()
            page = next(t for t in targets if t["type"] == "page")
            ws = await http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
            cdp = Cdp(ws)
            try:
                for domain in ("Page", "Runtime", "Log"):
                    await cdp.send(f"{domain}.enable")
                yield cdp
            finally:
                await cdp.close()
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        with contextlib.suppress(ProcessLookupError):  # its renderers, same session
            os.killpg(proc.pid, signal.SIGKILL)


READ_PAGE = """(async () => {
  if (!document.getElementById('conn')) return null;  // still loading
  const cells = [...document.querySelectorAll('#stages td[data-field="frames_out"]')];
  const thumbs = {};
  for (const img of document.querySelectorAll('#thumbs img')) {
    let hash = null;
    if (img.dataset.uid && img.complete && img.naturalWidth > 0) {
      const bytes = await (await fetch(img.src)).arrayBuffer();
      const digest = await crypto.subtle.digest('SHA-256', bytes);
      hash = [...new Uint8Array(digest)].map(b => b.toString(16).padStart(2, '0')).join('');
    }
    thumbs[img.dataset.topic] = {uid: img.dataset.uid || null, hash: hash,
                                 width: img.naturalWidth, height: img.naturalHeight};
  }
  return {
    frames_out: Object.fromEntries(cells.map(td => [td.dataset.stage, Number(td.dataset.value)])),
    nodes: [...document.querySelectorAll('#graph g.node')].map(g => g.dataset.stage),
    topics: [...document.querySelectorAll('#graph g.topic')].map(g => g.dataset.topics),
    conn: document.getElementById('conn').className,
    thumbs: thumbs,
  };
})()"""


async def poll(cond: Callable[[], Any], timeout: float, what: str, children: Procs) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        children.check_alive()
        last = await cond()
        if last:
            return last
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(url, timeout=15) as r:
        return r.status, dict(r.headers), r.read()


def test_status_page_in_chromium(
    chromium_bin: str, tmp_path: Path, procs: Procs, sim_server: Callable[..., Any],  # noqa: F811
    make_topic: Callable[..., str], kafka_bootstrap: str, pva_env: dict[str, str],
) -> None:
    from pvaflow.ops.synthetic import DATASET, write_hdf5

    run = uuid.uuid4().hex[:6]
    frames = make_topic(2, suffix="frames")
    passed, ordered = f"page-{run}-passed", f"page-{run}-ordered"
    status, control = f"page-{run}-status", f"page-{run}-control"
    h5 = tmp_path / "frames.h5"
    write_hdf5(h5, 8, (512, 512), codec="bslz4", seed=3)
    # The server's head start: pvapy 5.6 may look for frame 0 before the file is read.
    sim = sim_server(fps=10, start_delay=2.0, extra_args=["-if", str(h5), "-hds", DATASET,
                                                          "-hcm"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    common = ["-b", kafka_bootstrap, "--status-topic", status, "--control-topic", control,
              "--report-period", "1", "--log-level", "warning"]

    def own_pva_port() -> dict[str, str]:
        p = str(free_port())
        return {"EPICS_PVA_SERVER_PORT": p, "EPICS_PVAS_SERVER_PORT": p}

    procs.start("monitor", pvaflow(
        "monitor", "-b", kafka_bootstrap, "--status-topic", status, "--app-id",
        f"page-{run}-monitor", "--web-port", str(port), "--stale-after", "10",
        "--thumbnail-topic", frames, "--thumbnail-topic", ordered, "--log-level", "warning"),
        cwd=tmp_path)
    procs.start("collector", pvaflow(
        "collect", "--input-topic", passed, "--output-topic", ordered, "--group",
        f"page-{run}-collector", *common), env=own_pva_port())
    procs.start("consumer", pvaflow(
        "consume", "--input-topic", frames, "--processor", "passthrough", "--group",
        f"page-{run}-pass", "--output-topic", passed, *common), env=own_pva_port())
    procs.start("bridge", pvaflow(
        "bridge", "--input-channel", sim.channel, "--topic", frames, "--partitions", "2",
        *common), env=pva_env)

    def flowing() -> bool:
        with urllib.request.urlopen(url + "/status", timeout=5) as r:
            view = json.load(r)
        return any(s["kind"] == "collector" and s["frames_out"] >= 10 for s in view["stages"])

    wait_until(flowing, 120, "frames through the collector in the monitor's view", procs)
    _code, headers, body = wait_until(
        lambda: (r := get(f"{url}/thumbnail/{frames}.png"))[0] == 200 and r, 60,
        "a thumbnail of the frames topic", procs)
    assert headers["Content-Type"] == "image/png" and "no-cache" in headers["Cache-Control"]
    w, h, colour, _pixels = read_png(body)
    assert (w, h, colour) == (256, 256, 0), "512x512 bslz4 frames, decoded and halved"
    assert headers["X-Frame-Shape"] == "512x512"
    with pytest.raises(urllib.error.HTTPError, match="404"):
        get(f"{url}/thumbnail/not-configured.png")

    screenshot = tmp_path / "status-page.png"

    async def drive() -> None:
        async with chromium(chromium_bin, tmp_path / "profile") as cdp:
            await cdp.send("Emulation.setDeviceMetricsOverride", width=1200, height=900,
                           deviceScaleFactor=1, mobile=False)
            await cdp.send("Page.navigate", url=url + "/")

            async def ready() -> Any:
                page = await cdp.evaluate(READ_PAGE)
                if page is None:
                    return None
                thumbs_ok = page["thumbs"] and all(t["hash"] for t in page["thumbs"].values())
                return page if len(page["frames_out"]) == 3 and thumbs_ok else None

            first = await poll(ready, 60, "stages and thumbnails on the page", procs)
            kinds = [s.split("/")[0] for s in first["nodes"]]
            assert kinds == ["bridge", "consumer", "collector"], first
            assert frames in first["topics"], first  # the consumer names what it reads
            assert first["conn"] == "conn live"
            assert set(first["thumbs"]) == {frames, ordered}
            assert {(t["width"], t["height"]) for t in first["thumbs"].values()} == {(256, 256)}

            async def grown() -> Any:
                page = await cdp.evaluate(READ_PAGE)
                return page if all(page["frames_out"][s] > n
                                   for s, n in first["frames_out"].items()) else None

            await poll(grown, 60, "every stage's frames out to grow on the page", procs)

            async def changed() -> Any:
                page = await cdp.evaluate(READ_PAGE)
                return page if all(
                    page["thumbs"][t]["hash"] != first["thumbs"][t]["hash"]
                    and page["thumbs"][t]["uid"] != first["thumbs"][t]["uid"]
                    for t in first["thumbs"]) else None

            await poll(changed, 60, "new thumbnails while frames flow", procs)
            height = await cdp.evaluate("document.documentElement.scrollHeight")
            await cdp.send("Emulation.setDeviceMetricsOverride", width=1200,
                           height=int(height), deviceScaleFactor=1, mobile=False)
            await asyncio.sleep(1.5)  # one more refresh at the new size, before the picture
            shot = await cdp.send("Page.captureScreenshot", format="png")
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            assert cdp.errors() == [], cdp.errors()

    asyncio.run(drive())
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep = os.environ.get("PVAFLOW_STATUS_PAGE_PNG")
    if keep:
        shutil.copyfile(screenshot, keep)
