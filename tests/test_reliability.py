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


def _folder(root: Path, per_class: int = 3, classes: tuple[str, ...] = ("a", "b")) -> Path:
    """A small labelled image folder: ``root/<class>/<i>.png`` (8x8, a colour per class and image)."""
    from PIL import Image

    for c, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (40 * i, 120 * c, 0)).save(root / cls / f"{i}.png")
    return root


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

    root = _folder(tmp_path / "data", per_class=6)
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


def _fail_writes(monkeypatch, errno_: int, message: str) -> None:
    import safetensors.torch

    def full(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno_, message)

    monkeypatch.setattr(safetensors.torch, "save_file", full)


@pytest.mark.parametrize("errno_,message", [(28, "No space left on device"), (30, "Read-only file system")])
def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_previous_one(tmp_path: Path, monkeypatch, errno_: int,
                                                                          message: str) -> None:
    # fault injection (CI runs as root, where chmod stops nothing): the disk fills up after epoch 1
    from recog.errors import OutputError

    saved = {}

    def fill_disk(row: dict) -> None:
        if row["epoch"] == 1:
            saved["last"] = (tmp_path / "r" / "weights" / "last.safetensors").read_bytes()
            _fail_writes(monkeypatch, errno_, message)

    with pytest.raises(OutputError, match=f"could not write .*last.safetensors: {message} .the previous version is intact"):
        recog.train(**QUICK, epochs=3, project=str(tmp_path), name="r", on_epoch_end=fill_disk)
    assert (tmp_path / "r" / "weights" / "last.safetensors").read_bytes() == saved["last"]
    assert not list((tmp_path / "r").rglob("*.tmp"))  # no litter


