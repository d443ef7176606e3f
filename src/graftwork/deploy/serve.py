"""HTTP serving of a trained run (FastAPI + uvicorn; ``pip install 'graftwork[serve]'``).

    POST /predict   multipart images (field ``file`` or ``files``) or a raw image body
    GET  /health    {"status": "ok", "classes": [...], "model": {...}}
    GET  /          a small self-contained page: choose or drop an image, see the top-k bars

Uploads are bounded (``max_bytes`` per request body, ``max_files`` per request), decoded with
the decompression-bomb guard of :func:`graftwork.data.load_image`, preprocessed exactly as
graftwork's eval path, and micro-batched into one forward pass per few milliseconds.
"""
from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from graftwork.data.preprocess import Preprocessing
from graftwork.estimator.classifier import ImageClassifier
from graftwork.errors import BadImageError, ConfigError
from graftwork.estimator.inference import top_classes
from graftwork.deploy.export import load_pixels, pixel_model

try:  # module level: FastAPI resolves the endpoints' (string) annotations in these globals
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect
    _MISSING: ImportError | None = None
except ImportError as _exc:  # the optional extra is not installed
    _MISSING = _exc

__all__ = ["create_app", "serve", "parse_size", "Engine"]

log = logging.getLogger(__name__)

_FORWARD_CHUNK = 64
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}


def parse_size(text: str | int) -> int:
    """``"10MB"``/``"512k"``/``"1048576"`` -> bytes (binary multiples)."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(text)
    if not m:
        raise ConfigError(f"cannot read {text!r} as a size", "write e.g. 10MB, 512KB or 1000000")
    unit = (m.group(2) or "").lower()[:1]
    return int(float(m.group(1)) * _UNITS[unit])


class Engine:
    """The run's model on uint8 pixels behind a micro-batcher; returns probabilities."""

    def __init__(self, run_dir: str | Path, max_batch: int = 32, max_wait_ms: float = 5.0) -> None:
        from graftwork.deploy.batcher import MicroBatcher

        self.run_dir = Path(run_dir)
        self.clf = ImageClassifier.load(self.run_dir)
        self.classes: list[str] = list(self.clf.classes_)
        self.pre: Preprocessing = self.clf.preprocessing_
        self.model = pixel_model(self.clf)
        self.batcher = MicroBatcher(self._forward, max_batch, max_wait_ms / 1000)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            t = torch.from_numpy(x)
            return torch.cat([self.model(t[i:i + _FORWARD_CHUNK])[1]
                              for i in range(0, len(t), _FORWARD_CHUNK)]).numpy()

    def pixels(self, data: bytes) -> np.ndarray:
        """Decoded + resized + centre-cropped uint8 ``[H, W, 3]`` (``BadImageError`` if not)."""
        return load_pixels(data, self.pre)

    async def probs(self, pixels: list[np.ndarray]) -> np.ndarray:
        return await self.batcher.submit(np.stack(pixels))

    def info(self) -> dict[str, Any]:
        return {"run": self.run_dir.name, "backbone": str(getattr(self.clf, "backbone", "")),
                "strategy": str(getattr(self.clf, "strategy", "")),
                "image_size": self.pre.image_size,
                "tta": self.model.tta, "temperature": self.model.temperature,
                "batches": self.batcher.batches, "images": self.batcher.images}


