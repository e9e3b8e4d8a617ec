"""Findings of the bad-input and fault sweep (against ba22743) that end in one clear line now instead
of a traceback or a silently wrong result: serving flags, config files, broken weights in export and
ONNX prediction, lr-find rates, a malformed predictions.csv, tune's study names and storage URLs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

import recog
from recog.cli import main
from recog.errors import ConfigError, DataError


@pytest.mark.parametrize("flags, message", [
    (["--port", "99999"], "--port must be 1 to 65535, got 99999"),
    (["--port", "-5"], "--port must be 1 to 65535, got -5"),
    (["--max-upload-mb", "inf"], "--max-upload-mb must be a finite number, got inf"),
    (["--max-wait-ms", "nan"], "--max-wait-ms must be a finite number, got nan"),
])
def test_serving_flags_out_of_range_are_named(digits_run, flags: list[str], message: str, capsys) -> None:
    pytest.importorskip("fastapi")
    assert main(["serve", str(digits_run.path), *flags]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"


def test_a_binary_or_deeply_nested_config_is_one_line(tmp_path: Path, capsys) -> None:
    binary = tmp_path / "weights.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x81")
    assert main(["train", "--config", str(binary)]) == 2
    assert "is not a text file (not UTF-8)" in capsys.readouterr().err
    nested = tmp_path / "deep.yaml"
    nested.write_text("a: " + "[" * 5000 + "]" * 5000)
    assert main(["train", "--config", str(nested)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(nested) in err


def _broken_run(digits_run, tmp_path: Path) -> Path:
    """A copy of a run whose weights are NaN (bytes flipped on disk would do the same)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    run = tmp_path / "run"
    shutil.copytree(digits_run.path, run)
    path = run / "weights" / "best.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    state = load_file(str(path))
    state = {k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v) for k, v in state.items()}
    save_file(state, str(path), metadata=meta)
    return run


