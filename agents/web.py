"""Browser labelling: ``textgym label --store DB --web`` serves the store's queue as a small local web page.

Starlette app, served by uvicorn, on 127.0.0.1 unless told otherwise. Every request needs the access token that the
command prints in its URL (as Jupyter does); a request without it gets 403. Model text is untrusted: the page puts it
in the document with ``textContent`` only, never as HTML, so a completion holding ``<script>`` shows as text.

API (JSON): ``GET /api/next?annotator=NAME`` gives the next pair that annotator has not answered, with the
completion shown on the left chosen at random; ``POST /api/answer`` with ``{"annotator", "pair_id", "choice"
("left", "right", "tie" or "skip"), "shown_left" ("a" or "b")}`` stores one answer (one transaction). A malformed
request gets a 4xx and a message, never a half-written answer.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from textgym.store import PreferenceStore

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>textgym labelling</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; }
.pair { display: flex; gap: 1rem; }
.pair > div { flex: 1; border: 1px solid #999; padding: 1rem; white-space: pre-wrap; }
button { margin: .5rem .5rem 0 0; font-size: 1rem; } #prompt { font-weight: bold; white-space: pre-wrap; }
</style></head>
<body>
<h1>Which completion is better?</h1>
<p>Annotator: <input id="annotator" placeholder="your name"> <span id="progress"></span></p>
<p id="prompt"></p>
<div class="pair"><div id="left"></div><div id="right"></div></div>
<p>
<button id="btn-left">Left is better [a]</button><button id="btn-right">Right is better [b]</button>
<button id="btn-tie">Tie [t]</button><button id="btn-skip">Skip [s]</button>
</p>
<p id="status"></p>
<script>
const token = new URLSearchParams(location.search).get("token") || "";
const nameBox = document.getElementById("annotator");
nameBox.value = new URLSearchParams(location.search).get("annotator") || localStorage.getItem("annotator") || "";
let current = null;
function show(id, text) { document.getElementById(id).textContent = text; }  // text only, never HTML
async function next() {
  const who = nameBox.value.trim();
  if (!who) { show("status", "type your name first"); return; }
  localStorage.setItem("annotator", who);
  const r = await fetch(`/api/next?annotator=${encodeURIComponent(who)}&token=${encodeURIComponent(token)}`);
  const data = await r.json();
  if (!r.ok) { show("status", data.error); return; }
  show("progress", `${data.answered} answered, ${data.remaining} to go`);
  if (data.done) {
    current = null; show("prompt", "All pairs answered. Thank you!"); show("left", ""); show("right", ""); return;
  }
  current = data;
  show("prompt", data.prompt); show("left", data.left); show("right", data.right); show("status", "");
}
async function answer(choice) {
  if (!current) return;
  const body = {annotator: nameBox.value.trim(), pair_id: current.pair_id, choice: choice,
                shown_left: current.shown_left, shown_at: current.shown_at};
  current = null;
  const r = await fetch(`/api/answer?token=${encodeURIComponent(token)}`,
                        {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const data = await r.json();
  show("status", r.ok ? "saved" : data.error);
  await next();
}
for (const c of ["left", "right", "tie", "skip"]) document.getElementById("btn-" + c).onclick = () => answer(c);
document.addEventListener("keydown", (e) => {
  if (e.target === nameBox) { if (e.key === "Enter") next(); return; }
  const c = {a: "left", 1: "left", b: "right", 2: "right", t: "tie", s: "skip"}[e.key];
  if (c) answer(c);
});
next();
</script>
</body></html>
"""


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def make_app(store_path: str | Path, token: str, seed: int = 0) -> Starlette:
    """The labelling app over the store at ``store_path``; every request must carry ``token``."""
    rng = np.random.default_rng(seed)
    PreferenceStore(store_path).close()  # create it (and fail early on a bad path)

    def authorised(request: Request) -> bool:
        given = request.query_params.get("token") or request.headers.get("x-token") or ""
        return secrets.compare_digest(given.encode(), token.encode())

    def page(request: Request) -> Response:
        if not authorised(request):
            return HTMLResponse("access token missing or wrong: open the URL that `textgym label --web` printed", 403)
        return HTMLResponse(PAGE)

    def next_pair(request: Request) -> Response:
        if not authorised(request):
            return _error(403, "access token missing or wrong")
        who = request.query_params.get("annotator", "").strip()
        if not who:
            return _error(400, "give ?annotator=NAME")
        with PreferenceStore(store_path) as store:  # one connection per request: SQLite serialises the writers
            pending = store.pending(who)
            answered = store.answered(who)
        if not pending:
            return JSONResponse({"done": True, "answered": answered, "remaining": 0})
        pair = pending[0]
        left = "a" if rng.random() < 0.5 else "b"
        right = "b" if left == "a" else "a"
        return JSONResponse({"done": False, "pair_id": pair.id, "prompt": pair.prompt, "left": getattr(pair, left),
                             "right": getattr(pair, right), "shown_left": left, "shown_at": time.time(),
                             "answered": answered, "remaining": len(pending)})  # fmt: skip

    async def answer(request: Request) -> Response:
        if not authorised(request):
            return _error(403, "access token missing or wrong")
        try:
            body: Any = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "the body must be JSON: {annotator, pair_id, choice, shown_left}")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object: {annotator, pair_id, choice, shown_left}")
        missing = [k for k in ("annotator", "pair_id", "choice", "shown_left") if k not in body]
        if missing:
            return _error(400, f"missing field {missing[0]!r}; give annotator, pair_id, choice and shown_left")
        who, pair_id, choice, shown_left = body["annotator"], body["pair_id"], body["choice"], body["shown_left"]
        if not isinstance(who, str) or not who.strip():
            return _error(400, f"annotator must be a non-empty string, got {who!r}")
        if not isinstance(pair_id, int) or isinstance(pair_id, bool):
            return _error(400, f"pair_id must be an integer, got {pair_id!r}")
        if shown_left not in ("a", "b"):
            return _error(400, f"shown_left must be 'a' or 'b', got {shown_left!r}")
        stored = {"left": shown_left, "right": "b" if shown_left == "a" else "a", "tie": "tie", "skip": "skip"}
        if choice not in stored:
            return _error(400, f"choice must be one of left, right, tie, skip; got {choice!r}")
        with PreferenceStore(store_path) as store:
            try:
                store.answer(pair_id, who.strip(), stored[choice], shown_left=shown_left,
                             shown_at=float(body.get("shown_at") or 0.0))  # fmt: skip
            except ValueError as exc:  # an unknown pair, or one already answered: nothing was written
                return _error(409 if "already answered" in str(exc) else 404, str(exc))
        return JSONResponse({"saved": True})

    return Starlette(
        routes=[
            Route("/", page),
            Route("/api/next", next_pair),
            Route("/api/answer", answer, methods=["POST"]),
        ]
    )


def serve(store_path: str, host: str = "127.0.0.1", port: int = 8765, seed: int = 0) -> None:
    """Serve the labelling page until Ctrl-C; print its URL with a fresh access token."""
    import uvicorn

    token = secrets.token_urlsafe(16)
    app = make_app(store_path, token, seed)
    print(f"labelling {store_path} at http://{host}:{port}/?token={token}  (Ctrl-C to stop; answers are saved at once)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
