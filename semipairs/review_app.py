"""``semipairs review``: a local page that shows one pair at a time (or a grid), takes a judgment per key
press, and keeps the precision estimate of ``semipairs.review`` up to date beside it.

Starlette on uvicorn, bound to 127.0.0.1 by default; every request carries a random token printed with
the address (as Jupyter does), so another local page cannot post judgments. Plain HTML and JS, no build
step, nothing fetched from the network.
"""

from __future__ import annotations

import functools
import math
import secrets
import socket
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from semipairs.dataset import PairDataset
from semipairs.errors import SemipairsError
from semipairs.review import (
    ReviewError,
    ReviewLog,
    estimate,
    publish_reviewed,
    read_log,
    read_reviews,
    review_order,
    score_bands,
    threshold_for,
)
from semipairs.sources.pairs import PairImages

REPEAT_EVERY = 10  # one pair in ten is asked again: the consistency check behind the error-rate correction
_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif",
          "bmp": "image/bmp", "tif": "image/tiff", "tiff": "image/tiff"}


def _clean(v: Any) -> Any:
    """JSON without NaN (scores of pairs packed without one)."""
    if isinstance(v, float):
        return None if math.isnan(v) else v
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


@dataclass
class ReviewSession:
    """One reviewer on one version: the order, the log, the images and what to show next."""

    ds: PairDataset
    reviews: Path
    reviewer: str = "reviewer"
    source: str | None = None
    seed: int = 0
    n_bands: int = 5
    store: Path | None = None
    token: str = field(default_factory=lambda: secrets.token_urlsafe(16))

    def __post_init__(self) -> None:
        from semipairs.sources import open_source

        self.log = ReviewLog(self.reviews, self.reviewer, self.ds)
        self.scores = self.ds.table["score"].to_numpy(dtype=float, na_value=np.nan)
        self.bands = score_bands(self.scores, self.n_bands)
        self.order = review_order(self.bands, self.seed)
        self.images = PairImages(spec=self.ds.manifest.source.uri, dataset=self.ds,
                                 images=open_source(self.source) if self.source else None)
        if not self.images.has_images:
            raise ReviewError(f"{self.ds.path}: a 'reference' dataset holds no images; pass --source with its "
                              f"images (e.g. --source {self.ds.manifest.source.uri})")

    def _mine(self):
        return read_log(self.log.path, self.ds)

    def next_pairs(self, n: int = 1, repeats: bool = True, mine: Any = None) -> list[dict[str, Any]]:
        """The next ``n`` pairs to judge in the order (skipped ones come back once the rest are done); every
        REPEAT_EVERY-th single judgment asks an earlier one again, picked from the count, so a reload asks the same.
        ``mine``: this reviewer's judgments when the caller has just read them."""
        mine = mine if mine is not None else self._mine()
        done = mine.verdict
        count = len(mine.order)
        if repeats and n == 1 and (count + 1) % REPEAT_EVERY == 0:
            asked = {pid for pid, _ in mine.repeats}
            pool = [pid for pid, v in mine.history if v in ("same", "different") and pid not in asked]
            if pool:
                pid = pool[int(np.random.default_rng(self.seed * 7919 + count).integers(len(pool)))]
                return [self._pair(pid, repeat=True)]
        fresh = [int(p) for p in self.order if int(p) not in done]
        skipped = [int(p) for p in self.order if done.get(int(p)) == "skip"]
        return [self._pair(pid) for pid in (fresh + skipped)[:n]]

    def _pair(self, pid: int, repeat: bool = False) -> dict[str, Any]:
        row = self.ds.table.iloc[pid]
        return {"pair_id": pid, "score": float(row["score"]), "band": int(self.bands.band[pid]), "repeat": repeat,
                "anchor_key": row["anchor_key"], "positive_key": row["positive_key"]}

    def state(self, target: float | None = None) -> dict[str, Any]:
        reviews = read_reviews(self.reviews, self.ds)  # each log read once a request: this reviewer's is among them
        est = estimate(self.ds, reviews, self.n_bands)
        cut = threshold_for(self.ds, est, target) if target else None
        named = [r for r in reviews if r.reviewer == self.reviewer]
        mine = named[0] if len(named) == 1 else self._mine()  # a renamed log file: read ours by its path
        m = self.ds.manifest
        return _clean({
            "dataset": {"name": m.name, "version": m.version, "pairs": len(self.ds), "layout": m.layout,
                        "path": str(self.ds.path)},
            "reviewer": self.reviewer, "mine": len(mine.order), "reviews": str(self.reviews),
            "estimate": est.to_dict(), "cut": cut.__dict__ if cut else None, "target": target,
            "next": self.next_pairs(mine=mine), "can_undo": mine.last is not None,
        })

    def image(self, pid: int, role: str) -> tuple[bytes, str]:
        if role not in ("anchor", "positive") or not 0 <= pid < len(self.ds):
            raise ReviewError(f"no image {role!r} of pair {pid}")
        item = self.images.read_pair(pid, role)
        return item.data, _TYPES.get(item.ext.lower(), "application/octet-stream")

    def publish(self, version: str, target: float | None) -> Path:
        return publish_reviewed(self.ds, version, self.reviews, self.store, target, self.source, self.n_bands)


