"""The fast recipe's pieces: alternating flip, patch whitening, recipes, the time budget."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import recog
from recog.config import make_config, parse_duration
from recog.data.augment import BatchAugment, alternating_flip_mask
from recog.errors import ConfigError


def test_alternating_flip_flips_each_image_every_other_epoch() -> None:
    index = torch.arange(10_000)
    even, odd = alternating_flip_mask(index, 0), alternating_flip_mask(index, 1)
    assert torch.equal(even, ~odd)  # the other half in odd epochs
    assert torch.equal(even, alternating_flip_mask(index, 2))  # the same half again
    assert 0.47 < even.float().mean().item() < 0.53
    assert not torch.equal(even, alternating_flip_mask(index, 0, seed=1))


def test_alternating_flip_in_the_batch_augment_uses_dataset_indices() -> None:
    x = torch.arange(4 * 2 * 3, dtype=torch.float32).view(4, 1, 2, 3)
    aug = BatchAugment(flip=True, alternating_flip=True)
    index = torch.tensor([0, 1, 2, 3])
    y0 = aug(x, torch.Generator().manual_seed(0), index, epoch=0)
    y1 = aug(x, torch.Generator().manual_seed(5), index, epoch=1)
    mask = alternating_flip_mask(index, 0)
    for i in range(4):
        flipped, plain = x[i].flip(-1), x[i]
        assert torch.equal(y0[i], flipped if mask[i] else plain)
        assert torch.equal(y1[i], plain if mask[i] else flipped)


def test_whitening_stem_whitens_patches() -> None:
    torch.manual_seed(0)
    base = torch.randn(200, 3, 16, 16)
    images = base + 0.8 * base.roll(1, dims=1) + 0.5 * base.roll(1, dims=3)  # correlated channels and pixels
    model = recog.create_model("airnet", 10, 3, 16, stem="whiten", learn_scale=False, dirac=True)
    model.data_init(images)
    assert not model.whiten.weight.requires_grad
    with torch.no_grad():
        out = torch.nn.functional.conv2d(images, model.whiten.weight)[:, :12]  # one sign of each direction
    flat = out.permute(1, 0, 2, 3).reshape(12, -1)
    cov = flat @ flat.T / flat.shape[1]
    assert torch.allclose(cov, torch.eye(12), atol=0.05)


def test_recipe_defaults_sit_under_yaml_and_flags(tmp_path: Path) -> None:
    cfg = make_config(recipe="fast")
    assert (cfg.model, cfg.label_smoothing, cfg.alternating_flip, cfg.tta) == ("airnet", 0.2, True, True)
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("recipe: fast\nepochs: 3\n")
    cfg = make_config(yaml_file, batch_size=128)
    assert (cfg.epochs, cfg.batch_size, cfg.lr) == (3, 128, 1.5)
    with pytest.raises(ConfigError, match="did you mean 'fast'"):
        make_config(recipe="fsat")
    assert make_config(Path(__file__).parents[1] / "configs" / "cifar10-fast.yaml").recipe == "fast"
    four = make_config(Path(__file__).parents[1] / "configs" / "cifar10-4min.yaml")
    assert (four.recipe, four.optimizer, four.time_budget, four.freeze_stem_epochs) == ("fast", "muon", "4m", 1.5)
    assert four.model_args["widths"] == [64, 192, 192] and four.model_args["stem"] == "whiten"


def test_fast_recipe_runs_end_to_end_on_a_small_subset(cifar_png: Path, tmp_path: Path) -> None:
    run = recog.train(recipe="fast", data=str(cifar_png), epochs=3, batch_size=100, project=str(tmp_path),
                      verbose=False)
    assert run.report["tta"] is True and run.report["num_images"] == 100
    assert run.report["accuracy"] > 0.2  # 300 images, 3 epochs: well above chance (0.1)
    assert run.metrics[-1]["train_loss"] < run.metrics[0]["train_loss"]
    assert run.config.precision in ("bf16", "fp32")  # auto resolved for this machine


def test_parse_duration() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "5m", "1h30m", "2.5m")] == [90, 90, 300, 5400, 150]
    for bad in ("soon", "-5m", "0"):
        with pytest.raises(ConfigError, match="time_budget"):
            parse_duration(bad)


def test_time_budget_plans_the_steps_and_ends_the_schedule_with_them(tmp_path: Path, capsys) -> None:
    # how many steps fit depends on this machine's speed: the behaviour is asserted, not the time
    # (the arithmetic is tested with given step times below)
    run = recog.train(data="digits", model="airnet_small", epochs=500, time_budget="12s", project=str(tmp_path))
    err = capsys.readouterr().err
    assert "time budget 12s" in err and "epochs" in err
    assert 1 <= len(run.metrics) < 500
    assert (len(run.metrics) - 1) * 20 < run.steps <= len(run.metrics) * 20  # 20 steps per epoch, as re-planned
    assert run.metrics[-1]["lr"] < 0.05 * run.config.lr  # the schedule ended with the budget
    saved = (run.path / "config.yaml").read_text()
    assert "time_budget: 12s" in saved and "tta: false" in saved  # no recipe (airnet_small): no TTA
    # config.yaml is the first plan, written once; the re-plans after each epoch are the loop state's
    assert f"steps: {run.config.steps}\n" in saved


def test_budget_sizes_steps_from_measured_times() -> None:
    from recog.engine.budget import Timings, size_steps

    # 60 s: 5 s set-up, 1,000 final images x 2 views x 1 ms + 3 s = 5 s, 1.8 s margin -> 48.2 s for steps
    # of 0.1 s each plus 100 val images x 1 ms / 10 steps = 0.01 s: 438 steps
    plan, warnings = size_steps(60, Timings(0.1, 0.001, 5.0), steps_per_epoch=10, val_images=100,
                                final_images=1000, final_views=2)
    assert (plan.steps, plan.epochs, warnings) == (438, 44, [])
    assert plan.final_eval_s == pytest.approx(5.0) and plan.epoch_s == pytest.approx(1.1)
    # steps after a frozen stem are cheaper: 100 steps at 0.11 s, then (48.2 - 11) / 0.06 = 620 more
    frozen, _ = size_steps(60, Timings(0.1, 0.001, 5.0, frozen_step_s=0.05), 10, 100, 1000, 2, freeze_step=100)
    assert frozen.steps == 100 + 620
    # a budget smaller than the set-up still trains a few steps, with a warning that says so
    tiny, warnings = size_steps(4, Timings(0.1, 0.001, 5.0), 10, 100, 1000)
    assert tiny.steps == 10 and "too small" in warnings[0]


def test_budget_replans_from_the_measured_step_time_with_an_injected_clock() -> None:
    from recog.engine.budget import Budget, BudgetPlan, Timings

    now = [100.0]
    budget = Budget(60.0, started=100.0, verbose=False, clock=lambda: now[0])
    plan = BudgetPlan(steps=400, epochs=40, timings=Timings(0.1, 0.001, 5.0), epoch_s=1.1, final_eval_s=5.0,
                      steps_per_epoch=10, margin_s=1.8)
    assert budget.adopt(plan) == 400
    assert budget.deadline == pytest.approx(100.0 + 60.0 - 5.0 - 1.8)
    now[0] = 129.95  # 29.95 s gone, 23.25 s left before the deadline
    assert budget.replan(200, step_s=0.1, val_s=0.0, steps_per_epoch=10, planned=400) == 200 + 232
    assert budget.replan(200, step_s=0.1, val_s=1.0, steps_per_epoch=10, planned=400) == 200 + 116  # + 0.1 s/step
    now[0] = 200.0  # past the deadline: one more step at least
    assert budget.replan(200, step_s=0.1, val_s=0.0, steps_per_epoch=10, planned=400) == 201


def test_lookahead_pulls_weights_to_a_trailing_average_and_ends_on_it() -> None:
    from torch import nn

    from recog.engine.optim import Lookahead

    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    la = Lookahead(model, every=5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    la.update(model, decay=0.75)  # average = 0.75 * 0 + 0.25 * 1, and the weights jump there
    assert torch.allclose(model.weight, torch.full((1, 2), 0.25))
    assert Lookahead.decay_at(0, 100) == 0 and Lookahead.decay_at(100, 100) == pytest.approx(0.95**5)
    with torch.no_grad():
        model.weight.fill_(2.0)
    la.step(model, 3, 100)  # not a multiple of 5: untouched
    assert torch.allclose(model.weight, torch.full((1, 2), 2.0))
    la.finish(model)  # decay 1: the weights become the average
    assert torch.allclose(model.weight, torch.full((1, 2), 0.25))


def test_steps_end_training_and_the_schedule_inside_an_epoch(tmp_path: Path) -> None:
    run = recog.train(data="digits", model="airnet_small", steps=30, project=str(tmp_path), verbose=False,
                      schedule="linear", warmup_epochs=0)
    assert run.config.epochs == 2 and len(run.metrics) == 2  # 20 steps per epoch: 1.5 epochs
    assert run.metrics[-1]["lr"] == pytest.approx(0.0, abs=1e-9)  # the linear decay reached its end


def test_orthogonalize_gives_near_orthogonal_rows_for_any_shape() -> None:
    from recog.engine.optim import orthogonalize

    torch.manual_seed(0)
    for shape in ((64, 216), (256, 64)):  # wide (out < in*k*k) and tall
        g = torch.randn(shape) * torch.logspace(-1.5, 0.5, shape[1])  # condition number ~100
        x = orthogonalize(g, steps=5).float()
        small = min(shape)
        gram = x @ x.T if shape[0] <= shape[1] else x.T @ x
        singular = torch.linalg.svdvals(x)
        assert gram.shape == (small, small)
        # Newton-Schulz in bf16 squashes the singular values into about [0.68, 1.2], not exactly 1
        assert singular.max() < 1.25 and singular.min() > 0.6, (shape, singular.min(), singular.max())
        assert torch.sign(torch.trace(x.T @ g)) > 0  # a descent direction: aligned with g


def test_muon_groups_filters_and_keeps_scale_invariant_filters_at_a_fixed_norm() -> None:
    from recog.engine.optim import Muon, make_optimizer

    torch.manual_seed(0)
    model = recog.create_model("airnet", 10, 3, 16, stem="whiten", learn_scale=False, dirac=True)
    opt = make_optimizer(model, "muon", lr=0.1, weight_decay=1e-3, muon_lr=0.2, muon_momentum=0.6)
    assert isinstance(opt, Muon)
    muon_groups = [g for g in opt.param_groups if g["muon"]]
    filters = [p for g in muon_groups for p in g["params"]]
    assert len(filters) == 6 and all(p.ndim == 4 for p in filters)  # 3 groups x 2 convs; the whitening is frozen
    assert all(g["renormalize"] for g in muon_groups)  # every airnet conv feeds a batch-norm
    assert muon_groups[0]["lr_scale"] == pytest.approx(2.0)  # 0.2 / 0.1: the schedule scales both
    before = [p.detach().clone() for p in filters]
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    for g in opt.param_groups:
        g["lr"] = 0.1 * g["lr_scale"]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    for p, p0 in zip(filters, before):
        assert not torch.equal(p, p0)
        assert p.norm().item() == pytest.approx(len(p) ** 0.5, rel=0.05)  # renormalised, then one step
    # a conv without batch-norm after it (seednet) gets weight decay instead of the renormalisation
    seed = recog.create_model("seednet", 10, 3, 32)
    opt = make_optimizer(seed, "muon", lr=0.1, weight_decay=1e-3)
    assert [g["renormalize"] for g in opt.param_groups if g["muon"]] == [False]


def test_muon_trains_resumes_and_freezes_the_stem(tmp_path: Path) -> None:
    common = dict(recipe="none", data="digits", model="airnet", model_args={"stem": "whiten", "learn_scale": False},
                  optimizer="muon", schedule="linear", warmup_epochs=0, freeze_stem_epochs=1, seed=3,
                  project=str(tmp_path), verbose=False)
    run = recog.train(epochs=3, name="straight", **common)
    assert run.report["accuracy"] > 0.9
    assert not run.model.whiten.bias.requires_grad

    def interrupt_after_two(row: dict) -> None:
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    # interrupted after 2 epochs and resumed == 3 straight: momentum buffers and the freeze carry over
    with pytest.raises(KeyboardInterrupt):
        recog.train(epochs=3, name="resumed", on_epoch_end=interrupt_after_two, **common)
    resumed = recog.train(resume=tmp_path / "resumed", verbose=False)
    for (k, a), b in zip(run.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert not resumed.model.whiten.bias.requires_grad
    with pytest.raises(ConfigError, match="lr must be positive with optimizer muon"):
        recog.train(data="digits", optimizer="muon", lr=0, epochs=1, project=str(tmp_path), verbose=False)
    with pytest.raises(ConfigError, match="freeze_stem_epochs must not be negative, got -1"):
        recog.train(data="digits", freeze_stem_epochs=-1, epochs=1, project=str(tmp_path), verbose=False)
    with pytest.raises(ConfigError, match="seednet.*no stem"):
        recog.train(data="digits", model="seednet", freeze_stem_epochs=1, epochs=1, project=str(tmp_path),
                    verbose=False)


def test_time_budget_with_one_step_per_epoch_times_real_steps(tmp_path: Path, capsys) -> None:
    # batch 2,048 > the 1,438 training digits: one step per epoch; calibration cycles the loader
    # (before it did, it charged all set-up to one step and planned far too few)
    run = recog.train(data="digits", model="airnet_small", batch_size=2048, time_budget="8s", project=str(tmp_path))
    assert "time budget 8s" in capsys.readouterr().err
    assert len(run.metrics) == run.steps  # one step each


def test_micro_batches_add_up_to_the_batch_gradient() -> None:
    from recog.config import TrainConfig
    from recog.engine.step import Stepper
    from recog.tasks import Classification

    torch.manual_seed(0)
    x, y = torch.randn(10, 3, 8, 8), torch.randint(0, 4, (10,))
    grads = []
    for micro in (None, 4):  # 4 + 4 + 2: a short last chunk weighs less
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.Flatten(), torch.nn.Linear(180, 4))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        stepper = Stepper(model, model, optimizer, Classification(label_smoothing=0.1), torch.device("cpu"),
                          l1=1e-3, micro_batch=micro)
        loss, out = stepper((x, y))
        grads.append(([p.grad.clone() for p in model.parameters()], loss, out))
    (full, full_loss, full_out), (chunked, chunked_loss, chunked_out) = grads
    for a, b in zip(full, chunked):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(full_loss, chunked_loss)
    torch.testing.assert_close(full_out, chunked_out)
    with pytest.raises(ConfigError, match="micro_batch must be at least 1, got 0"):
        TrainConfig(micro_batch=0)


def test_training_in_micro_batches_learns_the_digits(tmp_path: Path) -> None:
    run = recog.train(data="digits", model="airnet_small", batch_size=64, micro_batch=24, epochs=3,
                      project=str(tmp_path), verbose=False)
    assert run.config.micro_batch == 24 and run.report["accuracy"] > 0.9


def test_training_reuses_freed_memory_instead_of_faulting_fresh_pages_each_step() -> None:
    import resource
    import sys

    from recog.memory import reuse_freed_memory

    def faults_of_five_64mib_tensors() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            torch.ones(16 * 2**20)  # 64 MiB, written, freed
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    with reuse_freed_memory() as applied:
        faults_of_five_64mib_tensors()  # the heap grows once
        with reuse_freed_memory() as nested:  # e.g. an evaluation in a training hook
            assert nested == applied
        reused = faults_of_five_64mib_tensors()  # still reused after the inner block ended
    if not sys.platform.startswith("linux") or not applied:
        pytest.skip("glibc's mallopt is not available here")
    fresh = faults_of_five_64mib_tensors()  # settings restored: every tensor is fresh pages again
    assert fresh > 5 * 16 * 2**20 // 4096 // 2  # about one fault per 4 KiB page
    assert reused < fresh / 10
    with reuse_freed_memory(enabled=False) as applied:
        assert not applied


def test_leaving_memory_reuse_gives_malloc_a_large_mmap_threshold_again() -> None:
    # glibc's dynamic mmap threshold is off for good after any mallopt: without setting the threshold
    # back, every 16 MiB malloc after a training was mmapped and faulted in again (4 of 4)
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's malloc only")
    script = Path(__file__).parent / "helpers" / "malloc_faults.py"

    def faulting(mode: str) -> list[bool]:
        out = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, check=True).stdout
        return [int(f) > 1000 for f in out.split()]  # a fresh 16 MiB block is ~4,096 faults

    fresh, after = faulting("fresh"), faulting("after")
    assert not fresh[-1] and not after[-1] and not after[-2]  # freed blocks are reused, as in a fresh process
    assert sum(after) <= sum(fresh)


# ---- progressive resizing -----------------------------------------------------------------------


def test_resize_sizes_grow_in_eighths_to_the_full_size_and_phases_share_the_ramp() -> None:
    from recog.engine.schedule import phase_ends, resize_sizes, size_at

    assert resize_sizes(32, None) == [32] and resize_sizes(32, 1.0) == [32]
    assert resize_sizes(32, 0.75) == [24, 28, 32]
    assert resize_sizes(128, 0.75, multiple=4) == [96, 112, 128]  # a strided stem's patch divides each size
    assert resize_sizes(8, 0.5) == [8]  # never below 16 px: tiny images are not resized
    assert phase_ends(100, 3, 0.5) == [25, 50, 100]
    assert [size_at(s, 100, [24, 28, 32], 0.5) for s in (0, 24, 25, 49, 50, 99)] == [24, 24, 28, 28, 32, 32]


def test_resize_keeps_the_memory_format_and_antialiases() -> None:
    from recog.data.augment import resize

    x = torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    out = resize(x, 24)
    assert out.shape == (2, 3, 24, 24) and out.is_contiguous(memory_format=torch.channels_last)
    assert resize(x, 32) is x
    stripes = torch.zeros(1, 1, 32, 32)
    stripes[..., ::2] = 1.0  # 1-px stripes: an antialiased half-size image is flat grey, not aliased stripes
    assert resize(stripes, 16).std() < 0.05


def test_budget_costs_each_resize_phase_at_its_own_step_time() -> None:
    from recog.engine.budget import Budget, Timings, size_steps, train_seconds

    timings = Timings(0.1, 0.0, 0.0, size_step_s=(0.05,))  # half the steps at half the cost
    assert train_seconds(timings, 0, 100, 100, resize_until=0.5) == pytest.approx(50 * 0.05 + 50 * 0.1)
    # 100 s for steps: n/2 x 0.05 + n/2 x 0.1 <= 100 - 3 (final evaluation) - 3 (margin) -> n = 1253
    plan, _ = size_steps(100, timings, steps_per_epoch=10, val_images=0, final_images=0)
    assert plan.steps == 1253 and plan.seconds(0, plan.steps, plan.steps) <= 94.0
    full, _ = size_steps(100, Timings(0.1, 0.0, 0.0), steps_per_epoch=10, val_images=0, final_images=0)
    assert full.steps == 940
    # the frozen stem's saving applies in proportion at every size
    frozen = Timings(0.1, 0.0, 0.0, frozen_step_s=0.08, size_step_s=(0.05,))
    assert train_seconds(frozen, 0, 100, 100, freeze_step=40) == pytest.approx(40 * 0.05 + 10 * 0.04 + 50 * 0.08)
    # a re-plan scales the plan's model of the remaining steps by the measured drift: the small phase ran
    # at 0.06 s/step where 0.05 was planned (1.2x), so the full-size steps are expected at 0.12 s
    now = [0.0]
    budget = Budget(100.0, started=0.0, verbose=False, clock=lambda: now[0])
    budget.adopt(plan)
    now[0] = 300 * 0.06
    steps = budget.replan(300, step_s=0.06, val_s=0.0, steps_per_epoch=10, planned=plan.steps, measured_from=0)
    assert steps < plan.steps
    assert 1.2 * plan.seconds(300, steps, steps) <= budget.deadline - now[0] < 1.2 * plan.seconds(300, steps + 2,
                                                                                                    steps + 2)
    assert "first estimate" in budget.spent(steps, 1.2 * plan.seconds(0, steps, steps), steps)
    assert "+20%" in budget.spent(steps, 1.2 * plan.seconds(0, steps, steps), steps)


def test_the_summary_counts_the_steps_the_loop_ran_in_its_own_epochs() -> None:
    """The partial fine-tune's epochs hold ceil(n / batch) steps where the image loader's drop the last
    partial batch: the summary's measured step time must divide by the steps that ran (it read +14% for
    the photos' 8-step epochs counted as 7)."""
    from types import SimpleNamespace

    from recog.api import _summary
    from recog.engine.budget import Budget, BudgetPlan, Timings
    from recog.engine.checkpoint import LoopState

    budget = Budget(60.0, started=0.0, verbose=False, clock=lambda: 10.0)
    budget.adopt(BudgetPlan(80, 10, Timings(0.05, 0.0, 0.0), 0.4, 0.0, steps_per_epoch=8))
    state = LoopState(total_steps=80, steps_per_epoch=8)
    state.history = [{"train_seconds": 0.4}] * 10  # 8 steps of 50 ms each
    training = SimpleNamespace(budget=budget, steps_per_epoch=7, run_dir="run")
    assert "50 ms first estimate, 50 ms measured (" in _summary({}, state, training)


