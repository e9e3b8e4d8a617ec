"""``recog serve``: predictions over HTTP (FastAPI + uvicorn), from a run, a weights file or an
exported ``.onnx`` file (ONNX Runtime, no torch).

    POST /v1/predict   an image as the raw body or as a multipart ``file`` field -> top-k JSON
                       (multi-label: the labels over their thresholds)
    GET  /v1/model     classes, input size, channels, task, format, recog version
    GET  /healthz      "ok"
    GET  /docs         OpenAPI

Limits come before any parsing: a body over ``max_upload_mb`` is refused with 413 from its
Content-Length, or as soon as a chunked body passes the limit (python-multipart would otherwise
spool a big part to disk); an image over the pixel limit is 413, bytes that are not an image are
415 whatever the content type says, an empty body is 400 — always a JSON ``{"error", "kind"}``,
never a traceback. Binds to 127.0.0.1 unless told; an API key (``--api-key`` or ``RECOG_API_KEY``)
is required in ``X-API-Key`` when set.

Not yet (issue 14): dynamic batching, the bounded queue and timeouts, the web page, explanations.
"""


import os
import secrets
import sys
from pathlib import Path
from typing import Any

from recog import __version__
from recog.data.image import DEFAULT_MAX_PIXELS, ImageReadError
from recog.errors import ConfigError

STATUS = {"empty": 400, "too_many_pixels": 413, "truncated": 415, "not_an_image": 415, "unreadable": 415}
API_KEY_ENV = "RECOG_API_KEY"


class Predictor:
    """What the app calls: bytes -> the task's answer. Backed by a torch Classifier or an ONNX file."""

    def __init__(self, source: str | os.PathLike, backend: str | None = None, device: str = "auto") -> None:
        path = Path(source)
        backend = backend or ("onnx" if path.suffix.lower() == ".onnx" else "torch")
        if backend not in ("torch", "onnx"):
            raise ConfigError(f"--backend must be torch or onnx, got {backend!r}")
        if backend == "onnx" and path.suffix.lower() != ".onnx":
            raise ConfigError(f"--backend onnx serves an exported .onnx file (recog export {source}); got {source}")
        self.backend = backend
        if backend == "onnx":
            from recog.onnx_predict import OnnxClassifier

            self.model: Any = OnnxClassifier(path)
            self.meta = self.model.meta
        else:
            from recog.inference import load

            self.model = load(path, device)
            self.meta = self.model.meta
        self.classes = list(self.meta["classes"])

    def predict(self, data: bytes, top_k: int) -> dict[str, Any]:
        image = self.model.read(data)  # both backends decode as in training
        if self.backend == "onnx":
            return self.model.predict_arrays(image[None], top_k)[0]
        return self.model.predict_images(image[None], top_k)[0]


class BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes, from Content-Length before reading, or
    while a body without one streams in."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await _json(send, 413 if length.isdigit() else 400,
                               {"error": f"body over the {self.limit // 2**20} MB limit" if length.isdigit()
                                else "bad Content-Length", "kind": "too_large" if length.isdigit() else "bad_request"})
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _json(send, 413, {"error": f"body over the {self.limit // 2**20} MB limit", "kind": "too_large"})


class _TooLarge(Exception):
    pass


async def _json(send: Any, status: int, body: dict) -> None:
    import json

    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def create_app(predictor: Predictor, max_upload_mb: float = 10, max_pixels: int = DEFAULT_MAX_PIXELS,
               api_key: str | None = None, top_k: int = 5) -> Any:
    """The FastAPI app (wrapped in the body limit)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse

    from recog.data.image import set_max_image_pixels

    set_max_image_pixels(max_pixels)  # larger images are refused as decompression bombs (413)
    app = FastAPI(title="recog", version=__version__, description="Image classification by a model recog trained.")

    def refuse(status: int, error: str, kind: str) -> JSONResponse:
        return JSONResponse({"error": error, "kind": kind}, status_code=status)

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> str:
        return "ok"

    @app.get("/v1/model")
    def model() -> dict[str, Any]:
        m = predictor.meta
        return {"model": m["model"], "classes": predictor.classes, "image_size": m["image_size"],
                "channels": m["channels"], "task": m.get("task", "classification"), "format": predictor.backend,
                "recog_version": __version__}

    @app.post("/v1/predict")
    async def predict(request: Request) -> Any:
        if api_key is not None and not secrets.compare_digest(request.headers.get("x-api-key", ""), api_key):
            return refuse(401, "missing or wrong X-API-Key", "unauthorized")
        data = await _image_bytes(request)
        if isinstance(data, JSONResponse):
            return data
        try:
            return predictor.predict(data, top_k)
        except ImageReadError as exc:  # the message names no server path: the upload has no name here
            return refuse(STATUS.get(exc.kind, 415), str(exc), exc.kind)

    async def _image_bytes(request: Request) -> bytes | JSONResponse:
        """The raw body, or the multipart ``file`` field (its filename is never used)."""
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                return refuse(400, "multipart body without a 'file' field", "bad_request")
            data = await upload.read()
        else:
            data = await request.body()
        if not data:
            return refuse(400, "empty body: send an image", "empty")
        return data

    limit = int(max_upload_mb * 2**20)
    return BodyLimit(app, limit)


def serve(source: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, backend: str | None = None,
          max_upload_mb: float = 10, api_key: str | None = None, device: str = "auto") -> None:
    """Run the server until interrupted."""
    try:
        import fastapi  # noqa: F401  (present?)
        import multipart  # noqa: F401
        import uvicorn
    except ImportError:
        raise ConfigError("recog serve needs FastAPI and uvicorn: pip install 'recog[serve]'") from None
    if max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {host}: reachable from other machines"
              + ("" if api_key else f" and without an API key (--api-key or {API_KEY_ENV})"), file=sys.stderr)
    app = create_app(Predictor(source, backend, device), max_upload_mb, api_key=api_key)
    uvicorn.run(app, host=host, port=port, log_level="warning")