def test_export_refuses_a_model_with_nan_outputs_instead_of_reporting_no_difference(digits_run, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from recog.export import ExportError, export

    run = _broken_run(digits_run, tmp_path)
    with pytest.raises(ExportError, match="non-finite outputs"):
        export(run, output=tmp_path / "m.onnx", verbose=False)
    assert not (tmp_path / "m.onnx").exists()


def test_an_onnx_file_with_nan_outputs_is_refused_by_predict(digits_run, tmp_path: Path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from PIL import Image

    from recog.export import export

    good = export(digits_run.path, output=tmp_path / "good.onnx", verbose=False)
    model = onnx.load(str(good))
    for init in model.graph.initializer:  # every float weight NaN, as bytes flipped in the file
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.size > 16:
            init.CopyFrom(numpy_helper.from_array(np.full_like(array, np.nan), init.name))
    onnx.save(model, str(tmp_path / "nan.onnx"))
    image = tmp_path / "d.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    assert main(["predict", str(tmp_path / "nan.onnx"), str(image)]) == 2
    assert "non-finite outputs" in capsys.readouterr().err


def test_lr_find_refuses_infinite_rates(capsys) -> None:
    assert main(["lr-find", "--end-lr", "inf"]) == 2
    assert "must be finite numbers" in capsys.readouterr().err


def test_a_malformed_predictions_csv_names_its_file_and_line(digits_run, tmp_path: Path) -> None:
    import shutil

    pytest.importorskip("captum")
    from recog.explanations import explain_mistakes

    run = tmp_path / "run"
    shutil.copytree(digits_run.path, run)
    rows = list(csv.DictReader((run / "predictions.csv").open()))
    wrong = next(i for i, r in enumerate(rows) if r["true"] != r["predicted"])
    rows[wrong]["probability"] = "high"
    with (run / "predictions.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(DataError, match=rf"predictions.csv, line {wrong + 2}: probability 'high' is not a number"):
        explain_mistakes(run, 4)


@pytest.mark.parametrize("name", ["..", "../x", "a/b", ".hidden"])
def test_a_study_name_never_leaves_the_study_folder(tmp_path: Path, name: str) -> None:
    pytest.importorskip("optuna")
    with pytest.raises(ConfigError, match="a plain folder name"):
        recog.tune(data="digits", model="seednet", epochs=1, trials=1, study=name, project=str(tmp_path / "p"),
                   verbose=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "p" / "tune" / "x").exists()


def test_a_refused_storage_url_is_shown_without_its_password(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    pytest.importorskip("psycopg")
    url = "postgresql+psycopg://user:s3cret-pw@127.0.0.1:1/db"  # nothing listens on port 1
    with pytest.raises(ConfigError) as info:
        recog.tune(data="digits", model="seednet", epochs=1, trials=1, storage=url, project=str(tmp_path),
                   verbose=False)
    assert "s3cret-pw" not in str(info.value) and "user:***@127.0.0.1" in str(info.value)


def test_an_onnx_or_pt2_file_given_as_weights_says_what_it_is(tmp_path: Path) -> None:
    from recog.errors import WeightsError

    for name, kind in (("m.onnx", "an exported ONNX model"), ("m.pt2", "a torch.export program")):
        (tmp_path / name).write_bytes(b"PK\x03\x04 not weights")
        with pytest.raises(WeightsError, match=f"is {kind}, not weights") as info:
            recog.load(tmp_path / name)
        assert "weights_only" not in str(info.value)


def test_float_weights_stored_as_integers_are_refused(digits_run, tmp_path: Path) -> None:
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from recog.errors import WeightsError

    path = digits_run.path / "weights" / "best.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    state = {k: (v.to(torch.int8) if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
    save_file(state, str(tmp_path / "int8.safetensors"), metadata=meta)
    with pytest.raises(WeightsError, match="other shape or dtype"):
        recog.load(tmp_path / "int8.safetensors")


@pytest.mark.parametrize("change, message", [
    ({"mean": [0.5, 0.5, 0.5]}, r"mean must be 1 finite numbers \(one per channel\)"),  # digits: 1 channel
    ({"classes": ["a", "a"] + [str(i) for i in range(8)]}, "class names repeat"),
    ({"classes": [1, 2]}, "classes must be a list of names"),
    ({"image_size": 0}, "image_size must be a whole number"),
    ({"image_size": "32"}, "image_size must be a whole number"),
])
def test_broken_metadata_is_refused_on_load(digits_run, tmp_path: Path, change: dict, message: str) -> None:
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from recog.errors import WeightsError

    path = digits_run.path / "weights" / "best.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["recog"])
    meta.update(change)
    save_file(load_file(str(path)), str(tmp_path / "w.safetensors"), metadata={"recog": json.dumps(meta)})
    with pytest.raises(WeightsError, match=message):
        recog.load(tmp_path / "w.safetensors")


@pytest.mark.parametrize("meta, message", [
    ("{not json", "not valid JSON"),
    ('{"classes": [], "channels": 1, "image_size": 8}', "classes must be a list of names"),
    ('{"classes": ["a", "b"], "channels": 1, "image_size": 0}', "image_size must be a whole number"),
    ('{"classes": ["a", "b"], "channels": 1, "image_size": 1e12}', "image_size must be a whole number"),
])
def test_an_onnx_file_with_broken_metadata_is_refused_when_opened(digits_run, tmp_path: Path, meta: str,
                                                                  message: str, capsys) -> None:
    pytest.importorskip("onnxruntime")
    import onnx

    from recog.export import export

    model = onnx.load(str(export(digits_run.path, output=tmp_path / "good.onnx", verbose=False)))
    for prop in model.metadata_props:
        if prop.key == "recog":
            prop.value = meta
    onnx.save(model, str(tmp_path / "bad.onnx"))
    assert main(["predict", str(tmp_path / "bad.onnx"), str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_model_args_of_the_wrong_shape_are_one_line(capsys) -> None:
    assert main(["train", "--model", "airnet", "--model-args", "widths=[[64],[128],[256]]", "--epochs", "1"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: model 'airnet' cannot be built with model_args widths=[[64], [128], [256]]")


def test_names_with_newlines_or_escape_codes_cannot_forge_predict_output(digits_run, tmp_path: Path, capsys) -> None:
    import numpy as np
    from PIL import Image

    image = tmp_path / "x\nfake.png: 9 1.000"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image, format="PNG")
    assert main(["predict", str(digits_run.path), str(image), "--top-k", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "\\n" in out


def test_a_yaml_alias_bomb_is_refused_quickly_with_a_short_message(tmp_path: Path) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [{', '.join(['*' + prev] * 9)}]")
    lines.append("mean: *i")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines))
    with pytest.raises(ConfigError, match="expands to 926,177,115 YAML values") as info:
        recog.train(bomb)
    assert len(str(info.value)) < 300


def test_a_long_bad_value_is_cut_in_the_message() -> None:
    from recog.config import make_config

    with pytest.raises(ConfigError) as info:
        make_config(epochs="x" * 100_000)
    assert len(str(info.value)) < 300 and "100,002 characters" in str(info.value)


def test_tune_timeout_zero_names_the_flag(capsys) -> None:
    pytest.importorskip("optuna")
    assert main(["tune", "--timeout", "0"]) == 2
    assert "--timeout must be positive" in capsys.readouterr().err


def test_a_resumed_study_proposes_new_options(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    import yaml

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"weight_decay": {"float": [1e-5, 1e-2], "log": True}}))
    common = dict(data="digits", model="seednet", epochs=1, trials=2, study="s", space=str(space),
                  project=str(tmp_path), verbose=False)
    recog.tune(**common)
    recog.tune(**common)
    decays = [yaml.safe_load(p.read_text())["weight_decay"]
              for p in sorted((tmp_path / "tune" / "s" / "trials").glob("trial-*/config.yaml"))]
    assert len(decays) == 4 and decays[2:] != decays[:2]  # the rerun's first two are not the first run's again


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 400 KiB tmpfs (the disk of a run that fills up); skipped where mounting is not allowed."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()

    def mounted(*options: str) -> Path:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=400k", *options)), "tmpfs", str(mount)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()[:100]}): the full-disk test needs root")
        return mount

    yield mounted
    subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_disk_that_fills_up_while_weights_are_saved_is_one_line(small_disk, capsys) -> None:
    project = small_disk()
    assert main(["train", "--model", "airnet", "--epochs", "1", "--project", str(project)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: could not write ") and "No space left on device" in last


def test_a_read_only_project_folder_is_one_line(small_disk, capsys) -> None:
    project = small_disk("ro")
    assert main(["train", "--epochs", "1", "--project", str(project / "runs")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot create a folder in {project / 'runs'}") and "Read-only" in last


def test_a_study_on_a_full_disk_stops_after_one_trial(small_disk) -> None:
    pytest.importorskip("optuna")
    import optuna

    from recog.errors import OutputError

    project = small_disk()
    study = Path(str(project)) / "tune" / "full"
    with pytest.raises(OutputError, match="the study stopped: a trial could not write its files"):
        recog.tune(data="digits", model="airnet", epochs=1, trials=5, study="full", project=str(project),
                   storage=f"sqlite:///{Path(str(project)).parent / 'study.db'}", verbose=False)
    trials = optuna.load_study(study_name="full", storage=f"sqlite:///{Path(str(project)).parent / 'study.db'}").trials
    assert len(trials) == 1 and trials[0].state == optuna.trial.TrialState.FAIL  # not all five burned
    assert study.exists()


def test_best_yaml_of_a_budgeted_study_trains_the_epochs_not_the_budget(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    import yaml

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"weight_decay": {"float": [1e-5, 1e-2], "log": True}}))
    result = recog.tune(data="digits", model="seednet", trials=2, trial_budget="4s", space=str(space),
                        project=str(tmp_path), verbose=False, pruner="none")
    text = result.best_config.read_text()
    best = yaml.safe_load(text)
    assert "time_budget" not in best and best["epochs"] >= 1
    assert "--trial-budget 4s" in text and f"trained {best['epochs']} epochs in it" in text
    run = recog.train(result.best_config, project=str(tmp_path / "final"), verbose=False)
    assert len(run.metrics) == best["epochs"] and run.config.time_budget is None


def test_tune_project_that_names_the_tune_folder_is_used_as_it_is(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    import yaml

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"weight_decay": {"float": [1e-5, 1e-2], "log": True}}))
    result = recog.tune(data="digits", model="seednet", epochs=1, trials=1, study="s", space=str(space),
                        project=str(tmp_path / "runs" / "tune"), verbose=False)
    assert result.folder == tmp_path / "runs" / "tune" / "s" and not (tmp_path / "runs" / "tune" / "tune").exists()


def test_a_dist_timeout_too_long_for_torch_is_named() -> None:
    from recog.config import make_config

    with pytest.raises(ConfigError, match="dist_timeout must be at most 7 days, got '99999999h'"):
        make_config(dist_timeout="99999999h")


def test_a_manifest_warning_is_said_once(tmp_path: Path, capsys) -> None:
    import numpy as np
    from PIL import Image

    rows = []
    for c in "ab":
        for i in range(4):
            Image.fromarray(np.full((12, 12, 3), 40 * i, np.uint8)).save(tmp_path / f"{c}{i}.png")
            rows.append({"image": f"{c}{i}.png", "label": c})
    rows.append({"image": "missing.png", "label": "a"})
    with (tmp_path / "m.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "label"])
        writer.writeheader()
        writer.writerows(rows)
    recog.train(data=str(tmp_path / "m.csv"), model="seednet", epochs=1, project=str(tmp_path / "runs"))
    assert capsys.readouterr().err.count("were not found") == 1  # the planner's look said it too, before


def test_epochs_edited_in_config_yaml_are_refused_on_resume(tmp_path: Path, cifar_png: Path) -> None:
    """A resumed run continues its saved plan; an edited epochs was silently ignored (now named)."""
    import yaml

    def stop(row: dict) -> None:
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        recog.train(data=str(cifar_png), model="seednet", epochs=2, project=str(tmp_path), verbose=False,
                    on_epoch_end=stop)
    config = tmp_path / "train" / "config.yaml"
    saved = yaml.safe_load(config.read_text())
    config.write_text(config.read_text().replace("epochs: 2\n", "epochs: 5\n"))
    with pytest.raises(ConfigError, match="says epochs 5.*saved for 2 epochs.*--weights .*last.safetensors"):
        recog.train(resume=str(tmp_path / "train"), verbose=False)
    config.write_text(yaml.safe_dump(saved))  # put back: it resumes and finishes its 2 epochs
    assert len(recog.train(resume=str(tmp_path / "train"), verbose=False).metrics) == 2


def test_non_finite_batch_norm_statistics_are_never_saved(tmp_path: Path, cifar_png: Path) -> None:
    """Without a validation split nothing evaluated the model in eval mode: batch-norm statistics gone
    NaN (finite weights, finite training loss) were saved as best and last. Now the epoch is refused."""
    import torch

    from recog.errors import TrainingError
    from recog.weights import read_weights

    def poison(row: dict) -> None:
        if row["epoch"] == 1:
            bn = next(m for m in row["model"].modules() if isinstance(m, torch.nn.BatchNorm2d))
            bn.running_var.fill_(float("nan"))

    with pytest.raises(TrainingError, match=r"batch-norm statistics \(.*running_var\) became non-finite in epoch 2 \(peak lr"):
        recog.train(data=str(cifar_png), model="airnet", epochs=2, val_fraction=0, project=str(tmp_path),
                    verbose=False, on_epoch_end=poison)
    state, meta = read_weights(tmp_path / "train" / "weights" / "last.safetensors")
    assert meta["epoch"] == 1 and all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_a_manifest_that_repeats_images_or_shares_them_between_splits_is_warned_about(
        tmp_path: Path, cifar_png: Path, capsys) -> None:
    """Rows repeating an image, and train rows that are test images (by path, and by content under
    another name) trained with no warning."""
    import shutil

    from recog.data.manifest import scan_manifest

    train = sorted((cifar_png / "train").glob("*/*.png"))[:40]
    test = sorted((cifar_png / "test").glob("*/*.png"))[:10]
    copy = tmp_path / "renamed.png"
    shutil.copy(test[1], copy)  # a test image's bytes under another name
    rows = [f"{f},{f.parent.name},train" for f in train] + [f"{train[0]},{train[0].parent.name},train"]
    rows += [f"{test[0]},{test[0].parent.name},train", f"{copy},{test[1].parent.name},train"]
    rows += [f"{f},{f.parent.name},test" for f in test]
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,label,split\n" + "\n".join(rows) + "\n")
    scan_manifest(manifest)
    err = capsys.readouterr().err
    assert f"1 rows of the train split of {manifest} repeat an image listed before (first: {train[0]})" in err
    assert "2 images of the train split" in err and "also in its test split (1 by path, 1 by content" in err
    clean = tmp_path / "clean.csv"
    clean.write_text("image,label,split\n" + "\n".join(rows[:40] + rows[-10:]) + "\n")
    scan_manifest(clean)
    assert "repeat" not in capsys.readouterr().err


def test_a_model_too_large_for_the_memory_is_refused_with_the_numbers(tmp_path: Path, monkeypatch) -> None:
    """seednet's first fully connected layer grows with the input: at 4,000 px building it tried to
    allocate 7.6 GB and died in the allocator. Now it is counted first (meta device) and refused (the
    machine's memory is given as 8 GiB: the test must not depend on the machine it runs on)."""
    import numpy as np
    from PIL import Image

    for cls, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        (tmp_path / "photos" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((40, 40, 3), colour, dtype=np.uint8)).save(tmp_path / "photos" / cls / f"{i}.png")
    monkeypatch.setattr("recog.engine.resolve.available_memory", lambda device: 8 * 2**30)
    with pytest.raises(ConfigError, match=r"seednet at 4000 px has [\d,.]+ M parameters: [\d,.]+ GiB .* of the 8.0 GiB available; give a smaller --image-size"):
        recog.train(data=str(tmp_path / "photos"), model="seednet", image_size=4000, epochs=1,
                    project=str(tmp_path / "runs"), verbose=False)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_one_colour_images_are_named_and_a_failure_names_the_peak_rate(tmp_path: Path, capsys) -> None:
    """Images that are each one flat colour: a warning says so before training (in bf16 airnet's loss
    went NaN; the old advice then read "(lr 0) Try a lower --lr" from a schedule's last step)."""
    import numpy as np
    from PIL import Image

    for cls, colour in (("red", (220, 20, 20)), ("green", (20, 220, 20)), ("blue", (20, 20, 220))):
        (tmp_path / "flat" / cls).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(np.full((32, 32, 3), colour, dtype=np.uint8)).save(tmp_path / "flat" / cls / f"{i}.png")
    run = recog.train(data=str(tmp_path / "flat"), precision="fp32", epochs=2, project=str(tmp_path / "runs"))
    err = capsys.readouterr().err
    assert "is one flat colour: a model can learn only their colour" in err and len(run.metrics) == 2