def test_progressive_resizing_trains_small_then_full_size_and_says_so(cifar_png: Path, tmp_path: Path, capsys,
                                                                      monkeypatch) -> None:
    from recog.engine import step as step_module

    seen: list[int] = []
    original = step_module.resize
    monkeypatch.setattr(step_module, "resize", lambda x, size: seen.append(size) or original(x, size))
    run = recog.train(recipe="fast", data=str(cifar_png), epochs=4, batch_size=100, resize_from=0.75,
                      project=str(tmp_path))
    assert seen == [24] * 3 + [28] * 3 + [32] * 6  # 12 steps: a quarter at 24 px, a quarter at 28, the rest full
    assert "progressive resizing 24/28/32 px" in capsys.readouterr().err
    assert run.report["accuracy"] > 0.15
    with pytest.raises(ConfigError, match="resize_from"):
        make_config(resize_from=1.5)
    with pytest.raises(ConfigError, match="resize_until"):
        make_config(resize_until=0)


def test_progressive_resizing_under_a_time_budget_times_every_size(cifar_png: Path, tmp_path: Path, capsys,
                                                                   monkeypatch) -> None:
    from recog.engine import budget as budget_module

    plans = []
    adopt = budget_module.Budget.adopt
    monkeypatch.setattr(budget_module.Budget, "adopt",
                        lambda self, plan, warnings=(): plans.append(plan) or adopt(self, plan, warnings))
    run = recog.train(recipe="fast", data=str(cifar_png), time_budget="25s", batch_size=50, resize_from=0.5,
                      project=str(tmp_path))
    timings = plans[0].timings
    assert len(timings.size_step_s) == 4 and all(s > 0 for s in timings.size_step_s)  # 16, 20, 24, 28 px
    assert "step time:" in capsys.readouterr().out and run.steps >= 10