def test_resume_removes_the_temporary_files_a_kill_left(tmp_path: Path) -> None:
    def stop(row: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        recog.train(**QUICK, epochs=2, project=str(tmp_path), name="k", on_epoch_end=stop)
    litter = tmp_path / "k" / "weights" / ".state.pt.abc123.tmp"
    litter.write_bytes(b"half a file")
    recog.train(resume=tmp_path / "k", verbose=False)
    assert not litter.exists()


def test_an_image_size_that_cannot_fit_is_refused_before_decoding(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data")
    with pytest.raises(ConfigError, match=r"image_size 20000: one batch of \d+ images takes .* GiB"):
        recog.train(data=str(root), image_size=20000, project=str(tmp_path / "runs"), verbose=False)


def test_a_corrupt_image_cache_is_replaced(tmp_path: Path, capsys) -> None:
    from recog.data import load_dataset

    root = _folder(tmp_path / "data")
    load_dataset(str(root))
    caches = list((Path(os.environ["RECOG_CACHE"]) / "images").glob("*/meta.json"))
    newest = max(caches, key=lambda p: p.stat().st_mtime)
    newest.write_text("{not json")
    capsys.readouterr()
    load_dataset(str(root))
    assert "unreadable image cache" in capsys.readouterr().err
    ds = load_dataset(str(root))  # the third run reads the repaired cache
    assert any("loaded from the cache" in n for n in ds.notes) and "unreadable" not in capsys.readouterr().err


def test_names_with_control_characters_cannot_forge_log_lines(tmp_path: Path, capsys) -> None:
    from recog.data import load_dataset

    root = _folder(tmp_path / "data")
    (root / "a" / "x\nwarning: all weights deleted.png").write_bytes(b"broken")
    load_dataset(str(root), cache=False)
    err = capsys.readouterr().err
    assert "\\nwarning: all weights deleted" in err
    assert not any(line.startswith("warning: all weights deleted") for line in err.splitlines())


def test_a_decompression_bomb_is_reported_once_in_recogs_words(tmp_path: Path, capsys) -> None:
    from PIL import Image

    from recog.data import load_dataset

    root = _folder(tmp_path / "data")
    Image.new("L", (300, 300)).save(root / "a" / "big.png")
    ds = load_dataset(str(root), cache=False, max_image_pixels=50_000)
    err = capsys.readouterr().err
    assert len(ds.skipped) == 1 and "decompression bomb" in err and "DecompressionBombWarning" not in err


def test_a_run_on_a_relative_folder_evaluates_from_anywhere_and_a_flat_folder_is_evaluated(
        tmp_path: Path, monkeypatch) -> None:
    work = tmp_path / "work"
    _folder(work / "data", per_class=6)
    monkeypatch.chdir(work)
    run = recog.train(data="data", model="airnet_small", epochs=1, project=str(tmp_path / "runs"), verbose=False)
    assert Path(run.config.data).is_absolute()
    monkeypatch.chdir(tmp_path)
    assert recog.evaluate(run.path, out=tmp_path / "e1", verbose=False)["split"] == "val"
    import shutil

    shutil.copytree(work / "data", tmp_path / "other")  # another labelled folder, flat (no train/ or test/)
    flat = recog.evaluate(run.path, data=str(tmp_path / "other"), out=tmp_path / "e2", verbose=False)
    assert flat["split"] == "all" and flat["num_images"] == 12  # before: "has no test or val split"
    shutil.copytree(work / "data", tmp_path / "only-test" / "test")  # FOLDER/test/<class>/*, no train/
    only = recog.evaluate(run.path, data=str(tmp_path / "only-test"), out=tmp_path / "e3", verbose=False)
    assert only["num_images"] == 12  # before: "has test/ but no train/ folder"


def test_a_folder_named_like_a_builtin_dataset_is_reachable_and_the_error_says_how(tmp_path: Path, monkeypatch,
                                                                                   capsys) -> None:
    _folder(tmp_path / "cifar10")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECOG_OFFLINE", "1")
    assert main(["train", "--data", "cifar10", "--project", str(tmp_path / "runs")]) == 2
    assert "say --data ./cifar10" in capsys.readouterr().err
    ds = recog.data.load_dataset("./cifar10", val_fraction=0.0, cache=False)
    assert ds.classes == ["a", "b"]


def test_resume_restores_best_weights_a_kill_kept_from_being_saved(tmp_path: Path, capsys) -> None:
    # before: killed after state.pt named epoch 2 as best but before best.safetensors of epoch 2 was
    # written, the resumed run reported "best epoch 2" and scored epoch-1 weights; now epoch 2's
    # weights come from last.safetensors (written before the state)
    import shutil

    import torch

    from recog.weights import read_meta

    kept = tmp_path / "best-epoch-1.safetensors"

    def stop(row: dict) -> None:
        if row["epoch"] == 1:
            shutil.copy(tmp_path / "r" / "weights" / "best.safetensors", kept)
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        recog.train(**QUICK, epochs=4, lr=0.1, schedule="constant", project=str(tmp_path), name="r", on_epoch_end=stop)
    state = torch.load(tmp_path / "r" / "weights" / "state.pt", weights_only=True)
    assert state["loop"]["best_epoch"] == 2  # epoch 2 improved (lr 0.1 on digits)
    shutil.copy(kept, tmp_path / "r" / "weights" / "best.safetensors")  # as if killed before its write
    capsys.readouterr()
    recog.train(resume=tmp_path / "r", verbose=False)
    err = capsys.readouterr().err
    assert "killed before epoch 2's best weights were saved: restored them" in err
    state = torch.load(tmp_path / "r" / "weights" / "state.pt", weights_only=True)
    held = read_meta(tmp_path / "r" / "weights" / "best.safetensors")["epoch"]
    assert state["loop"]["best_epoch"] == held  # the state and the file agree again


def test_a_run_killed_before_its_first_state_was_saved_starts_again(tmp_path: Path, capsys) -> None:
    def stop(row: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        recog.train(**QUICK, epochs=2, project=str(tmp_path), name="r", on_epoch_end=stop)
    (tmp_path / "r" / "weights" / "state.pt").unlink()  # as if killed while writing it
    run = recog.train(resume=tmp_path / "r", verbose=False)
    assert run.path == tmp_path / "r" and [m["epoch"] for m in run.metrics] == [1, 2]
    assert "no saved training state yet" in capsys.readouterr().err


def test_killed_at_any_checkpoint_write_a_run_resumes_with_the_best_epoch_in_best(tmp_path: Path) -> None:
    # database-style fault testing: a short run (3 epochs, 46 write points: each temporary file
    # written, each rename) is killed with SIGKILL at each point in turn; every one resumes, ends
    # with all epochs, best.safetensors holding the best epoch, and no temporary file left.
    import csv
    import subprocess
    import sys

    from recog.weights import read_meta

    if not hasattr(os, "fork"):
        pytest.skip("needs fork")
    helper = Path(__file__).parent / "helpers" / "crash_runs.py"
    first, last = 2, 37  # 1: before config.yaml exists there is no run to resume (the user starts it again)
    out = subprocess.run([sys.executable, str(helper), str(tmp_path), str(first), str(last)], capture_output=True,
                         text=True, timeout=600)
    outcome = dict(line.split() for line in out.stdout.splitlines())
    assert out.returncode == 0 and len(outcome) == last - first + 1, out.stderr[-2000:]
    killed = [k for k, state in outcome.items() if state == "killed"]
    assert len(killed) >= 30 and "failed" not in outcome.values()
    for k in killed:
        run_dir = tmp_path / f"k{k}"
        recog.train(resume=run_dir, verbose=False)
        rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
        assert [int(r["epoch"]) for r in rows] == [1, 2, 3], k
        scores = [float(r["val_acc"]) for r in rows]
        assert read_meta(run_dir / "weights" / "best.safetensors")["epoch"] == scores.index(max(scores)) + 1, k
        assert not list(run_dir.rglob("*.tmp")), k
        assert (run_dir / "report.json").is_file(), k
