"""Prediction from a run folder or weights file, with the preprocessing the weights carry."""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

import recog
from recog.cli import main


@pytest.fixture(scope="module")
def digit_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Digits test images saved as real image files: upscaled greyscale PNG and RGB JPEG."""
    folder = tmp_path_factory.mktemp("digit_files")
    digits = load_digits()
    files = []
    for i in range(5):
        arr = np.round(digits.images[i] * 255 / 16).astype(np.uint8)
        png = folder / f"{i}_{digits.target[i]}.png"
        Image.fromarray(arr).resize((8, 8)).save(png)
        files.append(png)
    Image.fromarray(np.round(digits.images[0] * 255 / 16).astype(np.uint8)).convert("RGB").save(folder / "rgb.jpg")
    (folder / "notes.txt").write_text("not an image")
    return files


def test_predict_json_gives_top_k_per_image(digits_run, digit_files: list[Path], capsys) -> None:
    assert main(["predict", str(digits_run.path), *map(str, digit_files), "--json", "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5
    correct = 0
    for line, path in zip(lines, digit_files):
        obj = json.loads(line)
        assert obj["path"] == str(path)
        assert len(obj["top"]) == 3
        probs = [t["prob"] for t in obj["top"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
        correct += obj["top"][0]["class"] == path.stem.split("_")[1]
    assert correct >= 4


def test_predict_a_folder_with_csv_and_plain_output(digits_run, digit_files: list[Path], capsys) -> None:
    folder = digit_files[0].parent
    assert main(["predict", str(digits_run.best_weights), str(folder), "--csv", "--top-k", "2"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 12  # 6 images (txt ignored) x 2
    assert {r["rank"] for r in rows} == {"1", "2"}
    assert main(["predict", str(digits_run.path), str(digit_files[0])]) == 0
    assert capsys.readouterr().out.startswith(f"{digit_files[0]}: ")


def test_predict_reports_unreadable_files_and_goes_on(digits_run, digit_files: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(digit_files[0].read_bytes()[:30])
    results = recog.predict(digits_run.path, [bad, digit_files[1]])
    assert "error" in results[0] and results[0]["path"] == str(bad)
    assert results[1]["top"][0]["class"] == digit_files[1].stem.split("_")[1]
    with pytest.raises(recog.api.DataError, match="no such file"):
        recog.predict(digits_run.path, tmp_path / "missing.png")


def test_load_gives_a_classifier_with_its_preprocessing(digits_run) -> None:
    clf = recog.load(digits_run.path)
    assert clf.classes == [str(i) for i in range(10)]
    assert (clf.meta["channels"], clf.meta["image_size"]) == (1, 8)
    with pytest.raises(recog.api.WeightsError, match="not a run folder"):
        recog.load(digits_run.path.parent)


def test_a_run_trained_channels_last_is_loaded_channels_last(tmp_path: Path) -> None:
    import torch

    run = recog.train(data="digits", model="airnet_small", epochs=1, channels_last=True, project=str(tmp_path),
                      verbose=False)
    conv = [m for m in recog.load(run.path).model.modules() if isinstance(m, torch.nn.Conv2d)][-1]  # in > 1
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    plain = recog.train(data="digits", model="airnet_small", epochs=1, channels_last=False, project=str(tmp_path),
                        verbose=False)
    conv = [m for m in recog.load(plain.path).model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    assert not conv.weight.is_contiguous(memory_format=torch.channels_last)
