"""Browser labelling: the API's token, errors and concurrency; the page in a real headless Chromium."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from agents.web import make_app
from textgym.store import PreferenceStore

TOKEN = "test-token"
HOSTILE = "<script>document.title='pwned'</script><b>bold</b>"


def _store(tmp_path: Path, n: int = 3) -> Path:
    with PreferenceStore(tmp_path / "labels.db") as store:
        store.add_pairs([(f"prompt {i}", HOSTILE if i == 0 else f"a{i}", f"b{i}") for i in range(n)])
    return tmp_path / "labels.db"


def test_api_needs_the_token_and_answers_malformed_requests_with_4xx(tmp_path):
    client = TestClient(make_app(_store(tmp_path), TOKEN))
    assert client.get("/").status_code == 403 and client.get("/?token=wrong").status_code == 403
    assert client.get("/api/next?annotator=kim").status_code == 403
    assert client.post("/api/answer", json={}).status_code == 403
    assert client.get(f"/?token={TOKEN}").status_code == 200
    nxt = client.get(f"/api/next?annotator=kim&token={TOKEN}").json()
    assert nxt["pair_id"] == 1 and {nxt["left"], nxt["right"]} == {HOSTILE, "b0"} and nxt["remaining"] == 3
    post = lambda body, **kw: client.post(f"/api/answer?token={TOKEN}", **kw, json=body)  # noqa: E731
    good = {"annotator": "kim", "pair_id": 1, "choice": "left", "shown_left": "b"}
    for body, status, message in [
        ({**good, "choice": "best"}, 400, "choice must be one of left, right, tie, skip"),
        ({k: v for k, v in good.items() if k != "pair_id"}, 400, "missing field 'pair_id'"),
        ({**good, "pair_id": "1"}, 400, "pair_id must be an integer"),
        ({**good, "shown_left": "c"}, 400, "shown_left must be 'a' or 'b'"),
        ({**good, "pair_id": 99}, 404, "no pair 99"),
        ([1, 2], 400, "must be a JSON object"),
    ]:
        r = post(body)
        assert r.status_code == status and message in r.json()["error"], (body, r.text)
    r = client.post(f"/api/answer?token={TOKEN}", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "must be JSON" in r.json()["error"]
    with PreferenceStore(tmp_path / "labels.db") as store:
        assert store.counts() == (3, 0)  # no half-written answer
    assert post(good).json() == {"saved": True}
    assert post(good).status_code == 409  # answered already
    with PreferenceStore(tmp_path / "labels.db") as store:
        (answer,) = store.answers()
        assert answer["choice"] == "b" and answer["shown_left"] == "b"  # "left" was completion b on screen


def test_two_annotators_answering_at_once_both_land(tmp_path):
    app = make_app(_store(tmp_path, 40), TOKEN)

    def session(who: str) -> int:
        client = TestClient(app)
        for pair_id in range(1, 41):
            body = {"annotator": who, "pair_id": pair_id, "choice": "tie", "shown_left": "a"}
            assert client.post(f"/api/answer?token={TOKEN}", json=body).status_code == 200
        return 40

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(session, ["kim", "lee"])) == [40, 40]
    with PreferenceStore(tmp_path / "labels.db") as store:
        assert store.counts() == (40, 80)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture
def browser():
    path = _chromium()
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but no Chromium: .ci/run installs it (apt-get install chromium)")
        pytest.skip("no Chromium on this machine (apt-get install chromium); the browser test needs one")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield b
        b.close()


def test_label_in_a_real_browser_by_click_and_by_key(tmp_path, browser):
    import uvicorn

    db = _store(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(make_app(db, TOKEN), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/?token={TOKEN}&annotator=kim")
        page.wait_for_function("document.getElementById('prompt').textContent === 'prompt 0'")
        shown = page.locator("#left").text_content() + page.locator("#right").text_content()
        assert HOSTILE in shown  # the markup is shown as text ...
        assert page.title() == "textgym labelling" and page.locator("b").count() == 0  # ... and never run
        page.click("#btn-left")
        page.wait_for_function("document.getElementById('prompt').textContent === 'prompt 1'")
        page.keyboard.press("b")
        page.wait_for_function("document.getElementById('prompt').textContent === 'prompt 2'")
        page.reload()  # the queue continues where it was
        page.wait_for_function("document.getElementById('prompt').textContent === 'prompt 2'")
        assert "2 answered, 1 to go" in page.locator("#progress").text_content()
        forbidden = browser.new_page()
        assert forbidden.goto(f"http://127.0.0.1:{port}/").status == 403
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    with PreferenceStore(db) as store:
        answers = store.answers()
    assert [(a["pair_id"], a["annotator"]) for a in answers] == [(1, "kim"), (2, "kim")]
    assert answers[0]["choice"] == answers[0]["shown_left"]  # clicked "left"
    assert answers[1]["choice"] != answers[1]["shown_left"]  # pressed b: the right one
