"""A property test over configs: any values for the config keys give a run or one recog error line
(exit 2), never a traceback. Bounded: a fixed number of examples, the bundled digits, small models,
one or two epochs, budgets of seconds."""

from __future__ import annotations

import json
import math

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from recog.cli import main  # noqa: E402

ints = st.one_of(st.integers(-3, 3), st.integers(-10**6, 10**6), st.sampled_from(["x", "1.5", ""]))
floats = st.one_of(st.floats(-2, 2, allow_nan=False), st.sampled_from([math.nan, math.inf, -math.inf, 1e38, 0.0]),
                   st.sampled_from(["x", ""]))
bools = st.sampled_from(["--{}", "--no-{}"])
# builder arguments with values nested as users (and YAML) can write them: lists in lists, None, text
nested = st.recursive(st.one_of(st.integers(-2, 8), st.sampled_from([16, 64, "conv", "whiten", "x", None, 1.5, True])),
                      lambda inner: st.lists(inner, max_size=3), max_leaves=5)

# each key: the values drawn for it (good and bad); keys that would make a run long or reach the
# network are held to small or local values
KEYS = {
    "epochs": st.integers(-1, 2),
    "steps": st.one_of(st.none(), st.integers(-1, 30)),
    "batch_size": st.one_of(st.integers(-1, 3), st.sampled_from([16, 64, 2048])),
    "micro_batch": st.one_of(st.none(), st.integers(-1, 40)),
    "model": st.sampled_from(["seednet", "airnet_small", "nosuchnet", "tv:nosuch"]),
    "optimizer": st.sampled_from(["sgd", "adamw", "muon", "rmsprop"]),
    "lr": floats,
    "momentum": floats,
    "weight_decay": floats,
    "l1": floats,
    "label_smoothing": floats,
    "grad_clip": st.one_of(st.none(), floats),
    "schedule": st.sampled_from(["onecycle", "cosine", "linear", "constant", "step"]),
    "warmup_epochs": st.one_of(st.none(), floats),
    "final_lr": floats,
    "patience": st.one_of(st.none(), ints),
    "val_fraction": floats,
    "split_seed": ints,
    "seed": ints,
    "translate": st.integers(-2, 12),
    "cutout": st.integers(-2, 12),
    "random_erasing": floats,
    "crop_scale": floats,
    "precision": st.sampled_from(["fp32", "bf16", "auto", "fp8"]),
    "time_budget": st.one_of(st.none(), st.sampled_from(["2s", "0", "-1m", "soon", "3"])),
    "freeze_stem_epochs": st.one_of(st.none(), floats),
    "mean": st.one_of(st.none(), st.sampled_from(["0.5", "0.5 0.5 0.5", "x"])),
    "class_weights": st.one_of(st.none(), st.sampled_from(["auto", "inverse"])),
    "device": st.sampled_from(["cpu", "auto", "tpu"]),
    "loader": st.sampled_from(["auto", "memory", "stream", "disk"]),
    "workers": st.one_of(st.none(), st.integers(-1, 1)),
    "model_args": st.dictionaries(st.sampled_from(["widths", "depth", "stem", "stem_stride", "bogus"]), nested,
                                  min_size=1, max_size=2),
}
FLAGS = ("flip", "alternating_flip", "random_resized_crop", "balanced_sampling", "lookahead", "tta", "deterministic",
         "channels_last", "nesterov")


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(values=st.fixed_dictionaries({}, optional=KEYS), flags=st.dictionaries(st.sampled_from(FLAGS), bools))
def test_any_config_gives_a_run_or_one_error_line(values: dict, flags: dict, tmp_path_factory, capsys) -> None:
    project = tmp_path_factory.mktemp("prop")
    argv = ["train", "--data", "digits", "--project", str(project), "--no-verbose"]
    if "model" not in values:
        argv += ["--model", "seednet"]
    if "epochs" not in values and "time_budget" not in values:
        argv += ["--epochs", "1"]
    for key, value in values.items():
        if value is None:
            continue
        argv.append("--" + key.replace("_", "-"))
        if key == "model_args":  # key=value pairs, each value in YAML's flow style
            argv += [f"{k}={json.dumps(v)}" for k, v in value.items()]
            continue
        argv += str(value).split() if key == "mean" else [str(value)]
        if key == "mean":
            argv += ["--std", *str(value).split()]
    for key, form in flags.items():
        argv.append(form.format(key.replace("_", "-")))
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: a value of the wrong type is a usage error, exit 2
        code = exc.code
    err = capsys.readouterr().err
    assert code in (0, 2), (argv, err[-1500:])
    assert "Traceback" not in err, (argv, err[-1500:])
    if code == 2:
        assert err.strip().startswith(("error:", "usage:")) or "\nerror: " in err, (argv, err[-1500:])
