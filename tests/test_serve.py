"""``graft serve``: the HTTP API (in process), one real server on loopback, and the page."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from graftwork.estimator.classifier import ImageClassifier
from tests.conftest import train_tiny_run
from tests.test_data import bomb_png

pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")
from fastapi.testclient import TestClient  # noqa: E402

from graftwork.deploy.serve import create_app, parse_size  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def client(run: Path) -> Iterator[TestClient]:
    app = create_app(run, max_bytes="200KB", max_files=4, top_k=2)
    with TestClient(app) as c:
        yield c


def _png(path: Path) -> bytes:
    return path.read_bytes()


def _tests(run: Path) -> list[Path]:
    return sorted((run.parent / "data" / "test").rglob("*.png"))


def test_multipart_one_and_several_files_match_predict(client: TestClient, run: Path) -> None:
    paths = _tests(run)[::3]  # one per class, and then some
    expected = {p.name: r["label"] for p, r in
                zip(paths, ImageClassifier.load(run).predict([str(p) for p in paths]))}
    r = client.post("/predict", files={"file": (paths[0].name, _png(paths[0]), "image/png")})
    assert r.status_code == 200, r.text
    (pred,) = r.json()["predictions"]
    assert pred["filename"] == paths[0].name and pred["label"] == expected[paths[0].name]
    assert len(pred["top_k"]) == 2 and pred["top_k"][0]["prob"] == pred["prob"]
    several = [("files", (p.name, _png(p), "image/png")) for p in paths[:4]]
    r = client.post("/predict", files=several)
    assert r.status_code == 200, r.text
    assert {p["filename"]: p["label"] for p in r.json()["predictions"]} == \
        {p.name: expected[p.name] for p in paths[:4]}


def test_raw_bytes_body(client: TestClient, run: Path) -> None:
    path = _tests(run)[0]
    r = client.post("/predict?top_k=3", content=_png(path),
                    headers={"content-type": "image/png", "x-filename": "raw.png"})
    assert r.status_code == 200, r.text
    pred = r.json()["predictions"][0]
    assert pred["filename"] == "raw.png" and len(pred["top_k"]) == 3
    assert abs(sum(t["prob"] for t in pred["top_k"]) - 1) < 1e-4


@pytest.mark.parametrize("case, status, words", [
    ("not_an_image", 415, "not a decodable image"),
    ("bomb", 413, "too many pixels"),
    ("over_content_length", 413, "over the limit"),
    ("over_streamed", 413, "over the limit"),
    ("too_many_files", 413, "over the limit of 4"),
    ("empty_body", 400, "empty"),
    ("empty_file", 400, "empty"),
    ("wrong_field", 400, "'file' or 'files'"),
    ("wrong_type", 415, "Content-Type"),
    ("bad_top_k", 400, "top_k"),
])
def test_bad_uploads_get_a_json_4xx(client: TestClient, run: Path, case: str, status: int,
                                    words: str) -> None:
    good = _png(_tests(run)[0])
    big = b"\x00" * 300_000
    kw: dict[str, Any] = {
        "not_an_image": {"files": {"file": ("a.png", b"<html>no</html>", "image/png")}},
        "bomb": {"content": bomb_png(), "headers": {"content-type": "image/png"}},
        "over_content_length": {"content": big, "headers": {"content-type": "image/png"}},
        "over_streamed": {"content": iter([big[:100_000]] * 3),
                          "headers": {"content-type": "image/png"}},
        "too_many_files": {"files": [("files", (f"{i}.png", good, "image/png"))
                                     for i in range(5)]},
        "empty_body": {"content": b"", "headers": {"content-type": "image/png"}},
        "empty_file": {"files": {"file": ("e.png", b"", "image/png")}},
        "wrong_field": {"files": {"picture": ("a.png", good, "image/png")}},
        "wrong_type": {"content": b"hello", "headers": {"content-type": "text/plain"}},
        "bad_top_k": {"content": good, "headers": {"content-type": "image/png"},
                      "params": {"top_k": "x"}},
    }[case]
    r = client.post("/predict", **kw)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    assert client.get("/health").status_code == 200  # still serving


def test_health_page_and_unknown_paths(client: TestClient) -> None:
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["classes"] == ["class_0", "class_1", "class_2"]
    assert h["model"]["backbone"] == "test_efficientnet" and h["model"]["image_size"] == 32
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "fetch('predict" in page.text and "TOP_K = 2" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # self-contained
    assert client.get("/nope").json() == {"error": "Not Found"}
    assert client.get("/predict").status_code == 405


def test_concurrent_requests_share_forward_passes(run: Path) -> None:
    import httpx

    app = create_app(run, max_wait_ms=100)
    good = _png(_tests(run)[0])

    async def many() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            rs = await asyncio.gather(*[c.post("/predict", content=good,
                                               headers={"content-type": "image/png"})
                                        for _ in range(8)])
        return [r.status_code for r in rs]

    assert asyncio.run(many()) == [200] * 8
    engine = app.state.engine
    assert engine.batcher.images == 8 and engine.batcher.batches < 8


def test_parse_size() -> None:
    assert parse_size("10MB") == 10 * 1024 ** 2 and parse_size("512k") == 512 * 1024
    assert parse_size("1000") == 1000
    with pytest.raises(Exception, match="size"):
        parse_size("ten")


def test_cli_serve_on_a_missing_run_is_a_friendly_error(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from graftwork.cli import main

    res = CliRunner().invoke(main, ["serve", str(tmp_path / "nope"), "--port", "0"])
    assert res.exit_code == 2 and "Error:" in res.output and "Fix:" in res.output
    res = CliRunner().invoke(main, ["serve", str(tmp_path), "--max-bytes", "lots"])
    assert res.exit_code == 2 and "size" in res.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(run: Path) -> Iterator[str]:
    """A real uvicorn server on a free loopback port, in a thread; stopped afterwards."""
    import uvicorn

    port = _free_port()
    config = uvicorn.Config(create_app(run), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    assert srv.started, "server did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)
    assert not thread.is_alive()


def test_real_server_over_loopback(server: str, run: Path) -> None:
    path = _tests(run)[0]
    req = urllib.request.Request(f"{server}/predict", data=_png(path), method="POST",
                                 headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = json.loads(resp.read())
    assert body["predictions"][0]["label"] == ImageClassifier.load(run).predict(str(path))[0]["label"]
    with urllib.request.urlopen(f"{server}/health", timeout=30) as resp:
        assert json.loads(resp.read())["status"] == "ok"


CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists()
                                        else None)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")
def test_page_in_headless_chromium(server: str, tmp_path: Path) -> None:
    """The page predicts its demo image on load; the DOM after it shows the top-k bars."""
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=10000"]
    dom = subprocess.run([*base, "--dump-dom", f"{server}/?demo=1"], capture_output=True,
                         text=True, timeout=120)
    assert 'data-done="1"' in dom.stdout, dom.stderr[-2000:]
    assert "class_0" in dom.stdout and 'class="fill"' in dom.stdout
    shot = tmp_path / "serve.png"
    subprocess.run([*base, f"--screenshot={shot}", "--window-size=760,420",
                    f"{server}/?demo=1"], capture_output=True, timeout=120)
    img = Image.open(io.BytesIO(shot.read_bytes()))
    assert img.size == (760, 420)
    assert len(np.unique(np.asarray(img.convert("L")))) > 8  # not a blank page
    if os.environ.get("GRAFT_SAVE_SCREENSHOT"):  # refresh docs/serve-screenshot.png on request
        shutil.copyfile(shot, REPO / "docs" / "serve-screenshot.png")


def test_a_client_that_disconnects_mid_upload_is_one_info_line(
        server: str, run: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No traceback in the server log (graftwork's nor uvicorn's); the server keeps serving."""
    host, port = server.removeprefix("http://").split(":")
    body = _png(_tests(run)[0])
    with caplog.at_level(logging.INFO):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                         b"Content-Length: %d\r\n\r\n" % (len(body) + 100_000) + body)
            time.sleep(0.3)  # the server is reading the body ...
        for _ in range(100):  # ... and sees the connection close
            if any("disconnected" in r.getMessage() for r in caplog.records):
                break
            time.sleep(0.05)
        with urllib.request.urlopen(f"{server}/health", timeout=30) as resp:
            assert json.loads(resp.read())["status"] == "ok"
    lines = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and not lines[0].exc_info
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], \
        [r.getMessage() for r in caplog.records]
