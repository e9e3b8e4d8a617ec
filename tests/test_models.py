import pytest
import torch
from torch import nn

import recog
from recog.errors import ConfigError
from recog.models import cam_layer, conv_maps, model_stats, register_model

SHAPES = [(1, 8), (1, 28), (3, 32)]


@pytest.mark.parametrize("name", recog.list_models())
@pytest.mark.parametrize("channels,size", SHAPES)
def test_every_registered_model_classifies_every_builtin_input_shape(name: str, channels: int, size: int) -> None:
    model = recog.create_model(name, num_classes=7, in_channels=channels, image_size=size)
    out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7)
    name_, map_size = cam_layer(model, channels, size)
    assert isinstance(model.get_submodule(name_), nn.Conv2d)
    assert len(map_size) == 2


@pytest.mark.parametrize("name", recog.list_models())
def test_gradcam_layer_gives_at_least_7x7_maps_at_32px(name: str) -> None:
    """The deepest conv with a 7x7+ map, not the last one (1x1..4x4 at 32 px: a constant map)."""
    model = recog.create_model(name, num_classes=10, in_channels=3, image_size=32)
    layer, (h, w) = cam_layer(model, 3, 32)
    assert h >= 7 and w >= 7
    deeper = [n for n, _ in conv_maps(model, 3, 32)]
    assert all(min(s) < 7 for n, s in conv_maps(model, 3, 32)[deeper.index(layer) + 1:])


def test_vision_transformer_has_no_gradcam_layer() -> None:
    model = recog.create_model("tv:vit_b_16", num_classes=3, in_channels=3, image_size=224)
    assert conv_maps(model, 3, 224) == []  # its one conv is the patch embedding


def test_seednet_is_the_article_net_on_cifar_shapes() -> None:
    model = recog.create_model("seednet", 10, 3, 32)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 6, (5, 5), (0, 0)), (6, 16, (5, 5), (0, 0))]
    assert [(m.in_features, m.out_features) for m in linears] == [(400, 120), (120, 84), (84, 10)]
    params, macs = model_stats(model, 3, 32)
    assert params == 62006  # the article's Net
    assert macs == 651_720


def test_airnet_widths_are_configurable() -> None:
    model = recog.create_model("airnet", 10, 3, 32, widths=[16, 32, 48])
    assert model.head.in_features == 48
    with pytest.raises(ConfigError, match="did you mean 'widths'"):
        recog.create_model("airnet", 10, 3, 32, width=[16])


def test_unknown_model_names_closest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'seednet'"):
        recog.create_model("seednett")
    with pytest.raises(ConfigError, match="tv:resnet18"):
        recog.create_model("tv:resnet181")


def test_torchvision_models_by_name_and_greyscale_input() -> None:
    model = recog.create_model("tv:resnet18", num_classes=5, in_channels=1, image_size=32)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    assert "tv:resnet50" in recog.list_models("tv:resnet*")


def test_list_models_glob_and_duplicate_registration_raises() -> None:
    assert recog.list_models("air*") == ["airnet", "airnet_small"]
    with pytest.raises(ValueError, match="already registered"):
        @register_model
        def seednet() -> nn.Module:  # noqa: F811
            return nn.Identity()
