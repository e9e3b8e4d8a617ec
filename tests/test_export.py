"""Export: ONNX (and torch.export) files that take uint8 images, carry their preprocessing and
classes, agree with the model, and predict without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recog.cli import main
from recog.errors import ConfigError, WeightsError
from recog.inference import load
from recog.models import create_model
from recog.weights import save_weights

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from recog.export import ExportError, export  # noqa: E402
from recog.onnx_predict import OnnxClassifier  # noqa: E402

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _weights(tmp_path: Path, name: str, **model_args) -> Path:
    """A recog weights file for ``name`` at 32 px (fresh weights: export must reproduce any weights)."""
    torch.manual_seed(0)
    model = create_model(name, 10, 3, 32, **model_args).eval()
    path = tmp_path / f"{name}.safetensors"
    save_weights(path, model, {"model": name, "model_args": model_args, "task": "classification", "classes": CLASSES,
                               "channels": 3, "image_size": 32, "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]})
    return path


@pytest.fixture(scope="module")
def cifar_images(cifar_png: Path, tmp_path_factory: pytest.TempPathFactory) -> torch.Tensor:
    """17 real CIFAR-10 test images, decoded as a 32-px RGB model reads them."""
    clf = load(_weights(tmp_path_factory.mktemp("reader"), "seednet"), "cpu")
    return torch.stack([clf.read(f) for f in sorted((cifar_png / "test").glob("*/*.png"))[::6][:17]])


@pytest.mark.parametrize("name,model_args", [
    ("seednet", {}),
    ("airnet", {"stem": "whiten", "bn_momentum": 0.4, "learn_scale": False, "dirac": True}),  # the fast recipe's
    ("resnet18", {}),
])
def test_onnx_round_trip_matches_pytorch_on_real_images(name: str, model_args: dict, cifar_images: torch.Tensor,
                                                        tmp_path: Path) -> None:
    weights = _weights(tmp_path, name, **model_args)
    path = export(weights, output=tmp_path / f"{name}.onnx", images=cifar_images, verbose=False)
    onnx_clf = OnnxClassifier(path)
    assert onnx_clf.classes == CLASSES and onnx_clf.meta["image_size"] == 32 and onnx_clf.meta["model"] == name
    clf = load(weights, "cpu")
    for batch in (1, 17):
        x = cifar_images[:batch]
        with torch.no_grad():
            expected = torch.softmax(clf(x).float(), 1).numpy()
        got = onnx_clf.probabilities(x.numpy())
        assert got.shape == (batch, 10)
        assert np.abs(got - expected).max() <= 1e-4


def test_export_cli_of_a_channels_last_run_and_torch_free_predict_agree(digits_run, tmp_path: Path, capsys) -> None:
    from sklearn.datasets import load_digits
    from PIL import Image

    assert digits_run.config.channels_last
    assert main(["export", str(digits_run.path)]) == 0
    path = digits_run.path / "weights" / "model.onnx"
    assert capsys.readouterr().out.strip() == str(path) and path.is_file()
    files = []
    for i in range(6):
        f = tmp_path / f"digit{i}.png"
        Image.fromarray(np.round(load_digits().images[i] * 255 / 16).astype(np.uint8)).save(f)
        files.append(str(f))
    assert main(["predict", str(digits_run.path), *files, "--json", "--top-k", "3", "--precision", "fp32",
                 "--no-tta"]) == 0
    from_run = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    code = ("import sys; sys.modules['torch'] = None; from recog.cli import main; "  # importing torch fails
            f"sys.exit(main(['predict', {str(path)!r}, *{files!r}, '--json', '--top-k', '3']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    from_onnx = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [[t["class"] for t in r["top"]] for r in from_onnx] == [[t["class"] for t in r["top"]] for r in from_run]
    for a, b in zip(from_onnx, from_run):
        assert np.allclose([t["prob"] for t in a["top"]], [t["prob"] for t in b["top"]], atol=1e-4)


def test_pt2_export_round_trip(tmp_path: Path, cifar_images: torch.Tensor) -> None:
    weights = _weights(tmp_path, "seednet")
    path = export(weights, format="pt2", output=tmp_path / "m.pt2", images=cifar_images, verbose=False)
    program = torch.export.load(str(path))
    with torch.no_grad():
        got = program.module()(cifar_images[:5].permute(0, 2, 3, 1).contiguous())
        expected = torch.softmax(load(weights, "cpu")(cifar_images[:5]).float(), 1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_an_export_that_disagrees_writes_nothing(tmp_path: Path, cifar_images: torch.Tensor, monkeypatch) -> None:
    import recog.export as ex

    monkeypatch.setattr(ex, "TOLERANCE", -1.0)  # no graph can agree that well: the check must refuse it
    with pytest.raises(ExportError, match="disagrees with the model"):
        export(_weights(tmp_path, "seednet"), output=tmp_path / "m.onnx", images=cifar_images, verbose=False)
    assert not (tmp_path / "m.onnx").exists() and not list(tmp_path.glob(".*tmp"))


def test_export_and_onnx_predict_bad_input(tmp_path: Path, capsys) -> None:
    weights = _weights(tmp_path, "seednet")
    assert main(["export", str(weights), "--format", "onx"]) == 2
    assert "did you mean 'onnx'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="is a folder"):
        export(weights, output=tmp_path)
    not_onnx = tmp_path / "fake.onnx"
    not_onnx.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="is not a model recog exported: not overwriting it"):
        export(weights, output=not_onnx)
    assert not_onnx.read_bytes() == b"not a model"  # the user's file is untouched
    with pytest.raises(WeightsError, match="not a readable ONNX model"):
        OnnxClassifier(not_onnx)
    with pytest.raises(WeightsError, match="no ONNX file"):
        OnnxClassifier(tmp_path / "missing.onnx")


def test_int8_export_of_a_run_reports_both_accuracies_and_predicts(digits_run, capsys) -> None:
    path = export(digits_run.path, int8=True)
    err = capsys.readouterr().err
    assert path.name == "model.int8.onnx" and path.is_file()
    assert "test accuracy fp32 0." in err and ", int8 0." in err and "images/s" in err
    int8, fp32 = OnnxClassifier(path), OnnxClassifier(path.with_name("model.onnx"))
    assert int8.classes == fp32.classes and int8.meta == {**fp32.meta, "precision": "int8"}
    from recog.data import load_dataset

    test = load_dataset("digits", None, 0.0, 0, 8, 1, device="cpu").test
    agree = (int8.probabilities(test.images.numpy()).argmax(1) == fp32.probabilities(test.images.numpy()).argmax(1))
    assert agree.mean() > 0.95
    from recog.serve import Predictor

    assert Predictor(path).policy == "int8, no TTA (the exported graph)"  # what serve's model card says


def test_int8_that_loses_accuracy_is_refused_with_the_numbers(digits_run, monkeypatch, tmp_path: Path) -> None:
    import recog.export as ex

    monkeypatch.setattr(ex, "MAX_INT8_LOSS", -1.0)  # any int8 model "loses" more than that
    with pytest.raises(ExportError, match=r"int8 loses more than .*accuracy fp32 0\.\d+, int8 0\.\d+"):
        export(digits_run.path, output=tmp_path / "m.onnx", int8=True, verbose=False)
    assert (tmp_path / "m.onnx").is_file() and not (tmp_path / "m.int8.onnx").exists()
    with pytest.raises(ConfigError, match="--int8 is an ONNX Runtime quantisation"):
        export(digits_run.path, format="pt2", int8=True)


def test_multilabel_export_returns_the_labels_over_their_thresholds(multilabel_run, cifar_png: Path,
                                                                     tmp_path: Path) -> None:
    import recog

    path = export(multilabel_run.path, output=tmp_path / "ml.onnx", verbose=False)
    files = sorted((cifar_png / "test").glob("*/*.png"))[::10]
    from recog.onnx_predict import predict as onnx_predict

    from_onnx, from_run = onnx_predict(path, files), recog.predict(multilabel_run.path, files, precision="fp32", tta=False)
    assert OnnxClassifier(path).meta["thresholds"] == pytest.approx(load(multilabel_run.path, "cpu").meta["thresholds"])
    assert [[e["class"] for e in r["labels"]] for r in from_onnx] == [[e["class"] for e in r["labels"]] for r in from_run]


def test_an_earlier_export_is_replaced_and_onnxruntime_missing_is_one_line(tmp_path: Path, cifar_images) -> None:
    weights = _weights(tmp_path, "seednet")
    path = export(weights, output=tmp_path / "m.onnx", images=cifar_images, verbose=False)
    assert export(weights, output=path, images=cifar_images, verbose=False) == path  # ours: replaced
    code = ("import sys; sys.modules['onnxruntime'] = None; from recog.cli import main; "
            f"sys.exit(main(['predict', {str(path)!r}, {str(tmp_path)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: ONNX models need onnxruntime: pip install 'recog[export]' (from a clone: pip install -e \".[export]\")"



def test_int8_of_a_bare_weights_file_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    weights = _weights(tmp_path, "seednet")
    with pytest.raises(ConfigError, match="--int8 needs the run's data.*nothing was written"):
        export(weights, int8=True, verbose=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seednet.safetensors"]


def test_an_environment_without_torch_predicts_from_the_onnx_file(digits_run, tmp_path: Path) -> None:
    """The README's torch-free runtime: a fresh virtual environment (no system packages) that holds only
    onnxruntime, numpy and Pillow besides recog answers as the run does. (The packages are linked from
    this environment rather than downloaded: tests never reach the network.)"""
    import venv

    from recog.export import export

    onnx = export(digits_run.path, output=tmp_path / "digits.onnx", verbose=False)
    env = tmp_path / "rt"
    venv.create(env, with_pip=False, system_site_packages=False)
    only = tmp_path / "only"
    only.mkdir()
    here = Path(np.__file__).parent.parent
    for name in ("onnxruntime", "numpy", "numpy.libs", "PIL", "pillow.libs"):
        if (here / name).exists():
            (only / name).symlink_to(here / name)
    python = env / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    src = Path(__import__("recog").__file__).parent.parent
    Path(purelib, "runtime.pth").write_text(f"{only}\n{src}\n")
    assert subprocess.run([str(python), "-c", "import torch"], capture_output=True).returncode != 0  # truly without
    from sklearn.datasets import load_digits
    from PIL import Image

    files = []
    for i in range(4):
        f = tmp_path / f"digit{i}.png"
        Image.fromarray(np.round(load_digits().images[i] * 255 / 16).astype(np.uint8)).save(f)
        files.append(str(f))
    proc = subprocess.run([str(python), "-m", "recog", "predict", str(onnx), *files, "--json"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    import recog

    expected = recog.predict(digits_run.path, files, precision="fp32", tta=False)
    assert [a["top"][0]["class"] for a in answers] == [e["top"][0]["class"] for e in expected]
