"""Bad input and faults found by trying recog as a new user would (issue 10): each gets one clear
error line or the right behaviour, and nothing of the user's is lost."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import recog
from recog.cli import main
from recog.errors import ConfigError, DataError

QUICK = {"data": "digits", "model": "airnet_small", "verbose": False}


def test_project_or_out_that_is_a_file_is_refused_before_any_work(tmp_path: Path, capsys, digits_run) -> None:
    file = tmp_path / "runs"
    file.write_text("my notes")
    assert main(["train", "--project", str(file)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert file.read_text() == "my notes"
    assert main(["eval", str(digits_run.path), "--out", str(file / "eval")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_mean_and_std_need_one_value_per_channel(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the images have 1, got mean"):
        recog.train(**QUICK, epochs=1, mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2], project=str(tmp_path))
    assert not (tmp_path / "train").exists()


def test_empty_data_is_an_error_not_the_current_folder(capsys) -> None:
    with pytest.raises(DataError, match="--data is empty"):
        recog.data.load_dataset("")
    assert main(["train", "--data", ""]) == 2


def test_predict_on_a_folder_without_images_says_so(digits_run, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    assert main(["predict", str(digits_run.path), str(tmp_path / "empty")]) == 1
    assert "no images found" in capsys.readouterr().err


def test_an_empty_class_is_named_not_reported_as_infinitely_imbalanced(tmp_path: Path, capsys) -> None:
    from PIL import Image

    root = tmp_path / "data"
    for cls, n in (("a", 6), ("b", 6)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (30 * i, 0, 0)).save(root / cls / f"{i}.png")
    (root / "c").mkdir()
    recog.train(data=str(root), model="airnet_small", epochs=1, allow_empty_classes=True, val_fraction=0.0,
                project=str(tmp_path / "runs"))
    err = capsys.readouterr().err
    assert "class 'c' has no training images" in err and "infx" not in err


def test_run_files_follow_the_umask_instead_of_0600(tmp_path: Path) -> None:
    from recog.fileio import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        run = recog.train(**QUICK, epochs=1, project=str(tmp_path / "runs"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    for name in ("config.yaml", "metrics.csv", "report.json", "weights/best.safetensors"):
        assert stat.S_IMODE((run.path / name).stat().st_mode) == 0o644, name


def test_a_run_can_be_resumed_on_another_device(tmp_path: Path) -> None:
    def stop(row: dict) -> None:
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        recog.train(**QUICK, epochs=2, project=str(tmp_path), name="r", on_epoch_end=stop)
    run = recog.train(resume=tmp_path / "r", device="cpu", verbose=False)  # e.g. trained on a GPU machine
    assert len(run.metrics) == 2
    with pytest.raises(ConfigError, match="cannot change epochs when resuming.*only --device"):
        recog.train(resume=tmp_path / "r", epochs=5)


def test_a_refused_pickle_never_suggests_unpickling(tmp_path: Path) -> None:
    import pickle

    class Payload:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, ("true",))

    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"w": Payload()}))
    with pytest.raises(recog.api.WeightsError) as info:
        recog.load(path)
    assert "refusing to load" in str(info.value) and "weights_only=False" not in str(info.value)
