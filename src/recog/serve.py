"""``recog serve``: predictions over HTTP (FastAPI + uvicorn), from a run, a weights file or an
exported ``.onnx`` file (ONNX Runtime, no torch).

    GET  /             a web page: drop an image, see the top classes and where the evidence is
    POST /v1/predict   an image as the raw body or as a multipart ``file`` field -> top-k JSON
                       (multi-label: the labels over their thresholds); a fusion model also
                       takes a ``text`` form field or ``?text=`` (none: the image alone)
    POST /v1/explain   the same image -> a PNG of the explanation's overlay (torch backend;
                       ``?method=ig|gradcam|saliency|occlusion&target=CLASS``)
    GET  /v1/model     classes, input size, channels, task, format, precision, recog version
    GET  /healthz      "ok"
    GET  /metrics      Prometheus text: requests by path and status, latency and batch-size
                       histograms, queue depth (behind the API key when there is one)
    GET  /docs         OpenAPI

Under load, requests are batched: images are decoded in worker threads, queued, and one model
thread takes up to ``max_batch`` of them at a time, waiting up to ``max_wait_ms`` for more only
while more requests are already being decoded (so a lone request never waits). The queue is
bounded: when ``max_queue`` requests are waiting, the next gets 503 with Retry-After instead of
memory growing. A request holds a place in the queue only once its body has arrived: a body that
does not arrive within ``timeout`` seconds is answered 408, so clients that stall half-way cannot
fill the queue. A request not answered within ``timeout`` seconds gets 504 (its image is dropped
from the queue if it has not run yet) and later requests are served as usual. Explanations run one
at a time on their own thread and model copy: one that times out (504) cannot be stopped, but it
delays no prediction, and further explanations get 503 until it ends.

Limits come before any parsing: a body over ``max_upload_mb`` is refused with 413 from its
Content-Length, or as soon as a chunked body passes the limit (python-multipart would otherwise
spool a big part to disk); an image over the pixel limit is 413, bytes that are not an image are
415 whatever the content type says, an empty body or a malformed multipart one is 400 — always a
JSON ``{"error", "kind"}``,
never a traceback. Binds to 127.0.0.1 unless told; an API key (``--api-key`` or ``RECOG_API_KEY``)
is required in ``X-API-Key`` when set; CORS is off unless origins are given.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at run time.

import asyncio
import importlib
import importlib.util
import concurrent.futures
import math
import os
import secrets
import sys
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from recog._version import __version__
from recog.data.image import DEFAULT_MAX_PIXELS, ImageReadError
from recog.config import parse_duration
from recog.errors import ConfigError, MissingExtra

STATUS = {"empty": 400, "too_many_pixels": 413, "truncated": 415, "not_an_image": 415, "unreadable": 415}
API_KEY_ENV = "RECOG_API_KEY"


class Predictor:
    """What the app calls: bytes -> a decoded image (``read``), decoded images -> the task's answers
    (``run``, one batch). Backed by a torch Classifier or an ONNX file."""

    def __init__(self, source: str | os.PathLike, backend: str | None = None, device: str = "auto",
                 precision: str = "auto", tta: bool | None = None, threads: int | None = None) -> None:
        path = Path(source)
        backend = backend or ("onnx" if path.suffix.lower() == ".onnx" else "torch")
        if backend not in ("torch", "onnx"):
            raise ConfigError(f"--backend must be torch or onnx, got {backend!r}")
        if backend == "onnx" and path.suffix.lower() != ".onnx":
            raise ConfigError(f"--backend onnx serves an exported .onnx file (recog export {source}); got {source}")
        if precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"--precision must be auto, fp32 or bf16, got {precision!r}")
        self.backend = backend
        if backend == "onnx":
            from recog.onnx_predict import OnnxClassifier

            if precision == "bf16" or tta:
                raise ConfigError("--precision bf16 and --tta are for the torch backend; an ONNX file computes one "
                                  "view as it was exported (recog export --int8 for a faster one)")
            self.model: Any = OnnxClassifier(path, spinning=False, threads=threads)  # threads that sleep: the
            # decoders need the cores
            self.precision = self.model.meta.get("precision", "fp32")  # "int8" for recog export --int8
        else:
            import torch

            from recog.cores import usable_cores
            from recog.inference import load

            torch.set_num_threads(threads or usable_cores())  # a cgroup quota included: not every host core
            self.model = load(path, device, precision, tta, verbose=True)
            self.precision = self.model.policy.precision
        self.policy = (f"{self.precision}, no TTA (the exported graph)" if backend == "onnx"
                       else self.model.policy.describe())
        self.meta = self.model.meta
        self.classes = list(self.meta["classes"])
        self.takes_text = "text" in self.meta.get("inputs", ())  # a fusion model: image + text
        self._explainer: Any = None

    def read(self, data: bytes, text: str | None = None) -> Any:
        """The image as the model's uint8 input (C, H, W), decoded as in training; for a fusion model
        (image, the text's embedding), the text "" when none was sent."""
        if text is not None and not self.takes_text:
            raise ConfigError("this model takes images only: send no 'text' (image + text needs a model trained "
                              "with --model fusion:NAME)")
        image = self.model.read(data)
        # request texts are anyone's: embedded without the disk cache, which would grow with every new one
        return (image, self.model.embed([text or ""], cache=False)[0]) if self.takes_text else image

    def run(self, images: list[Any], top_k: int) -> list[dict[str, Any]]:
        """One batch of decoded images (fusion: (image, text embedding) pairs) -> one answer each."""
        if self.backend == "onnx":
            import numpy as np

            return self.model.predict_arrays(np.stack(images), top_k)
        import torch

        text = torch.stack([t for _, t in images]) if self.takes_text else None
        if self.takes_text:
            images = [x for x, _ in images]
        with torch.inference_mode():  # the classifier's inference policy: precision and TTA views
            return self.model.predict_images(torch.stack(images), top_k, text)

    def explain_png(self, image: Any, method: str | None, target: str | None) -> bytes:
        """The explanation's overlay (image and map) as a PNG (``method`` None: recog explain's
        default); the torch backend only."""
        if self.backend != "torch":
            raise NotImplementedError("explanations need the torch backend: serve the run or its weights file "
                                      "(recog serve RUN), not the .onnx export")
        import copy

        from recog.explanations import DEFAULT_METHOD, explain, overlay_png

        if self._explainer is None:  # its own copy: the attribution's hooks never touch the model predicting
            self._explainer = copy.deepcopy(self.model)
        return overlay_png(explain(self._explainer, image[None], method=method or DEFAULT_METHOD, target=target))


KNOWN_PATHS = ("/", "/healthz", "/metrics", "/v1/model", "/v1/predict", "/v1/explain", "/docs", "/openapi.json")


class Metrics:
    """The server's Prometheus metrics (prometheus-client, in a registry of the app's own)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("recog_requests", "HTTP requests answered, by path and status", ["path", "status"],
                                registry=self.registry)
        self.latency = Histogram("recog_request_seconds", "time from request to answer, by path", ["path"],
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                 registry=self.registry)
        self.batch = Histogram("recog_batch_size", "images per model call (dynamic batching)",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.queue = Gauge("recog_queue_depth", "requests admitted and not yet answered", registry=self.registry)

    @property
    def content_type(self) -> str:
        from prometheus_client import CONTENT_TYPE_LATEST

        return CONTENT_TYPE_LATEST

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class Busy(Exception):
    """The queue is full: try again after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy: {retry_after} s")
        self.retry_after = retry_after


EXPLORE = 16  # the batcher re-measures both ends (max_batch, 1) once every this many batches


class Batcher:
    """Dynamic batching with a bounded queue: ``admit`` (or :class:`Busy`), then ``submit`` the
    decoded item, or ``withdraw`` if it could not be decoded. One model thread runs the batches."""

    def __init__(self, run: Callable[[list[Any]], list[Any]], max_batch: int = 32, max_wait_ms: float = 5,
                 max_queue: int = 256) -> None:
        self.run, self.max_batch, self.max_wait, self.max_queue = run, max_batch, max_wait_ms / 1000, max_queue
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="recog-model")
        self.incoming = 0  # admitted, still being decoded
        self.queue: asyncio.Queue | None = None
        self.changed: asyncio.Event | None = None
        self.worker: asyncio.Task | None = None
        self.batch_seconds = 0.05  # moving average, for Retry-After
        self.batches = 0
        self.per_image: dict[int, float] = {}  # batch sizes by power of two -> moving average of seconds per image

    def admit(self) -> None:
        waiting = self.incoming + (self.queue.qsize() if self.queue is not None else 0)
        if waiting >= self.max_queue:
            batches_ahead = math.ceil(waiting / self.max_batch) + 1
            raise Busy(max(1, math.ceil(batches_ahead * self.batch_seconds)))
        self.incoming += 1

    def withdraw(self) -> None:
        self.incoming -= 1
        if self.changed is not None:
            self.changed.set()

    async def submit(self, item: Any, timeout: float) -> tuple[Any, float, int]:
        """(the item's answer, seconds its batch ran, the batch's size); TimeoutError after ``timeout``
        seconds (the item is dropped if not yet run)."""
        self._start()
        future = asyncio.get_running_loop().create_future()
        self.incoming -= 1
        self.queue.put_nowait((item, future))
        self.changed.set()
        return await asyncio.wait_for(future, timeout)  # cancels the future on timeout: the worker skips it

    def cap(self) -> int:
        """The most items the next batch takes: ``max_batch``, unless smaller batches have measured
        cheaper per image on this machine (an ONNX session whose batches of 32 run slower per image
        than single images: batching would lower throughput); then the size range that measured
        cheapest. Every :data:`EXPLORE` batches one is taken at ``max_batch`` and one at 1, so that
        both ends stay measured as the load and the machine change."""
        if self.batches % EXPLORE == 0:
            return self.max_batch
        if self.batches % EXPLORE == EXPLORE - 1:
            return 1
        measured = {size: cost for size, cost in self.per_image.items()}
        if 1 not in measured or len(measured) < 2:
            return self.max_batch
        best = min(measured, key=lambda size: (measured[size], -size))  # ties: the larger batch
        return self.max_batch if best == max(measured) else min(self.max_batch, 2 * best - 1)

    def _measured(self, size: int, seconds: float) -> None:
        bucket = 1 << (size.bit_length() - 1)  # 1, 2-3, 4-7, …: batch sizes by power of two
        cost = seconds / size
        self.per_image[bucket] = cost if bucket not in self.per_image else 0.7 * self.per_image[bucket] + 0.3 * cost

    def _start(self) -> None:
        if self.worker is None:
            self.queue, self.changed = asyncio.Queue(), asyncio.Event()
            self.worker = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            limit = self.cap()
            deadline = loop.time() + self.max_wait
            while len(batch) < limit:
                while len(batch) < limit and not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                left = deadline - loop.time()
                if len(batch) >= limit or self.incoming <= 0 or left <= 0:
                    break  # full, or nobody else on the way, or waited long enough
                self.changed.clear()
                try:
                    await asyncio.wait_for(self.changed.wait(), left)
                except asyncio.TimeoutError:
                    pass
            batch = [(item, future) for item, future in batch if not future.done()]  # timed out: dropped
            if not batch:
                continue
            start = time.perf_counter()
            try:
                answers = await loop.run_in_executor(self.executor, self.run, [item for item, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the error, the server stays up
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            seconds = time.perf_counter() - start
            self.batch_seconds = 0.8 * self.batch_seconds + 0.2 * seconds
            self.batches += 1
            self._measured(len(batch), seconds)
            for (_, future), answer in zip(batch, answers):
                if not future.done():
                    future.set_result((answer, seconds, len(batch)))

    def close(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)


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
                               {"error": f"body over the {self.limit / 2**20:g} MB limit" if length.isdigit()
                                else "bad Content-Length", "kind": "too_large" if length.isdigit() else "bad_request"})
        seen = 0

        async def limited() -> dict:
            # past the limit the body ends here, marked in the scope for the route to answer 413: an
            # exception raised in receive() would cross the framework's middleware task groups as an
            # ExceptionGroup and end as a 500 (or, caught here, as a second response after it)
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    scope[OVER_LIMIT] = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        await self.app(scope, limited, send)


OVER_LIMIT = "recog.body_over_limit"  # set in the ASGI scope when a streamed body passes the upload limit


async def _json(send: Any, status: int, body: dict) -> None:
    import json

    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def create_app(predictor: Predictor, max_upload_mb: float = 10, max_pixels: int = DEFAULT_MAX_PIXELS,
               api_key: str | None = None, top_k: int = 5, max_batch: int = 32, max_wait_ms: float = 5,
               max_queue: int = 256, timeout: float = 30, cors: list[str] | None = None) -> Any:
    """The FastAPI app (wrapped in the body limit)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
    from starlette.concurrency import run_in_threadpool

    from recog.data.image import set_max_image_pixels

    timeout = parse_duration(timeout, "--timeout")
    _check_limits(max_upload_mb, max_batch, max_wait_ms, max_queue, timeout)
    set_max_image_pixels(max_pixels)  # larger images are refused as decompression bombs (413)
    metrics = Metrics()

    def run(images: list[Any]) -> list[Any]:
        metrics.batch.observe(len(images))
        return predictor.run(images, top_k)

    batcher = Batcher(run, max_batch, max_wait_ms, max_queue)
    explainer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="recog-explain")
    explaining: list[concurrent.futures.Future | None] = [None]  # the explanation running, if any
    metrics.queue.set_function(lambda: batcher.incoming + (batcher.queue.qsize() if batcher.queue else 0))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        yield
        batcher.close()
        explainer.shutdown(wait=False, cancel_futures=True)

    # with an API key, the model card and the API's own description need it too (docs and schema are not
    # served then: they would describe the model to anyone)
    docs = {} if api_key is None else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="recog", version=__version__, lifespan=lifespan,
                  description="Image classification by a model recog trained.", **docs)
    app.state.batcher = batcher
    if cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cors, allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type", "X-API-Key"])
    page = resources.files("recog").joinpath("web/index.html").read_text(encoding="utf-8")

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Any]) -> Any:
        """Every answer counted by path and status, and timed (GET /metrics)."""
        started = time.perf_counter()
        response = await call_next(request)
        path = request.url.path if request.url.path in KNOWN_PATHS else "other"  # unknown paths: one label
        metrics.requests.labels(path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - started)
        return response

    def refused(request: Request) -> bool:
        """A key is set and the request does not carry it."""
        return api_key is not None and not secrets.compare_digest(request.headers.get("x-api-key", ""), api_key)

    def refuse(status: int, error: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": error, "kind": kind}, status_code=status, headers=headers)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return page

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> str:
        return "ok"

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus(request: Request) -> Any:
        """Prometheus text: requests by path and status, latency and batch-size histograms, queue depth."""
        if refused(request):
            return refuse(401, "missing or wrong X-API-Key", "unauthorized")
        return Response(metrics.text(), media_type=metrics.content_type)

    @app.get("/v1/model")
    def model(request: Request) -> Any:
        if refused(request):
            return refuse(401, "missing or wrong X-API-Key", "unauthorized")
        m = predictor.meta
        return {"model": m["model"], "classes": predictor.classes, "image_size": m["image_size"],
                "channels": m["channels"], "task": m.get("task"), "format": predictor.backend,
                "precision": predictor.precision, "inference": predictor.policy,
                "explain": predictor.backend == "torch",
                "inputs": m.get("inputs", ["image"]),
                "recog_version": __version__}

    async def decoded(request: Request) -> Any:
        """The request's image decoded, or the JSON refusal. Its body is read first (within the timeout:
        a client that stalls half-way is answered 408 and never held a place in the queue), then it is
        admitted to the queue (or 503) and decoded."""
        if refused(request):
            return refuse(401, "missing or wrong X-API-Key", "unauthorized")
        try:
            data = await asyncio.wait_for(_image_bytes(request), timeout)
        except asyncio.TimeoutError:
            return refuse(408, f"the request's body did not arrive within {timeout:g} s", "timeout")
        if isinstance(data, JSONResponse):
            return data
        try:
            batcher.admit()
        except Busy as busy:
            return refuse(503, f"the server is busy: try again in {busy.retry_after} s", "busy",
                          {"Retry-After": str(busy.retry_after)})
        try:
            image, text = data  # a text only for models that read one: read(bytes) stays the interface
            return await run_in_threadpool(predictor.read, *((image,) if text is None else (image, text)))
        except ImageReadError as exc:  # the message names no server path: the upload has no name here
            refusal = refuse(STATUS.get(exc.kind, 415), str(exc), exc.kind)
        except ConfigError as exc:  # text for an image-only model, or no text encoder installed
            refusal = refuse(501 if isinstance(exc, MissingExtra) else 400, str(exc), "bad_request")
        except BaseException:
            batcher.withdraw()
            raise
        batcher.withdraw()
        return refusal

    @app.post("/v1/predict")
    async def predict(request: Request) -> Any:
        start = time.perf_counter()
        image = await decoded(request)
        if isinstance(image, JSONResponse):
            return image
        decoded_at = time.perf_counter()
        try:
            answer, model_seconds, batch_size = await batcher.submit(image, timeout)
            # where the time went, as browsers' developer tools and curl -v show it (ms)
            timing = (f"decode;dur={1000 * (decoded_at - start):.1f}, "
                      f"queue;dur={1000 * (time.perf_counter() - decoded_at - model_seconds):.1f}, "
                      f'model;dur={1000 * model_seconds:.1f};desc="batch of {batch_size}"')
            return JSONResponse(answer, headers={"Server-Timing": timing})
        except asyncio.TimeoutError:
            return refuse(504, f"no answer within {timeout:g} s: the server is overloaded", "timeout")
        except Exception as exc:  # noqa: BLE001 - the model failed (e.g. non-finite outputs): say so, stay up
            return refuse(500, str(exc), "model_error")

    @app.post("/v1/explain", responses={200: {"content": {"image/png": {}}}})
    async def explain(request: Request, method: str | None = None, target: str | None = None) -> Any:
        if predictor.backend != "torch":
            return refuse(501, "explanations need the torch backend: serve the run or its weights file, not the "
                               ".onnx export", "not_supported")
        image = await decoded(request)
        if isinstance(image, JSONResponse):
            return image
        batcher.withdraw()  # explanations run on their own thread and model copy, not in a batch
        if predictor.takes_text:  # the image's explanation (the model given the image without its text)
            image = image[0]
        if explaining[0] is not None and not explaining[0].done():  # one at a time, a timed-out one included:
            return refuse(503, "an explanation is still running: try again shortly", "busy",  # it cannot be
                          {"Retry-After": str(max(1, math.ceil(timeout / 2)))})  # stopped, only not joined
        explaining[0] = explainer.submit(predictor.explain_png, image, method, target)
        try:
            png = await asyncio.wait_for(asyncio.wrap_future(explaining[0]), timeout)
        except asyncio.TimeoutError:
            return refuse(504, f"no explanation within {timeout:g} s", "timeout")
        except ConfigError as exc:  # a method or class that does not exist, or Captum missing
            return refuse(501 if isinstance(exc, MissingExtra) else 400, str(exc), "bad_request")
        return Response(png, media_type="image/png")

    async def _image_bytes(request: Request) -> tuple[bytes, str | None] | JSONResponse:
        """(the raw body or the multipart ``file`` field (its filename is never used), the ``text``
        form field or query parameter, for fusion models); a refusal for a body over the limit, a
        malformed multipart body or a client that left."""
        from starlette.exceptions import HTTPException
        from starlette.requests import ClientDisconnect

        text = request.query_params.get("text")
        try:
            if request.headers.get("content-type", "").startswith("multipart/form-data"):
                form = await request.form()
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    return refuse(400, "multipart body without a 'file' field", "bad_request")
                data = await upload.read()
                field = form.get("text")
                text = field if isinstance(field, str) else text
            else:
                data = await request.body()
        except HTTPException as exc:  # starlette's multipart parser: no boundary, a broken part…
            if request.scope.get(OVER_LIMIT):  # …or a body cut at the limit
                return refuse(413, f"body over the {max_upload_mb:g} MB limit", "too_large")
            return refuse(400, f"malformed multipart body: {exc.detail}", "bad_request")
        except ClientDisconnect:
            return refuse(400, "the client closed the connection before its body arrived", "bad_request")
        if request.scope.get(OVER_LIMIT):
            return refuse(413, f"body over the {max_upload_mb:g} MB limit", "too_large")
        if not data:
            return refuse(400, "empty body: send an image", "empty")
        return data, text

    return BodyLimit(app, int(max_upload_mb * 2**20))


def _check_limits(max_upload_mb: float, max_batch: int, max_wait_ms: float, max_queue: int, timeout: float) -> None:
    """Every limit a finite number in its range (inf and nan named: inf MB overflowed, a nan wait made
    every request time out)."""
    for flag, value in (("--max-upload-mb", max_upload_mb), ("--max-batch", max_batch), ("--max-queue", max_queue),
                        ("--timeout", timeout), ("--max-wait-ms", max_wait_ms)):
        if not math.isfinite(value):
            raise ConfigError(f"{flag} must be a finite number, got {value}")
        if not value > 0 and flag != "--max-wait-ms":
            raise ConfigError(f"{flag} must be positive, got {value}")
    if max_wait_ms < 0:
        raise ConfigError(f"--max-wait-ms must be 0 or more, got {max_wait_ms}")


def check_port(port: int) -> None:
    """A TCP port is 1..65535 (99999 was printed as the address while uvicorn listened elsewhere)."""
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port must be 1 to 65535, got {port}")


def serve(source: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, backend: str | None = None,
          max_upload_mb: float = 10, api_key: str | None = None, device: str = "auto", precision: str = "auto",
          max_batch: int = 32, max_wait_ms: float = 5, max_queue: int = 256, timeout: float | str = 30,
          cors: list[str] | None = None, tta: bool | None = None, threads: int | None = None) -> None:
    """Run the server until interrupted. ``precision`` and ``tta``: the inference policy (defaults: as
    the run's own evaluation; :func:`recog.inference.inference_policy`). ``timeout``: seconds or a
    duration (``30s``, ``1m``). ``threads``: the model's CPU threads (default: the usable cores)."""
    try:
        import fastapi  # noqa: F401  (present?)
        import prometheus_client  # noqa: F401  (GET /metrics)
        import uvicorn

        importlib.import_module("python_multipart" if importlib.util.find_spec("python_multipart") else "multipart")
    except ImportError:
        raise MissingExtra("recog serve needs FastAPI and uvicorn", "serve") from None
    timeout = parse_duration(timeout, "--timeout")
    _check_limits(max_upload_mb, max_batch, max_wait_ms, max_queue, timeout)
    check_port(port)
    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {host}: reachable from other machines"
              + ("" if api_key else f" and without an API key (--api-key or {API_KEY_ENV})"), file=sys.stderr)
    if threads is not None and not 1 <= threads <= 1024:
        raise ConfigError(f"--threads must be 1 to 1024, got {threads}")
    predictor = Predictor(source, backend, device, precision, tta, threads)
    print(f"inference: {predictor.policy} (--precision, --tta/--no-tta to change)", file=sys.stderr)
    app = create_app(predictor, max_upload_mb, api_key=api_key,
                     max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue, timeout=timeout, cors=cors)
    print(f"recog serve: http://{'[' + host + ']' if ':' in host else host}:{port}/ (API docs at /docs)",
          file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="warning")
