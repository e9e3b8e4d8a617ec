"""One inference policy: the same image gets the same answer from ``recog.predict``, ``recog eval``'s
predictions.csv, ``recog serve`` over HTTP and the exported ONNX file, on real CIFAR-10 images.

Before the policy was one function, predict ran fp32 without TTA, eval the run's precision with the
run's TTA and serve bf16 where the CPU had it: on a 500-image split they disagreed on the top-1 class
of 43 images."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import recog

BF16_TOLERANCE = 0.05  # bf16 keeps 8 bits of mantissa: probabilities move by up to a few hundredths


@pytest.fixture(scope="module")
def cifar_run(cifar_png: Path, tmp_path_factory: pytest.TempPathFactory):
    """The small recipe (flip + translate, TTA on) on the 300 training PNGs, a few epochs."""
    return recog.train(data=str(cifar_png), epochs=4, seed=0, project=str(tmp_path_factory.mktemp("same")),
                       verbose=False)


def _files(cifar_png: Path) -> list[Path]:
    return sorted((cifar_png / "test").glob("*/*.png"))


def _top1(results: list[dict]) -> dict[str, tuple[str, float]]:
    return {str(r["path"]): (r["top"][0]["class"], r["top"][0]["prob"]) for r in results}


def _from_csv(path: Path) -> dict[str, tuple[str, float]]:
    with path.open() as f:
        return {row["image"]: (row["predicted"], float(row["probability"])) for row in csv.DictReader(f)}


def _close(a: dict[str, tuple[str, float]], b: dict[str, tuple[str, float]], tol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key][0] == b[key][0], key
        assert abs(a[key][1] - b[key][1]) <= tol, (key, a[key], b[key])


def _serve(source: Path, *flags: str):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "recog", "serve", str(source), "--port", str(port), *flags],
                            stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1)
            return proc, base
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None:
                pytest.fail(proc.stderr.read())
            time.sleep(0.5)
    proc.kill()
    pytest.fail("recog serve did not start")


def _served(source: Path, files: list[Path], *flags: str) -> dict[str, tuple[str, float]]:
    """Each file's top-1 answer from ``recog serve SOURCE FLAGS`` over HTTP (a real server process)."""
    proc, base = _serve(source, *flags)
    answers = {}
    try:
        for f in files:
            req = urllib.request.Request(base + "/v1/predict?top_k=1", data=f.read_bytes(), method="POST")
            with urllib.request.urlopen(req, timeout=60) as r:
                top = json.loads(r.read())["top"][0]
            answers[str(f)] = (top["class"], top["prob"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return answers


def test_predict_eval_serve_and_onnx_give_the_same_fp32_probabilities(cifar_run, cifar_png: Path,
                                                                        tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("fastapi")
    from recog.cli import main
    from recog.export import export
    from recog.onnx_predict import predict as onnx_predict

    files = _files(cifar_png)
    predicted = _top1(recog.predict(cifar_run.path, files, precision="fp32", tta=False))
    assert main(["eval", str(cifar_run.path), "--precision", "fp32", "--no-tta", "--out", str(tmp_path / "e")]) == 0
    evaluated = _from_csv(tmp_path / "e" / "predictions.csv")
    _close(predicted, evaluated, 1e-5)
    onnx = export(cifar_run.path, output=tmp_path / "m.onnx", verbose=False)
    _close(predicted, _top1(onnx_predict(onnx, files)), 1e-5)
    _close(predicted, _top1(recog.predict(onnx, files)), 1e-5)  # recog.predict takes the .onnx file too
    served = _served(cifar_run.path, files[::4], "--precision", "fp32", "--no-tta")
    _close({k: predicted[k] for k in served}, served, 1e-5)


def test_the_defaults_are_one_policy_for_predict_eval_and_serve(cifar_run, cifar_png: Path, tmp_path: Path) -> None:
    """With no flags, every command answers as the run's own final evaluation did (its precision
    and its TTA views); bf16 where the CPU has it gives the fp32 answer's top-1 class."""
    pytest.importorskip("fastapi")
    files = _files(cifar_png)
    meta = recog.load(cifar_run.path).meta
    assert meta["tta"] is True and meta["precision"] == cifar_run.config.precision  # the small recipe's TTA
    default = _top1(recog.predict(cifar_run.path, files))
    _close(default, _from_csv(cifar_run.path / "predictions.csv"), 1e-5)  # the training's own report
    report = recog.evaluate(cifar_run.path, out=tmp_path / "e", verbose=False)
    assert report["tta"] is True and report["precision"] == meta["precision"]
    _close(default, _from_csv(tmp_path / "e" / "predictions.csv"), 1e-5)
    served = _served(cifar_run.path, files[::4])
    _close({k: default[k] for k in served}, served, 1e-5)
    bf16 = recog.predict(cifar_run.path, files, precision="bf16", tta=False, top_k=10)
    fp32 = recog.predict(cifar_run.path, files, precision="fp32", tta=False, top_k=10)
    same = 0
    for a, b in zip(fp32, bf16):
        pa, pb = ({t["class"]: t["prob"] for t in r["top"]} for r in (a, b))
        assert max(abs(pa[c] - pb[c]) for c in pa) <= BF16_TOLERANCE, a["path"]
        # the top-1 class is the same, unless fp32's first two were closer than the tolerance (a near-tie)
        first, second = a["top"][0]["prob"], a["top"][1]["prob"]
        assert a["top"][0]["class"] == b["top"][0]["class"] or first - second <= 2 * BF16_TOLERANCE, a["path"]
        same += a["top"][0]["class"] == b["top"][0]["class"]
    assert same >= 0.95 * len(fp32)


def test_tta_on_and_off_are_different_answers_and_onnx_refuses_what_it_cannot_do(cifar_run, cifar_png: Path,
                                                                                  tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from recog.errors import ConfigError
    from recog.export import export

    files = _files(cifar_png)
    on = recog.predict(cifar_run.path, files, precision="fp32", tta=True)
    off = recog.predict(cifar_run.path, files, precision="fp32", tta=False)
    assert [r["top"][0]["prob"] for r in on] != [r["top"][0]["prob"] for r in off]
    onnx = export(cifar_run.path, output=tmp_path / "m.onnx", verbose=False)
    with pytest.raises(ConfigError, match="one view"):
        recog.predict(onnx, files, tta=True)
    with pytest.raises(ConfigError, match="precision"):
        recog.predict(cifar_run.path, files, precision="fp16")


def test_selective_tta_gives_the_other_views_only_to_unsure_images() -> None:
    import torch
    from torch import nn

    from recog.inference import tta_forward, tta_views
    from recog.tasks import Classification

    torch.manual_seed(0)
    calls: list[int] = []
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    net.register_forward_pre_hook(lambda _, args: calls.append(len(args[0])))
    task, views = Classification(), tta_views(True, 2)  # 6 views: plain, mirrored, 4 shifted
    x = torch.randn(16, 3, 12, 12) * 3
    with torch.no_grad():
        plain = net(x).softmax(1)
        full = tta_forward(net, task, views, (x, None))
        confidence = plain.max(1).values
        threshold = confidence.median().item()
        calls.clear()
        selective = tta_forward(net, task, views, (x, None), confidence=threshold)
    sure = confidence >= threshold
    unsure = int((~sure).sum())
    assert 0 < unsure < 16 and calls == [16] + [unsure] * 5  # one plain pass, the other views for the unsure only
    assert torch.allclose(selective[sure], plain[sure].log(), atol=1e-6)
    assert torch.allclose(selective[~sure], full[~sure], atol=1e-6)
    assert torch.allclose(tta_forward(net, task, views, (x, None), confidence=1.01), full, atol=1e-6)  # all unsure


def test_selective_tta_is_one_policy_for_the_report_predict_and_eval(cifar_png: Path, tmp_path: Path) -> None:
    run = recog.train(data=str(cifar_png), epochs=2, seed=0, tta_confidence=0.5, project=str(tmp_path),
                      verbose=False)
    clf = recog.load(run.path)
    assert clf.meta["tta_confidence"] == 0.5 and clf.policy.confidence == 0.5
    assert "below 50% confidence" in clf.policy.describe()
    files = _files(cifar_png)
    predicted = _top1(recog.predict(run.path, files))
    _close(predicted, _from_csv(run.path / "predictions.csv"), 1e-5)  # the training's own report
    recog.evaluate(run.path, out=tmp_path / "e", verbose=False)
    _close(predicted, _from_csv(tmp_path / "e" / "predictions.csv"), 1e-5)
    from recog.config import make_config
    from recog.errors import ConfigError

    with pytest.raises(ConfigError, match="tta_confidence"):
        make_config(tta_confidence=1.5)