def test_a_model_too_small_for_the_first_size_is_refused_by_name(cifar_png: Path, tmp_path: Path) -> None:
    # five pooling groups fit 32 px (31, 15, 7, 3, 1) but not 16 px (15, 7, 3, 1, then a pool of 1x1)
    with pytest.raises(ConfigError, match="resize_from 0.5: airnet built for 32 px cannot take 16 px"):
        recog.train(data=str(cifar_png), model="airnet", model_args={"widths": [8, 8, 8, 8, 8]},
                    resize_from=0.5, epochs=1, project=str(tmp_path), verbose=False)


def test_the_final_evaluation_is_planned_again_for_the_unsure_share_validation_measured() -> None:
    from recog.engine.budget import Budget, Timings, size_steps

    plan, _ = size_steps(100, Timings(0.1, 0.001, 0.0), steps_per_epoch=10, val_images=0, final_images=1000,
                         final_views=2.5)  # 6 views, 30% unsure assumed: 2.5 s + 3 s
    budget = Budget(100.0, started=0.0, verbose=False, clock=lambda: 0.0)
    budget.adopt(plan)
    assert budget.deadline == pytest.approx(100 - 5.5 - 3.0)
    budget.expect_views(1 + 5 * 0.8)  # a short run's validation: 80% unsure -> 5 views, 5 s
    assert budget.plan.final_eval_s == pytest.approx(8.0) and budget.deadline == pytest.approx(100 - 8.0 - 3.0)


def test_a_commands_budget_counts_from_its_start_once() -> None:
    import time

    from recog.engine import budget

    with budget.counting_from_process_start():
        first = budget.budget_start()
        assert first <= time.perf_counter() - budget.process_age() + 0.5  # the process's start, not now
        assert abs(budget.budget_start() - time.perf_counter()) < 0.5  # the next run counts from its own call
    with budget.counting_from_process_start():
        pass  # a command that failed before its run counted
    assert abs(budget.budget_start() - time.perf_counter()) < 0.5


def test_progressive_resizing_with_cached_transfer_is_refused_by_name(cifar_png: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="resize_from 0.75: transfer probe trains on activations cached at one size"):
        recog.train(data=str(cifar_png), pretrained="efficientnet_lite0", transfer="probe", resize_from=0.75,
                    project=str(tmp_path), verbose=False)
    assert not any(tmp_path.iterdir())  # refused before a run folder was made
