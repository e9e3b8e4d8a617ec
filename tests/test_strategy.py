"""Transfer planned for the budget: the strategy rule on given costs (recog.engine.strategy), the model
cut into a frozen trunk and a trained tail (recog.models.split), and a partial fine-tune end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import recog
from recog.data.sources import Probe
from recog.engine.plan import LADDER
from recog.engine.strategy import FEATURE_SHARE, Costs, choose, fitting_size
from recog.errors import ConfigError
from recog.models import create_model, head
from recog.models.split import split_model, stage_count

# measured on the 2-core EPYC: Lite0 forward ~85 img/s; tail steps of 1..3 stages; a full step ~15 img/s
COSTS = Costs(forward_s=1 / 85, tail_s={1: 1 / 900, 2: 1 / 300, 3: 1 / 40}, full_s=1 / 15)


def photos(train: int, val: int = 150, test: int = 0) -> Probe:
    return Probe(side=333, channels=3, train=train, val=val, test=test, classes=2)


def test_the_rule_picks_the_most_capable_strategy_the_budget_affords() -> None:
    few = photos(245, 153)  # hymenoptera
    assert choose(few, None, None).transfer == "partial"  # no budget
    assert choose(few, None, None, default_unfreeze=0).transfer == "probe"  # a model that cannot be cut
    deep = choose(few, 120, COSTS)
    assert (deep.transfer, deep.unfreeze) == ("partial", 3) and "epochs of the last 3 stages" in deep.why
    assert choose(few, 30, COSTS).unfreeze == 2  # less time: a shallower tail
    assert choose(few, 30, Costs(COSTS.forward_s, {}, COSTS.full_s)).transfer == "probe"  # no tail to train
    assert choose(few, 13, COSTS).transfer is None  # 13 s: the feature pass alone is most of it
    assert choose(few, 3600, COSTS).transfer == "full"  # an hour fits >= 20 epochs of the whole network
    many = photos(45_000, 5_000, 10_000)  # the 224-px CIFAR proxy: the feature pass alone ~20 minutes
    scratch = choose(many, 600, COSTS)
    assert scratch.transfer is None and f"over {FEATURE_SHARE:.0%} of the budget" in scratch.why
    assert choose(many, 4 * 3600, COSTS).transfer in ("partial", "probe")
    assert choose(few, 120, COSTS, flip=False).unfreeze == 3


def test_an_explicit_probe_under_a_short_budget_lowers_the_resolution() -> None:
    many = photos(45_000, 5_000, 10_000)
    assert fitting_size(photos(245), 120, COSTS, 224, True, LADDER) == 224
    size = fitting_size(many, 600, COSTS, 224, True, LADDER)
    assert size < 224
    images = 45_000 * 2 + 5_000 + 10_000 * 2
    assert images * COSTS.forward_s * (size / 224) ** 2 <= FEATURE_SHARE * 600
    assert fitting_size(many, 1, COSTS, 224, True, LADDER) == 32  # nothing fits: the smallest


@pytest.mark.parametrize("name", ["timm:tf_efficientnet_lite0", "tv:resnet18"])
def test_trunk_then_tail_is_the_model(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, 5, 3, 64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        whole = model(x)
        for k in range(1, stage_count(model) + 1):
            trunk, tail = split_model(model, k)
            assert torch.allclose(tail(trunk(x)), whole, atol=1e-5), k
            tail_params = {id(p) for p in tail.parameters()}
            assert all(id(p) in tail_params for p in head(model)[1].parameters())
            assert not tail_params & {id(p) for p in trunk.parameters()}
    with pytest.raises(ConfigError, match=f"unfreeze must be 1..{stage_count(model)}"):
        split_model(model, stage_count(model) + 1)


def test_a_model_without_stages_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="AirNet cannot be cut into stages.*--transfer probe or full"):
        split_model(create_model("airnet", 10, 3, 32), 1)


def test_partial_fine_tune_from_a_local_resnet_checkpoint(cifar_png: Path, tmp_path: Path) -> None:
    """--pretrained PATH of a torchvision ResNet, the last stage and the head trained on cached
    activations (the rest and every batch-norm statistic as the checkpoint has them); a rerun reads
    the activations from the cache and comes to the same result."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    donor = create_model("tv:resnet18", 7, 3, 32)
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(tmp_path / "donor.safetensors"))
    kwargs = dict(data=str(cifar_png), model="tv:resnet18", pretrained=str(tmp_path / "donor.safetensors"),
                  transfer="partial", unfreeze=1, epochs=3, verbose=False)
    run = recog.train(project=str(tmp_path / "a"), **kwargs)
    assert (run.config.transfer, run.config.unfreeze, len(run.metrics)) == ("partial", 1, 3)
    state = run.model.state_dict()
    assert torch.equal(state["layer3.0.conv1.weight"].cpu(), donor.state_dict()["layer3.0.conv1.weight"])  # frozen
    assert not torch.equal(state["layer4.0.conv1.weight"].cpu(), donor.state_dict()["layer4.0.conv1.weight"])
    assert torch.equal(state["layer4.0.bn1.running_mean"].cpu(), donor.state_dict()["layer4.0.bn1.running_mean"])
    assert run.report["num_images"] == 100
    again = recog.train(project=str(tmp_path / "b"), **kwargs)  # the same seed, the cached activations
    assert again.report["accuracy"] == pytest.approx(run.report["accuracy"])
    with pytest.raises(ConfigError, match="already finished"):
        recog.train(resume=str(run.path), verbose=False)


def test_a_multi_label_manifest_trains_by_partial_fine_tune(manifest: Path, tmp_path: Path) -> None:
    """The task's own loss and decisions on cached activations: several labels per image, thresholds."""
    from safetensors.torch import save_file

    donor = create_model("tv:resnet18", 7, 3, 32)
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(tmp_path / "donor.safetensors"))
    run = recog.train(data=str(manifest), model="tv:resnet18", pretrained=str(tmp_path / "donor.safetensors"),
                      transfer="partial", unfreeze=1, epochs=2, project=str(tmp_path / "runs"), verbose=False)
    assert run.report["task"] == "multilabel" and len(run.metrics) == 2
    assert 0.0 <= run.metrics[-1]["val_map"] <= 1.0
