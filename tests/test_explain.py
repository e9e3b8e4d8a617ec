"""Explanations: figures from the CLI and the API, Grad-CAM's layer, fp32 attributions, the errors,
and the two checks that the maps mean something (model randomisation, deletion vs random)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import recog
from recog.cli import main
from recog.errors import ConfigError
from recog.explanations import attribute
from recog.faithfulness import auc, deletion_insertion, rank_correlation
from recog.inference import Classifier, load
from recog.models import create_model

pytest.importorskip("captum")


@pytest.fixture(scope="module")
def cifar_run(cifar_png: Path, tmp_path_factory: pytest.TempPathFactory):
    """airnet_small trained on 300 real CIFAR-10 images (the test split: 100 more)."""
    return recog.train(data=str(cifar_png), model="airnet_small", epochs=12, seed=0,
                       project=str(tmp_path_factory.mktemp("explain_runs")), verbose=False)


@pytest.fixture(scope="module")
def test_images(cifar_run, cifar_png: Path) -> tuple[Classifier, torch.Tensor, list[Path]]:
    clf = load(cifar_run.path, "cpu")
    files = sorted((cifar_png / "test").glob("*/*.png"))
    return clf, torch.stack([clf.read(f) for f in files]), files


def _randomised(clf: Classifier, seed: int = 1) -> Classifier:
    """The same architecture and preprocessing with freshly initialised weights."""
    torch.manual_seed(seed)
    meta = clf.meta
    model = create_model(meta["model"], len(meta["classes"]), meta["channels"], meta["image_size"],
                         **meta.get("model_args", {})).eval()
    return Classifier(model, meta, clf.device)


# ---- CLI and API ---------------------------------------------------------------------------------

def test_explain_cli_writes_one_titled_figure_per_image(cifar_run, cifar_png: Path, tmp_path: Path, capsys) -> None:
    files = sorted((cifar_png / "test" / "cat").glob("*.png"))[:3]
    out = tmp_path / "figs"
    assert main(["explain", str(cifar_run.path), *map(str, files), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == sorted(f"{f.stem}-ig.png" for f in files)  # the default method
    assert len(printed) == 3 and all("predicted: " in line and line.endswith("-ig.png") for line in printed)
    with Image.open(pngs[0]) as im:  # image, heatmap and overlay side by side
        assert im.width > 2 * im.height


def test_explain_api_returns_maps_at_input_resolution_for_every_method(test_images) -> None:
    clf, images, _ = test_images
    for method in ("gradcam", "ig", "saliency", "occlusion"):
        result = recog.explain(clf, images[:4], method=method)
        assert result.maps.shape == (4, 32, 32) and result.maps.dtype == torch.float32
        assert torch.isfinite(result.maps).all() and result.maps.abs().sum() > 0
        assert len(result.predictions) == 4 and all("top" in p for p in result.predictions)
        assert result.targets == [p["top"][0]["class"] for p in result.predictions]  # default: the prediction
        if method == "gradcam":
            assert result.layer == "groups.2.conv1" and result.map_size == (8, 8)  # not the 4x4 last conv
        else:
            assert result.layer is None and result.map_size == (32, 32)


def test_target_class_is_explained_and_shown_in_the_title(test_images, tmp_path: Path) -> None:
    clf, images, _ = test_images
    result = recog.explain(clf, images[:2], method="saliency", target="ship", out=tmp_path)
    assert result.targets == ["ship", "ship"]
    assert "target: ship" in result.title(0)
    other = recog.explain(clf, images[:2], method="saliency", target="cat")
    assert not torch.allclose(result.maps, other.maps)  # a different class, a different map
    assert len(list(tmp_path.glob("*.png"))) == 2


def test_explain_layer_override_and_layers_listing(cifar_run, test_images, capsys) -> None:
    clf, images, _ = test_images
    result = recog.explain(clf, images[:2], method="gradcam", layer="groups.2.conv2")
    assert result.map_size == (4, 4) and result.maps.shape == (2, 32, 32)
    assert main(["explain", "--layers", str(cifar_run.path)]) == 0
    out = capsys.readouterr().out
    assert "groups.2.conv1                       8x8  (default)" in out and "groups.2.conv2" in out


def test_misclassified_grid_is_written_and_linked_from_the_report(cifar_run, capsys) -> None:
    assert main(["explain", str(cifar_run.path), "--misclassified", "6", "--method", "gradcam"]) == 0
    grid = cifar_run.path / "misclassified-gradcam.png"
    assert grid.is_file() and str(grid) in capsys.readouterr().out
    assert "![Most confident mistakes (gradcam)](misclassified-gradcam.png)" in (cifar_run.path / "report.md").read_text()
    assert json.loads((cifar_run.path / "report.json").read_text())["figures"][0]["path"] == grid.name
    assert main(["explain", str(cifar_run.path), "--misclassified", "6", "--method", "gradcam"]) == 0  # linked once
    assert (cifar_run.path / "report.md").read_text().count("misclassified-gradcam.png") == 1


def test_misclassified_on_a_builtin_dataset_reads_images_by_index(digits_run) -> None:
    from recog.explanations import explain_mistakes

    result, grid = explain_mistakes(digits_run.path, 4, method="ig")
    assert grid.is_file() and len(result) <= 4
    wrong = [r for r in (digits_run.path / "predictions.csv").read_text().splitlines()[1:]
             if r.split(",")[1] != r.split(",")[2]]
    assert result.paths == [r.split(",")[0] for r in sorted(wrong, key=lambda r: -float(r.split(",")[3]))[:4]]


def test_multilabel_target_is_one_of_its_labels(multilabel_run, cifar_png: Path) -> None:
    files = sorted((cifar_png / "test" / "ship").glob("*.png"))[:2]
    result = recog.explain(multilabel_run.path, files, method="gradcam", target="vehicle")
    assert result.targets == ["vehicle", "vehicle"] and "labels" in result.predictions[0]
    with pytest.raises(ConfigError, match="'vehicel'.*did you mean 'vehicle'"):
        recog.explain(multilabel_run.path, files, target="vehicel")


# ---- fp32 whatever the training precision ---------------------------------------------------------

def test_attributions_are_fp32_under_a_bf16_trained_run_and_outer_autocast(tmp_path: Path) -> None:
    run = recog.train(data="digits", model="airnet_small", epochs=1, precision="bf16", project=str(tmp_path),
                      verbose=False)
    assert run.config.precision == "bf16"
    clf = load(run.path, "cpu")
    images = torch.from_numpy(np.load(_digits_npy(tmp_path)))
    plain = recog.explain(clf, images, method="ig")
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a caller's autocast does not reach the attributions
        inside = recog.explain(clf, images, method="ig")
    assert plain.maps.dtype == torch.float32
    torch.testing.assert_close(inside.maps, plain.maps)
    # completeness (IG's axiom): the map sums to the score minus the baseline's score, up to the path integral
    x = clf.normalize(images)
    t = torch.tensor([clf.classes.index(c) for c in plain.targets])
    with torch.no_grad():
        gap = clf.model(x).gather(1, t[:, None])[:, 0] - clf.model(torch.zeros_like(x)).gather(1, t[:, None])[:, 0]
    assert torch.allclose(plain.maps.sum((1, 2)), gap, rtol=0.05, atol=0.02)


def _digits_npy(folder: Path) -> Path:
    from sklearn.datasets import load_digits

    arr = np.round(load_digits().images[:6] * 255 / 16).astype(np.uint8)[:, None]
    np.save(folder / "digits.npy", arr)
    return folder / "digits.npy"


# ---- the maps mean something ---------------------------------------------------------------------

# benchmarks/explain_faithfulness.py measured trained-vs-randomised rank correlations on 256 CIFAR-10
# test images (README, "Explanations"); a map that ignored the weights would sit near 1.
RANDOMISED_MAX_MEAN_RHO = 0.5


@pytest.mark.parametrize("method", ["gradcam", "ig"])
def test_maps_change_when_the_weights_are_randomised(test_images, method: str) -> None:
    """Adebayo et al.'s model-randomisation check on real CIFAR-10 test images."""
    clf, images, _ = test_images
    trained = recog.explain(clf, images[:60], method=method)
    targets = torch.tensor([clf.classes.index(c) for c in trained.targets])
    random_maps, _ = attribute(_randomised(clf), images[:60], targets, method, trained.layer)
    rho = rank_correlation(trained.maps, random_maps)
    assert rho.isnan().float().mean() < 0.25  # maps with no positive evidence (all zero) have no ranks
    assert rho.nanmean() < RANDOMISED_MAX_MEAN_RHO, f"{method}: mean Spearman {rho.nanmean():.3f}"
    again, _ = attribute(clf, images[:60], targets, method, trained.layer)  # the check can fail: same weights, rho 1
    assert rank_correlation(trained.maps, again).nanmean() > 0.99