class _Reject(Exception):
    """A bad request: answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _image_error(name: str, exc: BadImageError) -> _Reject:
    cause = exc.__cause__
    if isinstance(cause, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return _Reject(413, f"{name}: image has too many pixels (decompression bomb guard)")
    if "empty" in exc.message:
        return _Reject(400, f"{name}: empty file")
    return _Reject(415, f"{name}: not a decodable image")


def create_app(run_dir: str | Path, *, max_bytes: int | str = "10MB", max_files: int = 16,
               top_k: int = 3, max_batch: int = 32, max_wait_ms: float = 5.0) -> Any:
    """The ASGI app serving ``run_dir``'s model (see the module docstring)."""
    if _MISSING is not None:
        raise ConfigError("serving needs FastAPI, uvicorn and python-multipart",
                          "pip install 'graftwork[serve]'") from _MISSING
    from graftwork.deploy.page import PAGE

    limit, max_files = parse_size(max_bytes), max(1, int(max_files))
    if limit <= 0:
        raise ConfigError("--max-bytes must be positive", "give e.g. --max-bytes 10MB")
    engine = Engine(run_dir, max_batch, max_wait_ms)
    app = FastAPI(title="graftwork", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"error": "internal error"}, status_code=500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "classes": engine.classes, "model": engine.info()}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.replace("__TOP_K__", str(top_k)))

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise _Reject(400, "invalid Content-Length")
            if int(declared) > limit:
                raise _Reject(413, f"request body of {int(declared)} bytes is over the limit "
                                   f"of {limit} bytes")
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _Reject(413, f"request body is over the limit of {limit} bytes")
                chunks.append(chunk)
        except ClientDisconnect:  # the client went away: nobody to answer, nothing broken
            client = request.client
            log.info("client %s disconnected during its upload (%d bytes received)",
                     f"{client.host}:{client.port}" if client else "?", size)
            raise _Reject(400, "client disconnected during the upload") from None
        return b"".join(chunks)

    async def uploads(request: Request) -> list[tuple[str, bytes]]:
        ctype = request.headers.get("content-type", "").lower()
        body = await read_body(request)
        if not body:
            raise _Reject(400, "empty request body: send an image")
        if ctype.startswith("multipart/form-data"):
            return await _multipart(request, body, max_files)
        if ctype.startswith("image/") or ctype.startswith("application/octet-stream"):
            name = request.headers.get("x-filename") or "upload"
            return [(name[:200], body)]
        raise _Reject(415, f"unsupported Content-Type {ctype or '(none)'!r}: send "
                           "multipart/form-data (field 'file' or 'files') or an image/* body")

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        try:
            k = int(request.query_params.get("top_k", top_k))
            files = await uploads(request)
            if len(files) > max_files:
                raise _Reject(413, f"{len(files)} files is over the limit of {max_files}")
            pixels = []
            for name, data in files:
                if not data:
                    raise _Reject(400, f"{name}: empty file")
                try:
                    pixels.append(await asyncio.to_thread(engine.pixels, data))
                except BadImageError as exc:
                    raise _image_error(name, exc) from None
            probs = await engine.probs(pixels)
        except _Reject as rej:
            return JSONResponse({"error": rej.message}, status_code=rej.status)
        except ValueError:
            return JSONResponse({"error": "top_k must be an integer"}, status_code=400)
        k = max(1, min(k, len(engine.classes)))
        return JSONResponse({"predictions": [_row(name, p, engine.classes, k)
                                             for (name, _), p in zip(files, probs)]})

    return app


def _row(name: str, probs: np.ndarray, classes: list[str], k: int) -> dict[str, Any]:
    top = top_classes(probs, classes, k, ndigits=6)
    return {"filename": name, "label": top[0]["label"], "prob": top[0]["prob"], "top_k": top}


async def _multipart(request: Any, body: bytes, max_files: int) -> list[tuple[str, bytes]]:
    """The ``file``/``files`` parts of an already size-checked multipart body."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException
    from starlette.requests import Request

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {k: v for k, v in request.scope.items() if k != "app"}  # errors come to us
    try:
        form = await Request(scope, replay).form(max_files=max_files + 1, max_fields=100)
    except MultiPartException as exc:
        status = 413 if "too many" in str(exc).lower() else 400
        raise _Reject(status, f"bad multipart body: {exc}") from None
    except Exception as exc:  # malformed boundaries and the like
        raise _Reject(400, f"bad multipart body: {type(exc).__name__}") from None
    try:
        files = [(v.filename or key, await v.read()) for key, v in form.multi_items()
                 if key in ("file", "files") and isinstance(v, UploadFile)]
    finally:
        await form.close()
    if not files:
        raise _Reject(400, "no image in the multipart body: use the field name 'file' or 'files'")
    return files


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, *,
          max_bytes: int | str = "10MB", max_files: int = 16, top_k: int = 3,
          log_level: str = "info") -> None:
    """Serve ``run_dir`` with uvicorn until interrupted."""
    try:
        import uvicorn
    except ImportError as exc:
        raise ConfigError("serving needs FastAPI, uvicorn and python-multipart",
                          "pip install 'graftwork[serve]'") from exc
    app = create_app(run_dir, max_bytes=max_bytes, max_files=max_files, top_k=top_k)
    log.info("serving %s on http://%s:%d", run_dir, host, port)
    # beyond 64 open requests uvicorn answers 503 instead of buffering ever more uploads
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False,
                limit_concurrency=64)
