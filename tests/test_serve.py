"""``recog serve`` against a real uvicorn process on a loopback port: predictions from a run and
from an exported ONNX file, the model card, and every refusal as a JSON error."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

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
    with urllib.request.urlopen(server + "/v1/model") as r:
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
    status, body = _post(server + "/v1/predict", b"\0" * (2 * 2**20))
    assert status == 413 and body["kind"] == "too_large"
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
    assert proc.stderr.strip() == "error: recog serve needs FastAPI and uvicorn: pip install 'recog[serve]'"