def test_deleting_the_most_attributed_pixels_first_beats_random_pixels(test_images) -> None:
    """RISE's deletion and insertion for the default method, on a small scale (the benchmark: 250 images)."""
    clf, images, _ = test_images
    images = images[:64]
    result = recog.explain(clf, images)
    assert result.method == "ig"
    targets = torch.tensor([clf.classes.index(c) for c in result.targets])
    deletion, insertion = deletion_insertion(clf, images, result.maps, targets, steps=8)
    torch.manual_seed(0)
    r_deletion, r_insertion = deletion_insertion(clf, images, torch.rand_like(result.maps), targets, steps=8)
    assert deletion.shape == (64, 9)
    torch.testing.assert_close(deletion[:, 0], insertion[:, -1])  # nothing deleted = everything inserted
    assert auc(deletion) < auc(r_deletion)
    assert auc(insertion) > auc(r_insertion)


# ---- bad input -----------------------------------------------------------------------------------

def test_unreadable_files_are_skipped_like_predict(cifar_run, cifar_png: Path, tmp_path: Path, capsys) -> None:
    good = sorted((cifar_png / "test" / "dog").glob("*.png"))[0]
    bad = tmp_path / "broken.png"
    bad.write_bytes(good.read_bytes()[:100])
    result = recog.explain(cifar_run.path, [good, bad])
    assert result.paths == [str(good)] and result.errors[0]["path"] == str(bad)
    assert result.errors[0]["kind"] == "truncated"
    assert main(["explain", str(cifar_run.path), str(good), str(bad), "--out", str(tmp_path / "o")]) == 0
    assert f"warning: skipped {bad}" in capsys.readouterr().err
    assert main(["explain", str(cifar_run.path), str(bad), "--out", str(tmp_path / "o2")]) == 2


