"""The monitor's status page: ``/`` and its assets, ``/thumbnail/<topic>.png``.

The page is plain HTML, CSS and JavaScript shipped in the package (``ops/static``): no CDN, no
build step. It polls ``/status`` every second and draws the pipeline graph (SVG), the per-stage
counters, rates, lag and losses, and the thumbnails of the topics the monitor was started with
(``--thumbnail-topic``), refreshed every second or two.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

from .thumbnail import Thumbnails

NO_CACHE = {"Cache-Control": "no-cache, no-store, must-revalidate", "Pragma": "no-cache",
            "Expires": "0"}
ASSETS = {"status.css": "text/css", "status.js": "text/javascript"}


def asset(name: str) -> str:
    return resources.files("pvaflow.ops").joinpath("static", name).read_text(encoding="utf-8")


def index_html(thumbnail_topics: Sequence[str]) -> str:
    """The page, with the thumbnail topics it shows."""
    return asset("status.html").replace(
        "{{THUMBNAIL_TOPICS}}", html.escape(json.dumps(list(thumbnail_topics)), quote=True))


def register(app: Any, view: Callable[[], dict[str, Any]],
             thumbnails: Thumbnails | None = None) -> None:
    """Add the page's routes to the faust app (registered before faust's own index page, so
    ``/`` is this one)."""
    topics = thumbnails.topics if thumbnails is not None else ()
    page = index_html(topics)
    assets = {name: asset(name) for name in ASSETS}

    @app.page("/")
    async def index(web: Any, request: Any) -> Any:
        return web.html(page, headers=dict(NO_CACHE))

    @app.page("/page/{name}")
    async def page_asset(web: Any, request: Any, name: str) -> Any:
        if name not in assets:
            return web.text("not found\n", status=404)
        return web.text(assets[name], content_type=ASSETS[name], headers=dict(NO_CACHE))

    @app.page("/thumbnail/{topic}.png")
    async def thumbnail(web: Any, request: Any, topic: str) -> Any:
        if thumbnails is None or topic not in topics:
            return web.text(f"no thumbnail for {topic!r}: start the monitor with "
                            f"--thumbnail-topic {topic}\n", status=404)
        thumb = await thumbnails.get(topic)
        if thumb is None:  # no frame yet: nothing to show, and nothing wrong
            return web.bytes(b"", status=204, headers=dict(NO_CACHE))
        headers = {**NO_CACHE, "X-Unique-Id": str(thumb.unique_id),
                   "X-Frame-Shape": "x".join(map(str, thumb.shape)),
                   "X-Frame-Partition": str(thumb.partition),
                   "X-Frame-Offset": str(thumb.offset), "X-Read-At": f"{thumb.read_at:.3f}"}
        return web.bytes(thumb.png, content_type="image/png", headers=headers)
