"""Metrics against scikit-learn, the eval command and its report files, TTA."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

import recog
from recog.cli import main
from recog.errors import WeightsError
from recog.inference import tta_views
from recog.tasks.classification import classification_report


@pytest.mark.parametrize(("num_classes", "unseen"), [(3, False), (12, False), (12, True)])
def test_report_figures_match_scikit_learn(num_classes: int, unseen: bool) -> None:
    gen = torch.Generator().manual_seed(num_classes)
    labels = torch.randint(0, num_classes, (500,), generator=gen)
    logits = torch.randn(500, num_classes, generator=gen)
    logits[torch.arange(500), labels] += 1.0  # better than chance, not perfect
    if unseen:  # class 11 never true nor predicted (out of the macro mean); class 10 predicted, never true
        labels[labels >= 10] = 0
        logits[:, 11] = -100.0
        logits[:5, 10] = 100.0
    classes = [f"c{i}" for i in range(num_classes)]
    rep = classification_report(logits, labels, classes)
    y, p = labels.numpy(), logits.argmax(1).numpy()
    assert rep["accuracy"] == pytest.approx(skm.accuracy_score(y, p))
    for avg in ("macro", "weighted"):
        assert rep[f"{avg}_f1"] == pytest.approx(skm.f1_score(y, p, average=avg, zero_division=0))
        assert rep[f"{avg}_precision"] == pytest.approx(skm.precision_score(y, p, average=avg, zero_division=0))
        assert rep[f"{avg}_recall"] == pytest.approx(skm.recall_score(y, p, average=avg, zero_division=0))
    per = skm.precision_recall_fscore_support(y, p, labels=range(num_classes), zero_division=0)
    for i, row in enumerate(rep["per_class"]):
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((per[0][i], per[1][i], per[2][i]))
        assert row["support"] == per[3][i]
    assert rep["confusion_matrix"] == skm.confusion_matrix(y, p, labels=range(num_classes)).tolist()
    if num_classes >= 10:
        expected = skm.top_k_accuracy_score(y, logits.numpy(), k=5, labels=range(num_classes))
        assert rep["top5_accuracy"] == pytest.approx(expected)
    else:
        assert rep["top5_accuracy"] is None
    worst = rep["most_confused"][0]
    cm = np.array(rep["confusion_matrix"])
    np.fill_diagonal(cm, 0)
    assert worst["count"] == cm.max()


def test_eval_cli_prints_and_writes_the_report(digits_run, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    assert main(["eval", str(digits_run.path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "| 9 |" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["accuracy"] == pytest.approx(digits_run.report["accuracy"])
    assert report["num_images"] == 359
    for name in ("report.md", "confusion.csv", "confusion.png"):
        assert (out / name).is_file()
    header = (out / "confusion.csv").read_text().splitlines()[0]
    assert header.endswith(",".join(str(i) for i in range(10)))


def test_eval_of_a_weights_file_needs_data_and_checks_classes(digits_run, cifar_png: Path, tmp_path: Path) -> None:
    weights = digits_run.best_weights
    with pytest.raises(recog.api.ConfigError, match="--data"):
        recog.evaluate(weights, out=tmp_path / "a", verbose=False)
    report = recog.evaluate(weights, data="digits", out=tmp_path / "b", verbose=False)
    assert report["num_images"] == 359  # digits' fixed test split
    with pytest.raises(recog.api.DataError, match="classes"):
        recog.evaluate(weights, data=str(cifar_png), out=tmp_path / "c", verbose=False)


def test_tta_averages_the_trained_views(tmp_path: Path, cifar_png: Path) -> None:
    assert tta_views(False, 0) == [(False, 0, 0, 1.0)]
    assert len(tta_views(True, 0)) == 2 and len(tta_views(True, 2)) == 6 and len(tta_views(False, 2)) == 3
    for flip_, shift in ((True, 0), (True, 2), (False, 2)):
        assert sum(w for *_, w in tta_views(flip_, shift)) == pytest.approx(1.0)
    run = recog.train(data=str(cifar_png), model="airnet_small", epochs=2, flip=True, translate=2,
                      project=str(tmp_path), verbose=False)
    plain = recog.evaluate(run.path, out=tmp_path / "plain", verbose=False)
    tta = recog.evaluate(run.path, tta=True, out=tmp_path / "tta", verbose=False)
    assert tta["tta"] is True and plain["tta"] is False
    assert tta["num_images"] == plain["num_images"] == 100


def test_tta_logits_are_the_mean_of_the_views_probabilities() -> None:
    from recog.data.augment import translate
    from recog.evaluation import collect_logits

    torch.manual_seed(0)
    model = recog.create_model("seednet", 4, 3, 16).eval()
    x = torch.randn(6, 3, 16, 16)
    loader = [(x, torch.zeros(6, dtype=torch.long))]
    views = tta_views(True, 1)
    logits, _ = collect_logits(model, loader, torch.device("cpu"), views=views)
    with torch.no_grad():
        expected = 0
        for f, dy, dx, weight in views:
            v = x.flip(-1) if f else x
            v = translate(v, torch.full((6,), dy), torch.full((6,), dx), 1)
            expected = expected + weight * model(v).softmax(1)
    assert torch.allclose(logits.exp(), expected, atol=1e-5)
    plain, _ = collect_logits(model, loader, torch.device("cpu"))
    assert not torch.equal(plain.softmax(1), logits.exp())


def test_tta_of_a_model_sure_beyond_fp32_gives_finite_logits_and_a_report() -> None:
    """A model trained on trivially separable images (one flat colour per class) can be so sure that
    the other classes' probabilities underflow to 0: their log was -inf, and the check for broken
    weights refused a model that had learnt its task (seen with one thread on flat-colour images)."""
    from torch import nn

    from recog.evaluation import collect_logits
    from recog.inference import check_outputs

    class Sure(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # class = the brightest channel, 1000 logits apart
            return 1000.0 * x.mean((2, 3))

    x = torch.zeros(3, 3, 8, 8)
    for i in range(3):
        x[i, i] = 1.0
    targets = torch.arange(3)
    for confidence in (None, 0.6, 1.1):  # every image given every view / the sure ones kept / none kept
        logits, _ = collect_logits(Sure(), [(x, targets)], torch.device("cpu"), views=tta_views(True, 1),
                                   confidence=confidence)
        assert torch.isfinite(logits).all() and torch.equal(logits.argmax(1), targets), confidence
        check_outputs(logits, None)  # no error: the weights are fine
        report = classification_report(logits, targets, ["r", "g", "b"])
        assert report["accuracy"] == 1.0

    class Broken(nn.Module):  # NaN weights: still refused after the views are averaged
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean((2, 3)) * float("nan")

    logits, _ = collect_logits(Broken(), [(x, targets)], torch.device("cpu"), views=tta_views(True, 1),
                               confidence=0.6)
    with pytest.raises(WeightsError, match="non-finite outputs"):
        check_outputs(logits, None)
