"""A pickle that would run code is refused by eval, predict and --weights; its payload never runs."""

import os
import pickle
from pathlib import Path

import pytest
import torch

import recog
from recog.cli import main


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def evil(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    with path.open("wb") as f:
        pickle.dump({"conv.weight": _Payload(marker)}, f)
    return path, marker


def test_eval_refuses_a_malicious_pickle(evil, capsys) -> None:
    path, marker = evil
    assert main(["eval", str(path), "--data", "digits"]) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists()


def test_predict_refuses_a_malicious_pickle(evil, tmp_path: Path, capsys) -> None:
    path, marker = evil
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (8, 8)).save(image)
    assert main(["predict", str(path), str(image)]) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists()


def test_train_weights_refuses_a_malicious_pickle(evil, tmp_path: Path) -> None:
    path, marker = evil
    with pytest.raises(recog.api.WeightsError, match="refusing to load"):
        recog.train(data="digits", epochs=1, weights=str(path), project=str(tmp_path), verbose=False)
    assert not marker.exists()
    assert not (tmp_path / "train").exists()  # no run folder for a run that never started


def test_plain_state_dict_pt_is_accepted_as_initial_weights(digits_run, tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save(digits_run.model.state_dict(), path)
    run = recog.train(data="digits", model="airnet_small", epochs=1, weights=str(path), project=str(tmp_path),
                      verbose=False)
    assert run.report["accuracy"] > 0.9
    with pytest.raises(recog.api.WeightsError, match="no recog metadata"):
        recog.load(path)
