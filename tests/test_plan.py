"""The planner (recipe: auto): resolution, recipe, batch and epochs from the data and the budget;
memory planned before training; explicit values always win."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import recog
from recog.config import make_config
from recog.engine import plan as planner
from recog.errors import ConfigError
from recog.models import create_model


def _photos(root: Path, size: tuple[int, int] = (200, 150), per_class: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for k, name in enumerate(("cats", "dogs")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 80, (size[1], size[0], 3), dtype=np.uint8) + np.uint8(120 * k)
            Image.fromarray(pixels).save(root / name / f"{i}.jpg")
    return root


def test_small_images_get_the_small_recipe_with_batch_and_epochs_for_the_data() -> None:
    recipe, planned = planner.plan({"data": "digits", "verbose": False})
    # 1,293 training digits: a batch of 64 (about 1/20), 16 epochs for >= 320 steps; the recipe's
    # learning rates (for 1,024) scaled to 64
    assert recipe == "small"
    assert planned.pop("model_args")["stem"] == "conv"  # 8 px: too small to whiten 2x2 patches
    assert planned == {"batch_size": 64, "lr": 1.5 * 64 / 1024, "muon_lr": round(0.17 * 0.25, 6), "epochs": 16}
    cfg = make_config(plan=planner.plan, data="mnist", verbose=False)
    assert (cfg.recipe, cfg.optimizer, cfg.model_args["stem"], cfg.val_fraction, cfg.batch_size) == \
        ("small", "muon", "whiten", 0.1, 1024)  # the fast methods, with a validation split kept
    assert cfg.tta is None  # decided in build: on, or as many views as a time budget affords


def test_photos_get_a_working_resolution_and_a_strided_stem(tmp_path: Path) -> None:
    data = _photos(tmp_path / "photos")
    recipe, planned = planner.plan({"data": str(data), "transfer": "none", "verbose": False})  # from scratch
    assert recipe == "photos" and planned["image_size"] == 128  # shorter side 150: 128 without a budget
    assert planned["model_args"]["stem_stride"] == 4 and planned["batch_size"] == 32
    small = _photos(tmp_path / "thumbs", size=(100, 90))
    assert planner.plan({"data": str(small), "transfer": "none", "verbose": False})[1]["image_size"] == 64  # <= native
    assert planner.ladder(90) == [64, 48, 32] and planner.ladder(20) == [20]


def test_explicit_values_always_win(tmp_path: Path) -> None:
    data = _photos(tmp_path / "photos")
    recipe, planned = planner.plan({"data": str(data), "image_size": 48, "batch_size": 16, "verbose": False})
    assert recipe == "small" and "image_size" not in planned and not {"batch_size", "lr"} & set(planned)
    cfg = make_config(plan=planner.plan, data=str(data), model="resnet18", lr=0.3, epochs=2, verbose=False)
    # another model than the recipes' airnet: the plain defaults (their settings are tuned for airnet),
    # at the planned resolution
    assert (cfg.recipe, cfg.image_size, cfg.optimizer, cfg.lr, cfg.epochs) == ("none", 128, "sgd", 0.3, 2)
    assert cfg.model_args == {} and cfg.freeze_stem_epochs is None
    # the recipe's optimizer settings do not follow to another optimizer: AdamW gets its own lr
    cfg = make_config(plan=planner.plan, data="mnist", optimizer="adamw", verbose=False)
    assert (cfg.recipe, cfg.lr, cfg.label_smoothing) == ("small", 1e-3, 0.2)
    assert make_config(plan=planner.plan, data="digits", recipe="none").batch_size is None  # filled in build
    # a named recipe is sized, not chosen: the small recipe's lrs follow the batch it gets on digits,
    # the fast recipe keeps its own batch, lrs and stem
    small = make_config(plan=planner.plan, data="digits", recipe="small", verbose=False)
    assert (small.batch_size, small.lr, small.epochs, small.model_args["stem"]) == (64, 1.5 * 64 / 1024, 16, "whiten")
    fast = make_config(plan=planner.plan, data="digits", recipe="fast", verbose=False)
    assert (fast.batch_size, fast.lr, fast.epochs, fast.model_args["stem"]) == (1024, 1.5, 8, "whiten")


def test_a_budget_picks_the_largest_size_that_fits_and_lowers_it_when_short(tmp_path: Path, monkeypatch,
                                                                            capsys) -> None:
    data = _photos(tmp_path / "photos", size=(240, 240), per_class=500)
    # a cost that grows with the pixels: 1 ms per image at 32 px
    monkeypatch.setattr(planner, "time_per_image", lambda given, probe, size: (1e-3 * (size / 32) ** 2,) * 2)
    probe = recog.data.probe_dataset(str(data))
    cost = {s: 1e-3 * (s / 32) ** 2 for s in planner.LADDER}
    for budget, seconds, expected in (("10m", 600, 224), ("2m", 120, 96), ("5s", 5, 32)):
        choice = planner.choose_size({"time_budget": budget}, probe)
        assert choice.size == expected, budget
        fits = {s: planner.epochs_in(seconds, probe, cost[s], cost[s], 2) for s in planner.ladder(probe.side)}
        if budget != "5s":  # the largest size (never above the native 240) that fits 8 epochs
            assert expected == max(s for s, e in fits.items() if e >= planner.MIN_EPOCHS)
            assert choice.epochs_fit == pytest.approx(fits[expected])
        else:  # nothing fits 8 epochs: the smallest size, and the plan says so
            assert max(fits.values()) < planner.MIN_EPOCHS and "fits no size" in choice.why
    recipe, planned = planner.plan({"data": str(data), "time_budget": "2m", "transfer": "none"})
    assert (recipe, planned["image_size"]) == ("photos", 96)
    assert "resolution: 96 px for images of 240 px (the largest size at which 2m fits >= 8 epochs" in \
        capsys.readouterr().err


def test_the_resolution_timing_measures_the_model_that_size_trains(tmp_path: Path) -> None:
    data = _photos(tmp_path / "photos")
    probe = recog.data.probe_dataset(str(data))
    small, large = (planner.time_per_image({"data": str(data)}, probe, s)[0] for s in (32, 128))
    assert small > 0 and large > 0


def test_activation_memory_is_measured_and_grows_with_the_pixels() -> None:
    model = create_model("airnet", 10, 3, 32)
    at32 = planner.activation_bytes(model, 3, 32, "fp32", torch.device("cpu"))
    big = create_model("airnet", 10, 3, 64)
    at64 = planner.activation_bytes(big, 3, 64, "fp32", torch.device("cpu"))
    assert 3.5 < at64 / at32 < 4.5
    # the first conv's output alone is 24 x 32 x 32 floats per image
    assert at32 > 24 * 32 * 32 * 4


def test_a_batch_that_does_not_fit_is_split_or_refused() -> None:
    gib = 2**30
    fits = planner.plan_memory(0.01 * gib, 64, None, 16 * gib, "m")
    assert fits.micro_batch is None
    split = planner.plan_memory(1 * gib, 64, None, 16 * gib, "m")  # 8 GiB allowed, 1.5 GiB per image
    assert split.micro_batch == 4 and "micro-batch of 4" in split.describe(64)
    with pytest.raises(ConfigError, match="airnet at 512 px.*one training image needs"):
        planner.plan_memory(20 * gib, 64, None, 16 * gib, "airnet at 512 px")
    with pytest.raises(ConfigError, match="--micro-batch 4 or less"):
        planner.plan_memory(1 * gib, 64, 16, 16 * gib, "m")


def test_a_run_too_big_for_memory_trains_in_micro_batches(tmp_path: Path, monkeypatch, capsys) -> None:
    import recog.engine.resolve as build

    monkeypatch.setattr(build, "available_memory", lambda device: 40 * 2**20)  # 40 MiB: 20 for activations
    run = recog.train(data="digits", model="airnet_small", epochs=1, batch_size=512, project=str(tmp_path))
    err = capsys.readouterr().err
    assert run.config.micro_batch is not None and run.config.micro_batch < 512
    assert "micro-batches of" in err and f"micro-batch of {run.config.micro_batch}" in err
    saved = yaml.safe_load((run.path / "config.yaml").read_text())
    assert saved["micro_batch"] == run.config.micro_batch and saved["batch_size"] == 512
    monkeypatch.setattr(build, "available_memory", lambda device: 2**10)  # not even the weights fit
    with pytest.raises(ConfigError, match=r"airnet_small at 8 px has 0.29 M parameters: 4 MiB .* over 50% of the 0 MiB available"):
        recog.train(data="digits", model="airnet_small", epochs=1, project=str(tmp_path), verbose=False)


def test_photos_train_end_to_end_from_the_cli(tmp_path: Path, capsys) -> None:
    from recog.cli import main

    data = _photos(tmp_path / "photos", size=(160, 120))
    assert main(["train", "--data", str(data), "--epochs", "2", "--project", str(tmp_path / "runs"),
                 "--progress", "none", "--transfer", "none"]) == 0  # from scratch (test_transfer: pretrained)
    err = capsys.readouterr().err
    assert "plan: photos recipe: airnet" in err and "at 96 px (stem 3x3 patches)" in err and "batch 32" in err
    saved = yaml.safe_load((tmp_path / "runs" / "train" / "config.yaml").read_text())
    assert (saved["recipe"], saved["image_size"], saved["model_args"]["stem_stride"]) == ("photos", 96, 3)
    # the cache holds the images at the working resolution, not at full size
    import recog.data.files as files

    cached = [np.load(p, mmap_mode="r").shape for p in files.cache_dir().glob("images/*/train.images.npy")]
    assert (24, 3, 96, 96) in cached  # all 24 photos (the split is carved after the cache), at 96 px


def test_photos_with_a_time_budget_train_and_record_the_plan(tmp_path: Path) -> None:
    data = _photos(tmp_path / "photos", size=(160, 120))
    run = recog.train(data=str(data), time_budget="15s", transfer="none", project=str(tmp_path / "runs"),
                      verbose=False)
    saved = yaml.safe_load((run.path / "config.yaml").read_text())
    assert saved["image_size"] in planner.ladder(120) and saved["recipe"] in ("small", "photos")
    assert saved["steps"] >= 1 and saved["epochs"] >= 1 and saved["batch_size"] == 32
    assert saved["tta"] in (True, False)  # decided from the measured evaluation time, and recorded


def test_a_budget_sizes_the_batch_and_the_tta_it_can_afford() -> None:
    from recog.config import TrainConfig
    from recog.engine.resolve import afford_tta

    # 190 images/s for 3 minutes: three quarters of it train ~25,650 images, 320 steps of 64
    assert planner.budget_batch(180, 1 / 190) == 64
    assert planner.budget_batch(5, 1.0) == 32  # never under 32
    assert planner.budget_batch(3600, 1 / 1000) == 8192  # then capped by the data's rule (at most 1,024)
    cfg = TrainConfig(flip=True, translate=2)  # 6 views with the shifts, 2 with the flip alone
    assert afford_tta(cfg, view_s=1.0, budget_s=60) == (True, True)  # 6 s: 10% of the budget
    assert afford_tta(cfg, view_s=2.0, budget_s=60) == (True, False)  # 12 s for 6 views: the flip alone
    assert afford_tta(cfg, view_s=4.0, budget_s=60)[0] is False  # 8 s even for 2 views: none


def test_resume_continues_the_recorded_plan(tmp_path: Path) -> None:
    data = _photos(tmp_path / "photos", size=(160, 120))

    def stop_after_one(row: dict) -> None:
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        recog.train(data=str(data), epochs=3, transfer="none", project=str(tmp_path / "runs"), verbose=False,
                    on_epoch_end=stop_after_one)
    run_dir = tmp_path / "runs" / "train"
    planned = yaml.safe_load((run_dir / "config.yaml").read_text())
    resumed = recog.train(resume=str(run_dir), verbose=False)
    assert len(resumed.metrics) == 3
    for key in ("recipe", "image_size", "model_args", "batch_size", "lr", "muon_lr", "steps"):
        assert getattr(resumed.config, key) == planned[key], key


def test_a_time_budgeted_run_resumes_after_a_kill_with_the_same_plan(tmp_path: Path) -> None:
    """config.yaml is written once, before the first step; the budget's re-plans live in state.pt, and
    --resume continues from both: the same steps, every epoch once."""
    from recog.engine.checkpoint import load_state

    def stop_after_one(row: dict) -> None:
        if row["epoch"] == 1:
            raise KeyboardInterrupt  # as a kill after the first epoch's files were written

    with pytest.raises(KeyboardInterrupt):
        recog.train(data="digits", model="airnet_small", batch_size=128, time_budget="20s", project=str(tmp_path),
                    verbose=False, on_epoch_end=stop_after_one)
    run_dir = tmp_path / "train"
    planned = (run_dir / "config.yaml").read_text()
    loop = load_state(run_dir / "weights" / "state.pt")["loop"]
    assert loop["epoch"] == 1 and loop["total_steps"] >= 10  # 10 steps per epoch; the plan in the loop state
    resumed = recog.train(resume=str(run_dir), verbose=False)
    assert (run_dir / "config.yaml").read_text() == planned  # not rewritten, by the loop or the resume
    assert resumed.steps == loop["total_steps"]  # the plan the killed run had reached
    assert [r["epoch"] for r in resumed.metrics] == list(range(1, -(-loop["total_steps"] // 10) + 1))


def test_a_budget_plan_inside_one_epoch_is_replanned_as_it_runs(tmp_path: Path, monkeypatch) -> None:
    from recog.engine import budget as budget_module

    # a calibration far too pessimistic (as on a busy machine): 20 steps planned, with 3 s to go;
    # the re-plans inside the epoch use the step time measured there, so more steps run
    def pessimistic(self, *args, **kwargs) -> int:
        timings = budget_module.Timings(step_s=1.0, eval_image_s=1e-4, setup_s=0.0)
        spe = kwargs.get("sizes", args[6] if len(args) > 6 else {})["steps_per_epoch"]
        self.plan = budget_module.BudgetPlan(20, 1, timings, 1.0, 0.1, spe)
        self.deadline = self.clock() + 3.0
        return 20

    monkeypatch.setattr(budget_module.Budget, "calibrate", pessimistic)
    run = recog.train(data="digits", model="airnet_small", batch_size=8, time_budget="1m", project=str(tmp_path),
                      verbose=False)
    from recog.engine.checkpoint import load_state

    loop = load_state(run.path / "weights" / "state.pt")["loop"]
    assert loop["total_steps"] > 20  # re-planned within the first epoch (162 steps of 8), and it ended
    assert -(-loop["total_steps"] // loop["steps_per_epoch"]) == len(run.metrics)
    # config.yaml is the first plan, written once before training; the re-plans live in the loop state
    assert yaml.safe_load((run.path / "config.yaml").read_text())["steps"] == run.config.steps == 20


def test_a_budget_plan_over_several_epochs_is_replanned_inside_each_epoch(tmp_path: Path, monkeypatch) -> None:
    """A machine that slows inside a long epoch is seen before the epoch ends: a plan of three epochs whose
    deadline has already passed is cut at the first tenth of its steps, not at the end of epoch 1 (the
    4-minute CIFAR run had ended 28 s late when its second epoch ran 17% slower than the first)."""
    from recog.engine import budget as budget_module

    def optimistic(self, *args, **kwargs) -> int:
        spe = kwargs.get("sizes", args[6] if len(args) > 6 else {})["steps_per_epoch"]
        timings = budget_module.Timings(step_s=1e-6, eval_image_s=1e-6, setup_s=0.0)
        self.plan = budget_module.BudgetPlan(3 * spe, 3, timings, spe * 1e-6, 0.0, spe)
        self.deadline = self.clock()  # no time left: the next re-plan ends the run
        return 3 * spe

    monkeypatch.setattr(budget_module.Budget, "calibrate", optimistic)
    run = recog.train(data="digits", model="airnet_small", batch_size=8, time_budget="1m", project=str(tmp_path),
                      verbose=False)
    from recog.engine.checkpoint import load_state

    loop = load_state(run.path / "weights" / "state.pt")["loop"]
    assert len(run.metrics) == 1 and loop["total_steps"] <= 3 * loop["steps_per_epoch"] // 10 + 1


def test_the_calibration_times_more_steps_where_they_are_cheap_and_a_stall_does_not_size_the_plan(monkeypatch) -> None:
    import itertools

    from recog.engine import budget

    def timed(durations: list[float], steps: int, spend: float) -> tuple[float, int]:
        clock = [0.0]
        monkeypatch.setattr(budget.time, "perf_counter", lambda: clock[0])
        left = iter(durations)

        def step(batch: object) -> None:
            clock[0] += next(left)

        s = budget.time_steps(step, itertools.repeat(()), steps, spend)
        return s, len(durations) - sum(1 for _ in left)

    stalled = [1.0, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1]  # warm-up, then a stall on the second step
    assert timed(stalled, 2, spend=0.0) == (pytest.approx(0.5), 3)  # two steps: the stall is half of it
    assert timed(stalled, 2, spend=2.0) == (pytest.approx(0.1), 6)  # five steps (the most): their median
    assert timed([1.0, 0.3, 0.3, 0.3, 0.3, 0.3], 2, spend=1.0)[1] == 4  # three steps fit 1 s, a fourth would not


def test_a_large_jpeg_decodes_at_a_reduced_scale_with_the_same_picture(tmp_path: Path) -> None:
    from recog.data.image import decode, open_image

    rng = np.random.default_rng(1)
    smooth = np.kron(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8), np.ones((10, 10, 1), dtype=np.uint8))
    path = tmp_path / "photo.jpg"
    Image.fromarray(smooth).save(path, quality=95)  # 400 x 300
    fast, original = decode(path, 3, 64)  # 64 / 300 < 1/2: libjpeg's DCT scaling
    assert fast.shape == (3, 64, 64) and original == (400, 300)  # the original size is still reported
    full = open_image(path, 3)  # the whole image, then the same resize and crop
    reference = np.asarray(full.resize((85, 64), Image.Resampling.BILINEAR, reducing_gap=3.0).crop((10, 0, 74, 64)))
    assert np.abs(fast.transpose(1, 2, 0).astype(int) - reference.astype(int)).mean() < 8


def test_a_stem_stride_under_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="stem_stride must be at least 1, got 0"):
        create_model("airnet", 10, 3, 128, stem_stride=0)