def test_bad_method_target_and_layer_name_the_valid_ones(cifar_run, cifar_png: Path, capsys) -> None:
    image = str(sorted((cifar_png / "test" / "dog").glob("*.png"))[0])
    assert main(["explain", str(cifar_run.path), image, "--method", "gradcm"]) == 2
    assert "did you mean 'gradcam'" in capsys.readouterr().err
    assert main(["explain", str(cifar_run.path), image, "--target", "kitten"]) == 2
    err = capsys.readouterr().err
    assert "'kitten' is not one of the model's classes" in err and "airplane, automobile, bird" in err
    assert main(["explain", str(cifar_run.path), image, "--method", "gradcam", "--layer", "groups.0.conv"]) == 2
    assert "did you mean 'groups.0.conv" in capsys.readouterr().err
    assert main(["explain", str(cifar_run.path), image, "--layer", "groups.0.conv1"]) == 2
    assert "add --method gradcam" in capsys.readouterr().err
    assert main(["explain", str(cifar_run.path)]) == 2
    assert "which images?" in capsys.readouterr().err
    assert main(["explain", str(cifar_run.path), "--misclassified", "0"]) == 2
    assert "at least 1, got 0" in capsys.readouterr().err
    assert main(["explain", str(cifar_run.path / "weights"), "--misclassified", "4"]) == 2
    assert "no predictions.csv in" in capsys.readouterr().err


def test_gradcam_on_a_model_without_conv_maps_names_the_methods_that_apply(test_images) -> None:
    clf, images, _ = test_images
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    no_conv = Classifier(mlp, dict(clf.meta, model="mlp"), clf.device)
    with pytest.raises(ConfigError, match="use --method ig, saliency, occlusion"):
        recog.explain(no_conv, images[:1], method="gradcam")
    assert recog.explain(no_conv, images[:1]).maps.shape == (1, 32, 32)  # the default method applies


def test_without_captum_one_line_says_what_to_install(cifar_run, cifar_png: Path) -> None:
    image = str(sorted((cifar_png / "test" / "dog").glob("*.png"))[0])
    code = ("import sys; sys.modules['captum'] = None; from recog.cli import main; "
            f"sys.exit(main(['explain', {str(cifar_run.path)!r}, {image!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: explanations need Captum: pip install 'recog[explain]' (from a clone: pip install -e \".[explain]\")"
