from pathlib import Path

import pytest

from recog.config import TrainConfig, make_config
from recog.errors import ConfigError


def test_unknown_yaml_key_names_closest_valid_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"learning_rate.*c\.yaml") as info:
        make_config(cfg)
    cfg.write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        make_config(cfg)
    assert "learning_rate" in str(info.value)


def test_unknown_keyword_argument_names_closest_valid_key() -> None:
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        make_config(batchsize=32)


def test_overrides_win_over_yaml_and_none_falls_through(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 3\nlr: 0.2\nflip: true\n")
    c = make_config(cfg, epochs=5, lr=None)
    assert (c.epochs, c.lr, c.flip) == (5, 0.2, True)


def test_the_api_takes_a_train_config_or_a_dict_as_its_config(tmp_path: Path) -> None:
    import recog

    run = recog.train(recog.TrainConfig(data="digits", model="seednet", epochs=1, verbose=False), epochs=2,
                      project=str(tmp_path))
    assert (run.config.model, run.config.epochs) == ("seednet", 2)  # the object's values, the keyword winning
    run = recog.train({"data": "digits", "model": "seednet", "epochs": 1}, verbose=False, project=str(tmp_path))
    assert (run.config.model, run.config.epochs, run.path.name) == ("seednet", 1, "train-2")
    with pytest.raises(ConfigError, match="a recog.TrainConfig or a dict of config keys, not int"):
        recog.train(3)
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        recog.train({"epoch": 1})


def test_values_are_coerced_and_checked(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: '4'\nflip: 'yes'\nmean: [0.5, 0.5, 0.5]\nstd: [0.5, 0.5, 0.5]\n")
    c = make_config(cfg)
    assert c.epochs == 4 and c.flip is True and c.mean == [0.5] * 3
    with pytest.raises(ConfigError, match="epochs"):
        make_config(epochs="many")
    with pytest.raises(ConfigError, match="optimizer must be one of"):
        make_config(optimizer="rmsprop")
    with pytest.raises(ConfigError, match="val_fraction"):
        make_config(val_fraction=1.5)
    with pytest.raises(ConfigError, match="both mean and std"):
        TrainConfig(mean=[0.5])


def test_not_a_mapping_and_missing_file_are_clear_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        make_config(cfg)
    with pytest.raises(ConfigError, match="not found"):
        make_config(tmp_path / "nope.yaml")


def test_shipped_configs_are_valid() -> None:
    for path in (Path(__file__).parents[1] / "configs").glob("*.yaml"):
        make_config(path)
