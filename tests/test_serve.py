"""``recog serve`` against a real uvicorn server on a loopback port: predictions from a run and
from an exported ONNX file, the model card, every refusal as a JSON error, dynamic batching, the
bounded queue (503), timeouts (504), explanations, CORS and the web page in headless Chromium."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(digits_run):
    """``recog serve RUN`` with a 1 MB upload limit and an API key, until the module ends."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "recog", "serve", str(digits_run.path), "--port", str(port),
                             "--max-upload-mb", "1", "--api-key", "s3cret"], stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1)
            break
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None:
                pytest.fail(proc.stderr.read())
            time.sleep(0.5)
    yield base
    proc.terminate()
    proc.wait(timeout=30)


def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"X-API-Key": "s3cret", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    import io

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    buf = io.BytesIO()
    Image.fromarray(np.round(load_digits().images[0] * 255 / 16).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_predict_raw_and_multipart_and_the_model_card(server: str, digit_png: bytes, digits_run) -> None:
    import recog

    status, body = _post(server + "/v1/predict", digit_png, {"Content-Type": "image/png"})
    assert status == 200 and len(body["top"]) == 5
    assert body["top"][0]["class"] == recog.predict(digits_run.path, [_save(digit_png)])[0]["top"][0]["class"]
    boundary = "xyzBOUNDARY"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"../../etc/passwd\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + digit_png + f"\r\n--{boundary}--\r\n".encode()
    status, multi = _post(server + "/v1/predict", form, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200 and multi == body  # the traversal filename is never used
    with pytest.raises(urllib.error.HTTPError) as refused:  # the server has an API key: the card needs it
        urllib.request.urlopen(server + "/v1/model")
    assert refused.value.code == 401
    with urllib.request.urlopen(urllib.request.Request(server + "/v1/model", headers={"X-API-Key": "s3cret"})) as r:
        card = json.loads(r.read())
    assert card["classes"] == [str(i) for i in range(10)] and card["image_size"] == 8 and card["format"] == "torch"


def _save(data: bytes) -> str:
    import tempfile

    f = tempfile.NamedTemporaryFile(suffix=".png", delete=False)
    f.write(data)
    f.close()
    return f.name


def test_refusals_are_json_with_the_right_status(server: str, digit_png: bytes) -> None:
    assert _post(server + "/v1/predict", b"")[0] == 400
    status, body = _post(server + "/v1/predict", b"this is text, not an image", {"Content-Type": "image/png"})
    assert status == 415 and body["kind"] == "not_an_image"
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:  # 413 before a byte of the body is sent
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-API-Key: s3cret\r\nContent-Length: 2097152\r\n\r\n")
        reply = _response(s)
    assert reply.startswith("HTTP/1.1 413") and '"too_large"' in reply
    status, body = _post(server + "/v1/predict", digit_png[:60])
    assert status == 415 and body["kind"] == "truncated"
    req = urllib.request.Request(server + "/v1/predict", data=digit_png, method="POST")  # no key
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 401
    form = b"--b\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nx\r\n--b--\r\n"
    status, body = _post(server + "/v1/predict", form, {"Content-Type": "multipart/form-data; boundary=b"})
    assert status == 400 and "'file'" in body["error"]
    assert _post(server + "/v1/predict", digit_png, {"Content-Type": "image/png"})[0] == 200  # still serving


def test_onnx_backend_serves_an_exported_file(digits_run, digit_png: bytes) -> None:
    pytest.importorskip("onnxruntime")
    from fastapi.testclient import TestClient

    from recog.export import export
    from recog.serve import Predictor, create_app

    path = export(digits_run.path, verbose=False)
    app = create_app(Predictor(path))
    with TestClient(app) as client:
        r = client.post("/v1/predict", content=digit_png)
        assert r.status_code == 200 and len(r.json()["top"]) == 5
        assert client.get("/v1/model").json()["format"] == "onnx"


def test_without_fastapi_one_line_says_what_to_install(digits_run) -> None:
    code = ("import sys; sys.modules['fastapi'] = None; from recog.cli import main; "
            f"sys.exit(main(['serve', {str(digits_run.path)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: recog serve needs FastAPI and uvicorn: pip install 'recog[serve]' (from a clone: pip install -e \".[serve]\")"


# ---- batching, the queue and timeouts: an in-process uvicorn server around a gated predictor ------------

class Gated:
    """A real Predictor whose batches wait at a gate: tests decide when the model runs."""

    def __init__(self, source) -> None:
        from recog.serve import Predictor

        self.inner = Predictor(source, precision="fp32")  # compared with recog.predict (fp32) to 1e-5
        self.meta, self.classes, self.backend, self.precision = (self.inner.meta, self.inner.classes,
                                                                 self.inner.backend, self.inner.precision)
        self.gate, self.entered, self.sizes = threading.Event(), threading.Event(), []
        self.takes_text, self.explain_gate, self.explaining = False, threading.Event(), threading.Event()

    def read(self, data: bytes):
        return self.inner.read(data)

    def run(self, images, top_k):
        self.entered.set()
        self.gate.wait(30)
        self.sizes.append(len(images))
        return self.inner.run(images, top_k)

    def explain_png(self, image, method, target):
        self.explaining.set()
        self.explain_gate.wait(30)
        return self.inner.explain_png(image, method, target)


class Server:
    """uvicorn serving ``app`` on a free loopback port in a thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        for _ in range(100):
            if self.server.started:
                return self
            time.sleep(0.05)
        raise RuntimeError("uvicorn did not start")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _gated_server(digits_run, **limits):
    from recog.serve import create_app

    predictor = Gated(digits_run.path)
    app = create_app(predictor, api_key="s3cret", **limits)
    return predictor, app.app.state.batcher, Server(app)


def _until(condition, what: str, seconds: float = 20) -> None:
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.01)


def _post_full(url: str, body: bytes) -> tuple[int, Any, dict]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"X-API-Key": "s3cret"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())


def test_concurrent_requests_are_batched_and_answered_as_alone(digits_run, digit_pngs: list[bytes]) -> None:
    import recog

    predictor, batcher, server = _gated_server(digits_run, max_batch=8, max_wait_ms=50)
    with server, concurrent.futures.ThreadPoolExecutor(16) as pool:
        first = pool.submit(_post_full, server.url + "/v1/predict", digit_pngs[0])
        predictor.entered.wait(20)  # the first image is in the model; the other 15 queue behind it
        rest = [pool.submit(_post_full, server.url + "/v1/predict", png) for png in digit_pngs[1:16]]
        _until(lambda: batcher.queue.qsize() == 15, "15 requests are queued")
        predictor.gate.set()
        answers = [f.result() for f in [first, *rest]]
    assert all(status == 200 for status, _, _ in answers)
    assert predictor.sizes == [1, 8, 7]  # up to --max-batch images per model call
    timings = [headers["Server-Timing"] for _, headers, _ in answers]  # where each request's time went
    assert all("decode;dur=" in t and "queue;dur=" in t and "model;dur=" in t for t in timings)
    assert [sum(f'desc="batch of {n}"' in t for t in timings) for n in (1, 8, 7)] == [1, 8, 7]
    alone = recog.predict(digits_run.path, [_save(png) for png in digit_pngs[:16]], precision="fp32", tta=False)
    for (_, _, body), single in zip(answers, alone):
        assert [t["class"] for t in body["top"]] == [t["class"] for t in single["top"]]
        assert [t["prob"] for t in body["top"]] == pytest.approx([t["prob"] for t in single["top"]], abs=1e-5)


def test_max_batch_1_turns_batching_off(digits_run, digit_pngs: list[bytes]) -> None:
    predictor, batcher, server = _gated_server(digits_run, max_batch=1)
    predictor.gate.set()
    with server, concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda png: _post_full(server.url + "/v1/predict", png), digit_pngs[:8]))
    assert [a[0] for a in answers] == [200] * 8 and predictor.sizes == [1] * 8


def test_a_full_queue_answers_503_with_retry_after_then_serves_again(digits_run, digit_pngs: list[bytes]) -> None:
    predictor, batcher, server = _gated_server(digits_run, max_batch=1, max_queue=2)
    with server, concurrent.futures.ThreadPoolExecutor(4) as pool:
        first = pool.submit(_post_full, server.url + "/v1/predict", digit_pngs[0])
        predictor.entered.wait(20)
        queued = [pool.submit(_post_full, server.url + "/v1/predict", png) for png in digit_pngs[1:3]]
        _until(lambda: batcher.queue.qsize() == 2, "2 requests are queued")
        status, headers, body = _post_full(server.url + "/v1/predict", digit_pngs[3])
        assert status == 503 and body["kind"] == "busy" and int(headers["Retry-After"]) >= 1
        predictor.gate.set()
        assert [f.result()[0] for f in [first, *queued]] == [200, 200, 200]
        assert _post_full(server.url + "/v1/predict", digit_pngs[3])[0] == 200


def test_a_request_past_the_timeout_gets_504_and_the_next_is_served(digits_run, digit_pngs: list[bytes]) -> None:
    predictor, batcher, server = _gated_server(digits_run, max_batch=1, timeout=1)
    with server, concurrent.futures.ThreadPoolExecutor(2) as pool:
        stuck = pool.submit(_post_full, server.url + "/v1/predict", digit_pngs[0])
        predictor.entered.wait(20)
        waiting = pool.submit(_post_full, server.url + "/v1/predict", digit_pngs[1])
        for f in (stuck, waiting):
            status, _, body = f.result()
            assert status == 504 and body["kind"] == "timeout"
        predictor.gate.set()
        status, _, body = _post_full(server.url + "/v1/predict", digit_pngs[2])
        assert status == 200 and len(body["top"]) == 5
    assert predictor.sizes == [1, 1]  # the stuck batch finished; the image that timed out in the queue never ran


def _response(s: socket.socket) -> str:
    """One HTTP response (head and Content-Length body) from a socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += s.recv(65536)
    return (head + b"\r\n\r\n" + body).decode(errors="replace")


@pytest.fixture(scope="module")
def digit_pngs() -> list[bytes]:
    import io

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    out = []
    for image in load_digits().images[:16]:
        buf = io.BytesIO()
        Image.fromarray(np.round(image * 255 / 16).astype(np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def test_lying_content_length_neither_hangs_nor_reads_past_it(server: str, digit_png: bytes) -> None:
    host, port = server.removeprefix("http://").split(":")
    head = "POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-API-Key: s3cret\r\nContent-Type: image/png\r\n"
    with socket.create_connection((host, int(port)), timeout=30) as s:  # says 60 bytes, sends 2 MB
        s.sendall(f"{head}Content-Length: 60\r\n\r\n".encode() + digit_png[:60] + b"\0" * (2 * 2**20))
        reply = _response(s)
    # only the 60 bytes it declared are the body: 415 for them (h11), or 400 for what follows (httptools)
    assert reply.startswith(("HTTP/1.1 415", "HTTP/1.1 400"))
    with socket.create_connection((host, int(port)), timeout=30) as s:  # says 5000, sends 100 and hangs up
        s.sendall(f"{head}Content-Length: 5000\r\n\r\n".encode() + digit_png[:100])
        s.shutdown(socket.SHUT_WR)
        s.recv(65536)
    assert _post(server + "/v1/predict", digit_png, {"Content-Type": "image/png"})[0] == 200  # still serving


def test_explain_returns_an_overlay_png_and_refuses_what_it_cannot_do(digits_run, digit_png: bytes) -> None:
    pytest.importorskip("captum")
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from recog.export import export
    from recog.serve import Predictor, create_app

    with TestClient(create_app(Predictor(digits_run.path))) as client:
        r = client.post("/v1/explain", content=digit_png)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        picture = Image.open(io.BytesIO(r.content))
        assert picture.mode == "RGB" and min(picture.size) >= 224
        r = client.post("/v1/explain?method=gradcam&target=3", content=digit_png)
        assert r.status_code == 200
        r = client.post("/v1/explain?method=gradcan", content=digit_png)
        assert r.status_code == 400 and "gradcam" in r.json()["error"]
        r = client.post("/v1/explain?target=eleven", content=digit_png)
        assert r.status_code == 400 and "eleven" in r.json()["error"]
        assert client.post("/v1/explain", content=b"not an image").status_code == 415
        assert client.get("/v1/model").json()["explain"] is True
    with TestClient(create_app(Predictor(export(digits_run.path, verbose=False)))) as client:
        r = client.post("/v1/explain", content=digit_png)
        assert r.status_code == 501 and "torch backend" in r.json()["error"]


def test_cors_is_off_unless_origins_are_given(digits_run) -> None:
    from fastapi.testclient import TestClient

    from recog.serve import Predictor, create_app

    predictor = Predictor(digits_run.path)
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(predictor)) as client:
        assert "access-control-allow-origin" not in client.options("/v1/predict", headers=preflight).headers
    with TestClient(create_app(predictor, cors=["https://app.example"])) as client:
        r = client.options("/v1/predict", headers=preflight)
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = client.options("/v1/predict", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize("flag,value", [("--max-batch", "0"), ("--max-queue", "-1"), ("--timeout", "0"),
                                        ("--max-wait-ms", "-5"), ("--precision", "fp16")])
def test_bad_serving_flags_are_named(digits_run, flag: str, value: str, capsys: pytest.CaptureFixture) -> None:
    from recog.cli import main

    assert main(["serve", str(digits_run.path), flag, value]) == 2
    err = capsys.readouterr().err
    assert flag in err and value in err


# ---- the web page, in headless Chromium ------------------------------------------------------------------

def _chromium() -> str | None:
    return os.environ.get("RECOG_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def test_web_page_shows_the_predicted_class_of_a_real_cifar_image(cifar_png: Path, tmp_path: Path) -> None:
    pytest.importorskip("playwright.sync_api")
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("no Chromium found (apt install chromium, or set RECOG_CHROMIUM); .ci/run installs it")
    import torch

    import recog
    from recog.models import create_model
    from recog.weights import save_weights

    classes = sorted(p.name for p in (cifar_png / "train").iterdir())
    torch.manual_seed(0)
    weights = tmp_path / "seednet.safetensors"
    save_weights(weights, create_model("seednet", 10, 3, 32).eval(),
                 {"model": "seednet", "model_args": {}, "task": "classification", "classes": classes, "channels": 3,
                  "image_size": 32, "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]})
    image = sorted((cifar_png / "test" / "ship").glob("*.png"))[0]
    expected = [t["class"] for t in recog.predict(weights, [image])[0]["top"]]
    with web_page(weights, browser_path) as page:
        page.wait_for_function("document.getElementById('model').textContent.includes('seednet')")
        page.set_input_files("#file", str(image))
        page.wait_for_selector("#results li:nth-child(5)")
        shown = page.locator("#results .cls").all_text_contents()
        assert shown == expected  # the five classes, in the server's order
        assert page.locator("#preview").is_visible()
        page.wait_for_selector("#heatmap", state="visible")  # the explanation arrives after the bars
        assert page.locator("#error").text_content() == ""
        page.set_input_files("#file", str(Path(__file__)))  # not an image: the server's error is shown
        page.wait_for_function("document.getElementById('error').textContent.includes('415')")


@contextlib.contextmanager
def web_page(source: Path, browser_path: str):
    """``recog serve SOURCE`` in a subprocess on a free loopback port, and its page open in headless
    Chromium; the server is stopped afterwards."""
    from playwright.sync_api import sync_playwright

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "recog", "serve", str(source), "--port", str(port)],
                            stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}/"
        _until(lambda: _healthy(base, proc), "the server answers")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(base)
            yield page
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _healthy(base: str, proc: subprocess.Popen) -> bool:
    if proc.poll() is not None:
        pytest.fail(proc.stderr.read())
    try:
        urllib.request.urlopen(base + "healthz", timeout=1)
        return True
    except (urllib.error.URLError, ConnectionError):
        return False


def test_bf16_torch_backend_agrees_with_fp32(digits_run, digit_pngs: list[bytes]) -> None:
    """--precision bf16 (the default where the CPU or GPU has bf16 units) gives the same classes."""
    from recog.serve import Predictor

    fp32, bf16 = Predictor(digits_run.path, precision="fp32"), Predictor(digits_run.path, precision="bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    images = [fp32.read(png) for png in digit_pngs]
    a, b = fp32.run(images, 3), bf16.run(images, 3)
    assert [x["top"][0]["class"] for x in a] == [x["top"][0]["class"] for x in b]
    assert max(abs(x["top"][0]["prob"] - y["top"][0]["prob"]) for x, y in zip(a, b)) < 0.05


def test_metrics_are_prometheus_text_with_requests_latency_batches_and_queue(digits_run, digit_png: bytes) -> None:
    from fastapi.testclient import TestClient
    from prometheus_client.parser import text_string_to_metric_families

    from recog.serve import Predictor, create_app

    with TestClient(create_app(Predictor(digits_run.path), api_key="k")) as client:
        for _ in range(3):
            assert client.post("/v1/predict", content=digit_png, headers={"X-API-Key": "k"}).status_code == 200
        assert client.post("/v1/predict", content=b"not an image", headers={"X-API-Key": "k"}).status_code == 415
        assert client.get("/metrics").status_code == 401  # the key guards the metrics too
        text = client.get("/metrics", headers={"X-API-Key": "k"}).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = {(s.labels["path"], s.labels["status"]): s.value for s in families["recog_requests"].samples
                if s.name == "recog_requests_total"}
    assert requests[("/v1/predict", "200")] == 3 and requests[("/v1/predict", "415")] == 1
    assert requests[("/metrics", "401")] == 1
    latency = {s.name: s.value for s in families["recog_request_seconds"].samples
               if s.labels.get("path") == "/v1/predict" and s.name.endswith(("_count", "_sum"))}
    assert latency["recog_request_seconds_count"] == 4 and latency["recog_request_seconds_sum"] > 0
    batches = {s.name: s.value for s in families["recog_batch_size"].samples}
    assert batches["recog_batch_size_sum"] == 3 and 1 <= batches["recog_batch_size_count"] <= 3
    assert [s.value for s in families["recog_queue_depth"].samples] == [0.0]  # nothing waiting now


def test_with_an_api_key_the_model_card_and_the_api_description_need_it(digits_run) -> None:
    from fastapi.testclient import TestClient

    from recog.serve import Predictor, create_app

    with TestClient(create_app(Predictor(digits_run.path), api_key="k")) as client:
        assert client.get("/v1/model").status_code == 401
        assert client.get("/v1/model", headers={"X-API-Key": "k"}).json()["classes"][0] == "0"
        assert client.get("/docs").status_code == 404 and client.get("/openapi.json").status_code == 404
        assert client.get("/").status_code == 200 and client.get("/healthz").status_code == 200  # the page asks
    with TestClient(create_app(Predictor(digits_run.path))) as client:  # no key: everything open, as before
        assert client.get("/v1/model").status_code == 200 and client.get("/openapi.json").status_code == 200


def _stall(url: str) -> socket.socket:
    """A connection that sends its headers and 100 of the 5,000 body bytes it announces, then waits."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=30)
    s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-API-Key: s3cret\r\nContent-Type: image/png\r\n"
              b"Content-Length: 5000\r\n\r\n" + b"\x89PNG" + b"\0" * 96)
    return s


def test_stalled_bodies_hold_no_place_in_the_queue_and_get_408(digits_run, digit_pngs: list[bytes]) -> None:
    """Three clients that stop half-way through their bodies with --max-queue 3: the next request is
    served at once (was 503 for 20+ s), and each stalled one is answered 408 after the timeout."""
    predictor, batcher, server = _gated_server(digits_run, max_queue=3, timeout=2)
    predictor.gate.set()
    with server:
        stalled = [_stall(server.url) for _ in range(3)]
        time.sleep(0.3)  # their headers are in: the routes wait for the bodies
        status, _, body = _post_full(server.url + "/v1/predict", digit_pngs[0])
        assert status == 200 and len(body["top"]) == 5
        replies = [_response(s) for s in stalled]
        for s in stalled:
            s.close()
    assert all(r.startswith("HTTP/1.1 408") and '"kind": "timeout"' in r.replace('":"', '": "') for r in replies)


def test_a_multipart_body_without_a_boundary_gets_the_documented_json(digits_run, digit_pngs: list[bytes]) -> None:
    predictor, batcher, server = _gated_server(digits_run)
    predictor.gate.set()
    with server:
        req = urllib.request.Request(server.url + "/v1/predict", data=b"--x\r\n\r\n", method="POST",
                                     headers={"X-API-Key": "s3cret", "Content-Type": "multipart/form-data"})
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(req, timeout=30)
        body = json.loads(caught.value.read())
        assert caught.value.code == 400 and body["kind"] == "bad_request" and "multipart" in body["error"]
        assert set(body) == {"error", "kind"}


def test_a_chunked_body_over_the_limit_is_answered_once(digits_run, caplog) -> None:
    """No Content-Length, 2 MB in chunks against a 1 MB limit: one 413 JSON answer, and the server logs
    no second response (was "Unexpected ASGI message 'http.response.start' sent, after response
    already completed")."""
    import logging

    from recog.serve import create_app

    app = create_app(Gated(digits_run.path), max_upload_mb=1)
    with caplog.at_level(logging.ERROR), Server(app) as server:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"\0" * 65536
            try:
                for _ in range(32):
                    s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            except OSError:
                pass  # the server answered and closed before the last chunks
            reply = _response(s)
        time.sleep(0.2)
    assert reply.startswith("HTTP/1.1 413") and "too_large" in reply
    assert not [r for r in caplog.records if "ASGI" in r.getMessage() or r.exc_info], caplog.text


def test_an_explanation_that_times_out_delays_no_prediction(digits_run, digit_pngs: list[bytes]) -> None:
    """An explanation past the timeout gets 504; while it still runs (it cannot be stopped) predictions
    are answered at once and another explanation gets 503; once it ends, explanations work again."""
    predictor, batcher, server = _gated_server(digits_run, timeout=1)
    predictor.gate.set()
    with server:
        status, _, body = _post_full(server.url + "/v1/explain", digit_pngs[0])
        assert status == 504 and body["kind"] == "timeout" and predictor.explaining.is_set()
        # the explanation is still held at its gate: a prediction behind it would time out (504) too
        assert _post_full(server.url + "/v1/predict", digit_pngs[1])[0] == 200 and not predictor.explain_gate.is_set()
        status, headers, body = _post_full(server.url + "/v1/explain", digit_pngs[2])
        assert status == 503 and body["kind"] == "busy" and int(headers["Retry-After"]) >= 1
        predictor.explain_gate.set()  # the first one ends; then explanations are answered again
        req = urllib.request.Request(server.url + "/v1/explain", data=digit_pngs[2], method="POST",
                                     headers={"X-API-Key": "s3cret"})
        answered = []

        def explained() -> bool:
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    answered.append(r.read())
                    return True
            except urllib.error.HTTPError as e:
                assert e.code in (503, 504), e.code  # still the first one: busy, or slow on a loaded machine
                time.sleep(0.2)
                return False

        _until(explained, "an explanation is answered", seconds=120)
        assert answered[0].startswith(b"\x89PNG")


def _drive_batcher(cost, batches: int = 48, clients: int = 16) -> list[int]:
    """``clients`` coroutines submitting items in a loop to a Batcher whose model takes ``cost(n)``
    seconds for a batch of n (sleeps); the batch sizes it ran."""
    from recog.serve import Batcher

    sizes: list[int] = []

    def run(items):
        sizes.append(len(items))
        time.sleep(cost(len(items)))
        return items

    async def main() -> None:
        batcher = Batcher(run, max_batch=16, max_wait_ms=2, max_queue=64)

        async def client() -> None:
            while len(sizes) < batches:
                batcher.admit()
                await batcher.submit(0, 30)

        await asyncio.gather(*(client() for _ in range(clients)))
        batcher.close()

    asyncio.run(main())
    return sizes


def test_the_batcher_falls_back_to_single_items_where_batches_cost_more_per_image() -> None:
    """A backend whose batches cost 3x more per image than single images (as ONNX Runtime measured
    for a ResNet on this CPU: batching gave 0.77x): after the first measurements the batcher takes one
    item at a time (but for its periodic re-measure at the full size); where batching pays it batches."""
    import statistics

    sizes = _drive_batcher(lambda n: 0.002 * n * (3 if n > 1 else 1))
    assert statistics.median(sizes[8:]) == 1 and max(sizes) > 1
    sizes = _drive_batcher(lambda n: 0.01 + 0.0005 * n)  # batching pays: a fixed cost per call
    assert statistics.median(sizes[8:]) >= 8
