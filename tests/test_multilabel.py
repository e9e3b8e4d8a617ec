"""Multi-label classification from a label manifest: real CIFAR-10 images with two labels each
(their class and a coarse label), trained, evaluated and predicted; manifests' bad input; the
metrics against scikit-learn."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from sklearn import metrics as skm

import recog
from recog.cli import main
from recog.errors import DataError
from recog.tasks.multilabel import MultiLabel, tune_thresholds

from conftest import manifest_rows as _rows, write_manifest as _write_csv  # noqa: E402


def test_multilabel_trains_evaluates_and_beats_the_label_frequencies(multilabel_run) -> None:
    report = multilabel_run.report
    assert report["task"] == "multilabel" and report["num_images"] == 100 and report["split"] == "test"
    assert len(multilabel_run.classes) == 12  # 10 classes + animal + vehicle
    frequency = sum(report["label_frequency"]) / 12  # the mAP of guessing: each label's frequency
    assert report["map_macro"] > frequency + 0.2, (report["map_macro"], frequency)  # measured 0.45 vs 0.17
    per = {r["class"]: r for r in report["per_class"]}
    assert per["animal"]["ap"] > 0.85 and per["vehicle"]["ap"] > 0.8  # the coarse labels are easy (0.97, 0.94)
    assert 0 <= report["hamming_loss"] < 0.2 and 0 <= report["exact_match"] <= 1
    rows = list(csv.DictReader((multilabel_run.path / "metrics.csv").open()))
    assert "val_map" in rows[0] and float(rows[-1]["val_map"]) > 0
    md = (multilabel_run.path / "report.md").read_text()
    assert "mAP" in md and "| animal |" in md


def test_thresholds_are_saved_with_the_weights_and_used_by_predict(multilabel_run, cifar_png: Path, capsys) -> None:
    from recog.weights import read_weights

    _, meta = read_weights(multilabel_run.best_weights)
    thresholds = meta["thresholds"]
    assert meta["task"] == "multilabel" and len(thresholds) == 12 and all(0 < t < 1 for t in thresholds)
    assert thresholds != [0.5] * 12  # tuned on the validation split
    images = sorted((cifar_png / "test").glob("*/*.png"))[::10]
    clf = recog.load(multilabel_run.path)
    results = recog.predict(clf, images)
    probs = torch.stack([clf.read(p) for p in images])
    with torch.no_grad():
        sigmoid = clf(probs).float().sigmoid()
    for result, p in zip(results, sigmoid):
        chosen = {e["class"] for e in result["labels"]}
        # every label clearly over its own threshold, none clearly under it (predict batches the images
        # in bf16: a probability within 0.01 of its threshold may round to either side)
        over = {c for c, prob, t in zip(clf.classes, p.tolist(), thresholds) if prob >= t + 0.01}
        under = {c for c, prob, t in zip(clf.classes, p.tolist(), thresholds) if prob < t - 0.01}
        assert over <= chosen and not chosen & under
    assert main(["predict", str(multilabel_run.path), str(images[0]), "--json"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert set(line) == {"path", "labels"} and all(set(e) == {"class", "prob"} for e in line["labels"])


def test_eval_cli_reports_multilabel_metrics(multilabel_run, tmp_path: Path, capsys) -> None:
    assert main(["eval", str(multilabel_run.path), "--out", str(tmp_path / "ev")]) == 0
    assert "mAP" in capsys.readouterr().out
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["map_macro"] == pytest.approx(multilabel_run.report["map_macro"])
    assert not (tmp_path / "ev" / "confusion.png").exists()  # a confusion matrix is single-label
    rows = list(csv.DictReader((tmp_path / "ev" / "predictions.csv").open()))
    assert len(rows) == 100 and ";" in rows[0]["true"] and rows[0]["image"].endswith(".png")


def test_multilabel_report_matches_scikit_learn() -> None:
    gen = torch.Generator().manual_seed(0)
    targets = (torch.rand(300, 5, generator=gen) < torch.tensor([0.5, 0.3, 0.1, 0.6, 0.2])).float()
    logits = torch.randn(300, 5, generator=gen) + 1.5 * (targets - 0.5)
    task = MultiLabel(thresholds=[0.5, 0.4, 0.3, 0.6, 0.5])
    report = task.report(logits, targets, list("abcde"))
    y, p = targets.numpy().astype(int), logits.sigmoid().numpy()
    decided = (p >= [0.5, 0.4, 0.3, 0.6, 0.5]).astype(int)
    assert report["map_macro"] == pytest.approx(skm.average_precision_score(y, p, average="macro"), abs=1e-5)
    assert report["map_micro"] == pytest.approx(skm.average_precision_score(y, p, average="micro"), abs=1e-5)
    assert report["exact_match"] == pytest.approx(skm.accuracy_score(y, decided))
    assert report["hamming_loss"] == pytest.approx(skm.hamming_loss(y, decided))
    assert report["macro_f1"] == pytest.approx(skm.f1_score(y, decided, average="macro", zero_division=0))
    prec, rec, f1, support = skm.precision_recall_fscore_support(y, decided, zero_division=0)
    for i, row in enumerate(report["per_class"]):
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (prec[i], rec[i], f1[i], support[i]), abs=1e-6)
        assert row["ap"] == pytest.approx(skm.average_precision_score(y[:, i], p[:, i]), abs=1e-5)


def test_tuned_thresholds_give_each_label_its_best_f1() -> None:
    gen = torch.Generator().manual_seed(1)
    targets = (torch.rand(200, 3, generator=gen) < 0.3).float()
    targets[:, 2] = 0  # a label never seen positive keeps the default threshold
    probs = (torch.rand(200, 3, generator=gen) * 0.6 + 0.4 * targets).clamp(0, 1)
    thresholds = tune_thresholds(probs, targets)
    assert thresholds[2] == 0.5
    for i in range(2):
        y, p = targets[:, i].numpy(), probs[:, i].numpy()
        best = max(skm.f1_score(y, p >= t, zero_division=0) for t in p)  # every possible cut
        assert skm.f1_score(y, p >= thresholds[i], zero_division=0) == pytest.approx(best)


def test_pos_weight_auto_weighs_rare_labels(manifest: Path, tmp_path: Path) -> None:
    from recog.data import load_dataset

    ds = load_dataset(str(manifest), val_fraction=0.0)
    weights = ds.pos_weight()
    counts = ds.train.labels.sum(0)
    assert torch.allclose(weights, (len(ds.train) - counts) / counts)
    run = recog.train(data=str(manifest), model="airnet_small", epochs=1, pos_weight="auto", project=str(tmp_path),
                      verbose=False)
    assert run.config.pos_weight == "auto" and run.report["task"] == "multilabel"
    with pytest.raises(recog.api.ConfigError, match="pos_weight is for multi-label"):
        recog.train(data="digits", pos_weight="auto", epochs=1, project=str(tmp_path), verbose=False)


# ---- manifests: layouts and bad input --------------------------------------------------------------


def test_sibling_split_files_jsonl_and_a_single_label_manifest(cifar_png: Path, tmp_path: Path) -> None:
    from recog.data import load_dataset

    folder = tmp_path / "sets"
    folder.mkdir()
    train, test = _rows(cifar_png, "train"), _rows(cifar_png, "test")
    for row in train + test:
        row["image"] = str(cifar_png / row["image"])  # absolute paths are taken as they are
    _write_csv(folder / "train.csv", train[:200], ("image", "labels"))
    _write_csv(folder / "val.csv", train[200:], ("image", "labels"))
    with (folder / "test.jsonl").open("w") as f:
        for row in test:
            f.write(json.dumps({"image": row["image"], "labels": row["labels"].split(";")}) + "\n")
    ds = load_dataset(str(folder))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (200, 100, 100) and ds.multilabel
    single = _write_csv(tmp_path / "single.csv", [{"image": r["image"], "label": r["labels"].split(";")[0]}
                                                  for r in train], ("image", "label"))
    ds = load_dataset(str(single), val_fraction=0.1)
    assert not ds.multilabel and len(ds.classes) == 10 and len(ds.val) == 30  # stratified: 3 per class


def test_bad_manifests_get_clear_errors(cifar_png: Path, tmp_path: Path, capsys) -> None:
    from recog.data import load_dataset

    rows = _rows(cifar_png, "train")[:20]
    for row in rows:
        row["image"] = str(cifar_png / row["image"])
    bad = tmp_path / "bad.csv"
    bad.write_text("image,lables\na.png,cat\n")
    with pytest.raises(DataError, match="unknown column 'lables'; did you mean 'labels'"):
        load_dataset(str(bad))
    bad.write_text("path,labels\na.png,cat\n")
    with pytest.raises(DataError, match="unknown column 'path'"):
        load_dataset(str(bad))
    _write_csv(bad, [{"image": r["image"], "labels": ""} for r in rows])
    with pytest.raises(DataError, match="every row's label list is empty"):
        load_dataset(str(bad))
    _write_csv(bad, [dict(r, split="holdout") for r in rows])
    with pytest.raises(DataError, match=r"bad\.csv, row 2: split 'holdout'"):
        load_dataset(str(bad))
    (tmp_path / "bad.jsonl").write_text('{"image": "a.png", "labels": ["x"]}\nnot json\n')
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2"):
        load_dataset(str(tmp_path / "bad.jsonl"))
    assert main(["train", "--data", str(bad), "--project", str(tmp_path)]) == 2  # one line, no traceback
    assert "Traceback" not in capsys.readouterr().err


def test_missing_images_are_skipped_and_listed(cifar_png: Path, tmp_path: Path) -> None:
    rows = _rows(cifar_png, "train")[::3]
    for row in rows:
        row["image"] = str(cifar_png / row["image"])
    rows.append({"image": str(tmp_path / "gone.png"), "labels": "cat;animal", "split": "train"})
    manifest = _write_csv(tmp_path / "m.csv", rows)
    run = recog.train(data=str(manifest), model="airnet_small", epochs=1, project=str(tmp_path / "runs"),
                      verbose=False)
    skipped = list(csv.DictReader((run.path / "skipped.csv").open()))
    assert [r["path"] for r in skipped] == [str(tmp_path / "gone.png")]
    assert "not found" in skipped[0]["reason"]


def test_multilabel_with_the_planned_defaults(manifest: Path, tmp_path: Path) -> None:
    # no options: the planner's small recipe (airnet, Muon, label smoothing, flips, 6-view TTA) on
    # multi-hot labels, through to the report and predict
    run = recog.train(data=str(manifest), epochs=2, project=str(tmp_path), verbose=False)
    cfg = run.config
    assert (cfg.recipe, cfg.optimizer, cfg.tta, cfg.batch_size) == ("small", "muon", True, 32)
    assert run.report["task"] == "multilabel" and run.report["tta"] is True and 0 <= run.report["map_macro"] <= 1
    first = recog.predict(run.path, [str(manifest.parent / next(csv.DictReader(manifest.open()))["image"])])[0]
    assert "labels" in first and "error" not in first


def test_coarse_labels_on_every_image_are_no_imbalance_but_a_rare_label_is(manifest: Path, tmp_path: Path) -> None:
    import csv as _csv

    from recog.data import load_dataset

    ds = load_dataset(str(manifest), val_fraction=0.0)  # 10 fine labels and animal/vehicle on every image
    assert ds.imbalance() is None
    rows = list(_csv.DictReader(manifest.open()))
    for i, row in enumerate(rows):
        if i % 40 == 0 and row["split"] == "train":
            row["labels"] += ";rare"  # on 1 in 40 images
    path = manifest.parent / "rare.csv"
    with path.open("w", newline="") as f:
        writer = _csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    ds = load_dataset(str(path), val_fraction=0.0)
    rare, _, ratio = ds.imbalance()
    assert ds.classes[rare] == "rare" and ratio >= 20