def _allowed(request, token: str) -> bool:
    """Every request carries the session's token (header or query): another local page cannot post judgments."""
    got = request.headers.get("x-review-token") or request.query_params.get("token", "")
    return secrets.compare_digest(got, token)


def _guard(token: str, handler):
    """``handler`` behind the token; a request it cannot use (bad JSON field, unknown pair) is a 400 naming why."""
    from starlette.responses import JSONResponse

    async def run(request):
        if not _allowed(request, token):
            return JSONResponse({"error": "missing or wrong token: open the address semipairs review printed"}, 403)
        try:
            return await handler(request)
        except (SemipairsError, ValueError, KeyError) as exc:
            return JSONResponse({"error": str(exc)}, 400)
    return run


def make_app(session: ReviewSession):
    """The Starlette app of one session: the page, its JSON API and the images."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    page_html = (resources.files("semipairs") / "review_page.html").read_text(encoding="utf-8")
    guard = functools.partial(_guard, session.token)

    async def page(request: Request) -> Response:
        if not _allowed(request, session.token):
            return HTMLResponse("<p>Open the address <code>semipairs review</code> printed (it carries a token).</p>", 403)
        return HTMLResponse(page_html.replace("__TOKEN__", session.token))

    async def state(request: Request) -> Response:
        t = request.query_params.get("target")
        return JSONResponse(session.state(float(t) if t else None))

    async def judge(request: Request) -> Response:
        body = await request.json()
        for item in body.get("judgments", [body]):
            session.log.judge(int(item["pair_id"]), str(item["verdict"]), bool(item.get("repeat", False)))
        return await state(request)

    async def undo(request: Request) -> Response:
        session.log.undo()
        return await state(request)

    async def grid(request: Request) -> Response:
        n = min(int(request.query_params.get("n", 12)), 60)
        return JSONResponse(_clean({"pairs": session.next_pairs(n, repeats=False)}))

    async def image(request: Request) -> Response:
        data, kind = session.image(int(request.path_params["pid"]), request.path_params["role"])
        return Response(data, media_type=kind, headers={"Cache-Control": "max-age=3600"})

    async def publish(request: Request) -> Response:
        body = await request.json()
        target = body.get("target")
        path = session.publish(str(body["version"]), float(target) if target else None)
        return JSONResponse({"path": str(path), "version": body["version"]})

    return Starlette(routes=[
        Route("/", page),
        Route("/api/state", guard(state)),
        Route("/api/judge", guard(judge), methods=["POST"]),
        Route("/api/undo", guard(undo), methods=["POST"]),
        Route("/api/grid", guard(grid)),
        Route("/api/publish", guard(publish), methods=["POST"]),
        Route("/img/{pid:int}/{role}", guard(image)),
    ])


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one), so the address is known before the server starts."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ReviewError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror or exc}); try --port 0") from None
    sock.listen(64)
    return sock


def serve(session: ReviewSession, sock: socket.socket) -> None:
    import uvicorn

    config = uvicorn.Config(make_app(session), log_level="warning", lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
