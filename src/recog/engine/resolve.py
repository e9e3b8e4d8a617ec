"""The planner's second stage: every decision about a run that needs its data or this machine, made
into one resolved config before anything is built (:mod:`recog.engine.plan` is the first stage: the
recipe, resolution, batch and epochs from the file headers and the budget).

Decided here: the data path, normalisation statistics, precision, workers, pixel limit, world size,
fusion arguments, micro-batches (the activation memory measured on a throw-away model), the steps,
the warm-up, test-time augmentation and the run's folder and name. Under a time budget, the steps and
TTA are timed on the built run (its real loader, augmentation and loss; the timed steps are undone)
by :func:`plan_budget`. :func:`commit` then writes ``config.yaml`` and the weights' metadata once;
nothing rewrites them while training (a budget's re-plans live in the loop state, ``state.pt``).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from recog.config import CACHED, UNFREEZE, TrainConfig, is_fusion, save_yaml
from recog.data import Dataset, Normalize, channel_stats, list_sources
from recog.data.files import total_memory
from recog.data.image import DEFAULT_MAX_PIXELS
from recog.data.loader import batches_per_epoch
from recog.data.stream import default_workers, make_loader
from recog.device import autocast, eval_mode, resolve_device, resolve_precision
from recog.engine import distributed as dist
from recog.engine.budget import expected_views, time_eval
from recog.engine.distributed import is_main
from recog.engine.plan import MEMORY_FRACTION, MemoryPlan, _gib, activation_bytes, available_memory, fill_defaults, plan_memory
from recog.engine.schedule import epochs_to_steps
from recog.errors import ConfigError
from recog.fileio import check_folder, next_run_dir
from recog.inference import tta_views
from recog.models import create_model, head
from recog.models.pretrained import load_pretrained
from recog.report import write_skipped
from recog.runs import CONFIG, SKIPPED, run_data, weights_meta
from recog.weights import read_weights

if TYPE_CHECKING:
    from recog.engine.build import Training

THREAD_BATCH = 128  # images per step when the thread count is timed, at most ...
THREAD_PIXELS = THREAD_BATCH * 32 * 32  # ... and no more pixels than 128 CIFAR-sized images: at 224 px two
#   images hold as much parallel work per layer, and a batch of 32 there had taken 14 s of a 1-minute budget
TTA_RECIPES = ("small", "photos", "pretrained")  # ``tta`` unset: on with these recipes (as a time budget affords), else off


@dataclass
class Prepared:
    """What the decisions produced besides the config: the data, and facts build and fit use."""

    data: Dataset
    device: torch.device
    run_dir: Path
    memory: MemoryPlan
    started: float  # when planning began (a time budget counts from here)
    empty_text: torch.Tensor | None = None  # a fusion model's embedding of the empty text
    initial: dict[str, torch.Tensor] | None = None  # --weights: the state dict to start from, read once


def resolve(cfg: TrainConfig, saved: dict[str, Any] | None = None, run_dir: Path | None = None,
            planning_s: float = 0.0) -> tuple[TrainConfig, Prepared]:
    """The resolved config of a run and its data, read once. ``saved``: the training state of a run
    to resume (its config is already resolved: only what this machine decides is decided again).
    ``planning_s``: what the first stage took (timing sizes), counted in a time budget."""
    started = time.perf_counter() - planning_s
    device = dist.device_for(resolve_device(cfg.device))
    cfg = fill_defaults(cfg)
    if run_dir is None:
        check_folder(cfg.project, "project")  # before the data is loaded, not after minutes of decoding
    check_batch_memory(cfg)
    if cfg.data not in list_sources() and cfg.data.strip() and Path(cfg.data).expanduser().exists():
        cfg = cfg.replace(data=str(Path(cfg.data).expanduser().resolve()))  # a path: recorded absolute, for eval
    ds = dist.in_turns(lambda: run_data(cfg, cfg.image_size, cfg.channels, device))  # rank 0 fills the cache
    if cfg.mean is not None and not len(cfg.mean) == len(cfg.std) == ds.channels:
        raise ConfigError(f"mean and std need one value per channel: the images have {ds.channels}, "
                          f"got mean {list(cfg.mean)} and std {list(cfg.std)}")
    mean, std = (cfg.mean, cfg.std) if cfg.mean is not None else measure_stats(ds)
    cfg = cfg.replace(precision=resolve_precision(cfg.precision, device, cfg.verbose and is_main()),
                      mean=mean, std=std, image_size=ds.image_size, channels=ds.channels,
                      workers=default_workers() if cfg.workers is None else cfg.workers,
                      max_image_pixels=cfg.max_image_pixels or DEFAULT_MAX_PIXELS, world_size=dist.world_size())
    cfg, empty_text = _fusion_inputs(cfg, ds)
    _describe(ds, cfg)
    probe = _probe_model(cfg, ds)
    if cfg.transfer == "partial":
        from recog.models.split import split_model

        cfg = cfg.replace(unfreeze=cfg.unfreeze or UNFREEZE)
        split_model(probe, cfg.unfreeze)  # a model that cannot be cut, or too deep a cut, is refused here
    if cfg.resize_from is not None and cfg.transfer in CACHED:
        raise ConfigError(f"resize_from {cfg.resize_from}: transfer {cfg.transfer} trains on activations cached at one "
                          f"size; use --transfer full or leave resize_from unset")
    _check_sizes(cfg, probe, ds.channels)
    if cfg.freeze_stem_epochs is not None and not hasattr(probe, "freeze_stem"):
        raise ConfigError(f"freeze_stem_epochs: model {cfg.model!r} has no stem to freeze (airnet has)")
    initial = None  # the weights to start from, read (and refused) before a run folder exists
    if saved is None and cfg.weights:
        initial = read_weights(cfg.weights)[0]
    elif saved is None and cfg.pretrained:
        taken, _ = load_pretrained(probe, cfg.pretrained, head(probe)[0])
        initial = {k: v for k, v in probe.state_dict().items() if k in set(taken)}
    cfg, memory = _plan_memory(cfg, probe, ds, device)
    cfg = _plan_threads(cfg, probe, ds, device)
    del probe
    if saved is None and (not cfg.budget_s or cfg.transfer in CACHED):  # a resumed run keeps its plan (its
        spe = batches_per_epoch(len(ds.train), cfg.batch_size)  # config.yaml); a time budget's: plan_budget
        steps = cfg.steps or (cfg.epochs or 1) * spe  # --steps wins over --epochs
        tta = cfg.recipe in TTA_RECIPES if cfg.tta is None else cfg.tta
        cfg = cfg.replace(steps=steps, epochs=math.ceil(steps / spe), tta=tta,
                          warmup_epochs=warmup_epochs(cfg, steps, spe))
    if run_dir is None:
        run_dir = dist.broadcast(next_run_dir(cfg.project, cfg.name) if is_main() else None)
    dist.mark(run_dir)  # a torchrun restart continues this folder
    return cfg.replace(name=run_dir.name), Prepared(ds, device, run_dir, memory, started, empty_text, initial)


def _check_sizes(cfg: TrainConfig, model: torch.nn.Module, channels: int) -> None:
    """Progressive resizing's smallest size must pass through the model (its pooling fixed at the full size)."""
    from recog.engine.schedule import training_sizes

    sizes = training_sizes(cfg)
    if len(sizes) == 1:
        return
    try:
        with torch.no_grad(), eval_mode(model):
            model(torch.zeros(1, channels, sizes[0], sizes[0]))
    except RuntimeError as exc:
        raise ConfigError(f"resize_from {cfg.resize_from}: {cfg.model} built for {cfg.image_size} px cannot take "
                          f"{sizes[0]} px images ({str(exc).splitlines()[0]}); use a larger resize_from") from None


def commit(training: Training, new: bool = True) -> None:
    """The last decisions of a ``new`` run (a time budget's steps and TTA, timed on the built run), then
    the resolved config as its ``config.yaml`` and the weights' metadata, written once before the first
    step, and the plan in one line (rank 0). A resumed run keeps the config.yaml it has."""
    t = training
    if t.budget is not None and t.config.transfer not in CACHED:  # these size their epochs after the feature pass
        plan_budget(t)
    t.meta = weights_meta(t.config, t.data, t.task)
    if not is_main():
        return
    if new:
        save_yaml(t.config, t.run_dir / CONFIG)
    if t.config.verbose:
        print(plan_line(t), file=sys.stderr)
    if t.data.skipped:
        write_skipped(t.run_dir / SKIPPED, t.data.skipped)


def plan_budget(training: Training) -> None:
    """A time budget: time real steps and an evaluation batch of the built run (undone afterwards);
    the budget then holds the plan and its deadline, and the config its steps, warm-up and TTA."""
    t = training
    cfg, ds = t.config, t.data
    stepper = t.stepper()
    stepper.set_lr(0.0)  # the calibration steps are undone anyway; a zero step keeps them harmless
    t.train_loader.set_epoch(0)
    eval_split = ds.eval_split[1] if ds.eval_split else ds.train
    eval_batch = next(iter(make_loader(eval_split, ds.channels, ds.image_size, 256, t.normalize, t.device,
                                       workers=cfg.workers, channels_last=cfg.channels_last)))[0]
    eval_image_s = time_eval(t.eval_net, eval_batch, lambda: autocast(t.device, cfg.precision))
    if cfg.tta is None:  # the recipes' TTA, as many views as 10% of the budget affords; none without a recipe
        final_images = len(eval_split) if ds.eval_split else 0
        tta, translate = (afford_tta(cfg, final_images * eval_image_s, t.budget.seconds)
                          if cfg.recipe in TTA_RECIPES else (False, cfg.tta_translate))
        cfg = cfg.replace(tta=tta, tta_translate=translate)
    views = expected_views(len(tta_views(cfg.flip, cfg.translate, cfg.tta_translate)) if cfg.tta else 1,
                           cfg.tta_confidence)
    freeze_step = epochs_to_steps(cfg.freeze_stem_epochs, t.steps_per_epoch)

    def freeze() -> Any:
        flags = [(p, p.requires_grad) for p in t.model.parameters()]
        t.model.freeze_stem()
        t.rewrap(stepper)

        def undo() -> None:
            for p, flag in flags:
                p.requires_grad_(flag)
            t.rewrap(stepper)
        return undo

    sizes = dict(steps_per_epoch=t.steps_per_epoch, val_images=len(ds.val) if ds.val is not None else 0,
                 final_images=len(eval_split) if ds.eval_split else 0, final_views=views)
    steps = t.budget.calibrate(stepper, t.model, t.optimizer, t.train_loader, eval_batch,
                               lambda: autocast(t.device, cfg.precision), sizes,
                               freeze if freeze_step is not None else None, freeze_step, eval_image_s=eval_image_s,
                               train_sizes=t.train_sizes[:-1], resize_until=cfg.resize_until)
    steps = dist.broadcast(steps)  # rank 0's timings decide: every rank must run the same steps
    cfg = dist.broadcast(cfg.replace(steps=steps, epochs=math.ceil(steps / t.steps_per_epoch),
                                     warmup_epochs=warmup_epochs(cfg, steps, t.steps_per_epoch)))
    t.config, t.state.total_steps = cfg, steps


def afford_tta(cfg: TrainConfig, view_s: float, budget_s: float, share: float = 0.1) -> tuple[bool, bool]:
    """(tta, tta_translate) for a recipe's TTA under a time budget: all views (flip x 1-px shifts)
    when the final evaluation with them takes at most ``share`` of the budget, else the flip alone,
    else none. ``view_s``: one view of the final evaluation's images."""
    for translate in (True, False):
        views = expected_views(len(tta_views(cfg.flip, cfg.translate, translate and cfg.tta_translate)),
                               cfg.tta_confidence)
        if views > 1 and views * view_s <= share * budget_s:
            return True, translate and cfg.tta_translate
    return False, cfg.tta_translate


def warmup_epochs(cfg: TrainConfig, total_steps: int, steps_per_epoch: int) -> float:
    """The warm-up as it will run, in epochs (unset: 30% of the steps for onecycle, else none)."""
    if cfg.warmup_epochs is not None:
        return cfg.warmup_epochs
    return int(0.3 * total_steps) / steps_per_epoch if cfg.schedule == "onecycle" else 0.0


def plan_line(training: Training) -> str:
    """The plan in one line a person reads: recipe, model, size, precision, batch, epochs, time, memory."""
    t = training
    cfg = t.config
    params = sum(p.numel() for p in t.model.parameters())
    stride = cfg.model_args.get("stem_stride", 1)
    budget = t.budget.plan if t.budget is not None else None
    epochs = t.state.total_steps / t.steps_per_epoch
    timing = (f" in {cfg.time_budget} (est. {budget.epoch_s:.3g} s/epoch + {budget.final_eval_s:.0f} s final "
              f"evaluation)" if budget is not None else "")
    steps = ("the head fitted on the features" if cfg.transfer == "probe" and cfg.pretrained else
             f"the last {cfg.unfreeze} stage{'s' if cfg.unfreeze != 1 else ''} and the head on cached activations, "
             f"batch {cfg.batch_size}, {'epochs sized after the feature pass' if t.budget else f'{epochs:.3g} epochs'}"
             if cfg.transfer == "partial" else
             f"batch {cfg.batch_size}, {epochs:.3g} epoch{'' if epochs == 1 else 's'}{timing}{_resizing(t)}")
    return (f"plan: {cfg.recipe or 'no'} recipe: {cfg.model} {params / 1e6:.2f} M params at {t.data.image_size} px"
            f"{f' (stem {stride}x{stride} patches)' if stride > 1 else ''}, {cfg.precision}"
            f"{', channels-last' if cfg.channels_last else ''}"
            f"{f', {cfg.threads} thread' + ('s' if cfg.threads != 1 else '') if cfg.threads else ''}, {steps}"
            f"{f' on {dist.world_size()} processes' if dist.world_size() > 1 else ''}; "
            f"{t.memory.describe(cfg.batch_size)}{_transfer_status(t)}")


def _resizing(t: Training) -> str:
    sizes = t.train_sizes
    if len(sizes) == 1:
        return ""
    return f", progressive resizing {'/'.join(map(str, sizes))} px (full by {t.config.resize_until:.0%} of the steps)"


def _transfer_status(t: Training) -> str:
    cfg = t.config
    if not cfg.pretrained:
        return ""
    if cfg.transfer not in CACHED:
        return f"; transfer {cfg.transfer} from {cfg.pretrained}"
    from recog.engine.partial import stage_label
    from recog.engine.probe import feature_status

    at = stage_label(cfg.unfreeze) if cfg.transfer == "partial" else "pooled"
    return f"; transfer {cfg.transfer} from {cfg.pretrained}: {feature_status(t, at)}"


# ---- decisions from the data ----------------------------------------------------------------------

def _fusion_inputs(cfg: TrainConfig, ds: Dataset) -> tuple[TrainConfig, torch.Tensor | None]:
    """A fusion model: every item's text embedded once (frozen encoder, cached), the embedding width and
    the fusion settings recorded in ``model_args`` (so the weights rebuild the model); (config, the empty
    text's embedding). Other models: a note when the data's texts go unused."""
    if not is_fusion(cfg.model):
        if ds.has_text and cfg.verbose and is_main():
            print(f"note: the manifest's text column is read by fusion models only (--model fusion:{cfg.model}); "
                  f"{cfg.model} learns from the images", file=sys.stderr)
        return cfg, None
    from recog.text import attach_text

    empty = attach_text(ds, cfg.text_encoder)
    args = {**cfg.model_args, "fusion": cfg.fusion or cfg.model_args.get("fusion", "concat"),
            "modalities": cfg.modalities or cfg.model_args.get("modalities", "image,text"), "text_dim": len(empty)}
    return cfg.replace(model_args=args, fusion=args["fusion"], modalities=args["modalities"]), empty


def _warn_flat(ds: Dataset, cfg: TrainConfig) -> None:
    """Training images that are each one flat colour (decoded in memory; up to 512 looked at) give a
    model nothing but their colour, and a net whose normalisation divides by their zero spatial
    variance can blow up in bf16 (measured: airnet's loss NaN at the third step, fine in fp32)."""
    images = getattr(ds.train, "images", None)
    if images is None or not len(images):
        return
    sample = images[:512].float()
    if bool((sample.flatten(2).std(2) == 0).all()):
        advice = " (if training fails, --precision fp32)" if cfg.precision == "bf16" else ""
        print(f"warning: every training image looked at ({len(sample)}) is one flat colour: a model can learn "
              f"only their colour{advice}", file=sys.stderr)


def _describe(ds: Dataset, cfg: TrainConfig) -> None:
    """The data summary, notes and an imbalance warning (rank 0)."""
    if not is_main():
        return
    if cfg.verbose:
        print(ds.summary(), file=sys.stderr)
        for note in ds.notes:
            print(f"note: {note}", file=sys.stderr)
    _warn_flat(ds, cfg)
    imbalance = ds.imbalance()
    if imbalance and cfg.class_weights is None and not cfg.balanced_sampling and cfg.pos_weight is None:
        big, small, ratio = imbalance
        fix = "--pos-weight auto" if ds.multilabel else "--class-weights auto or --balanced-sampling"
        if math.isinf(ratio):  # an empty class (--allow-empty-classes)
            print(f"warning: class {ds.classes[small]!r} has no training images; the model will never learn "
                  f"it", file=sys.stderr)
        elif ds.multilabel:
            print(f"warning: label {ds.classes[small]!r} is on 1 in {ratio + 1:.0f} training images; consider "
                  f"{fix}", file=sys.stderr)
        else:
            print(f"warning: class imbalance: {ds.classes[big]!r} has {ratio:.1f}x the training images of "
                  f"{ds.classes[small]!r}; consider {fix}", file=sys.stderr)


def measure_stats(ds: Dataset) -> tuple[list[float], list[float]]:
    """Channel mean/std of the training images (a sample of up to 2,000 decoded files when streaming)."""
    if ds.in_memory:
        return channel_stats(ds.train.images)
    index = torch.randperm(len(ds.train), generator=torch.Generator().manual_seed(0))[:2000]
    loader = make_loader(ds.train.subset(index), ds.channels, ds.image_size, 256,
                         Normalize([0.0] * ds.channels, [1 / 255] * ds.channels))
    images = torch.cat([b[0] for b in loader]).round().to(torch.uint8)  # the identity normalisation: raw pixels
    return channel_stats(images)


# ---- memory -------------------------------------------------------------------------------------

def check_batch_memory(cfg: TrainConfig, fraction: float = MEMORY_FRACTION) -> None:
    """Refuse an ``image_size`` at which one batch of input images alone (as floats) would take more
    than ``fraction`` of the machine's memory: a clear error now instead of the OOM killer later."""
    if cfg.image_size is None:
        return
    channels = cfg.channels or 3
    batch_bytes = cfg.batch_size * channels * cfg.image_size**2 * 4
    total = total_memory()
    if batch_bytes > fraction * total:
        raise ConfigError(f"image_size {cfg.image_size}: one batch of {cfg.batch_size} images takes "
                          f"{batch_bytes / 2**30:.1f} GiB as floats before any layer runs, more than "
                          f"{fraction:.0%} of this machine's {total / 2**30:.0f} GiB; use a smaller --image-size "
                          f"or --batch-size")


def _probe_model(cfg: TrainConfig, ds: Dataset) -> torch.nn.Module:
    """A throw-away model as the run will build it (its random initial values are of no use): the
    global random state is left as it was, so the real model's initialisation does not depend on it."""
    _check_parameters(cfg, ds)
    with torch.random.fork_rng(devices=[]):
        return create_model(cfg.model, len(ds.classes), ds.channels, ds.image_size, **cfg.model_args)


def _plan_threads(cfg: TrainConfig, model: torch.nn.Module, ds: Dataset, device: torch.device) -> TrainConfig:
    """CPU threads (:mod:`recog.engine.threads`): ``threads`` or ``OMP_NUM_THREADS`` as given; else a few
    training steps of the throw-away ``model`` timed at each candidate count, the fewest threads within
    10% of the fastest taken (``deterministic``: the usable cores, unmeasured, so that a rerun computes
    with the same count). Under torchrun each process keeps its share of the cores."""
    from recog.engine import threads

    if device.type != "cpu" or dist.world_size() > 1:
        return cfg
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
        return cfg
    if "OMP_NUM_THREADS" in os.environ:
        return cfg.replace(threads=torch.get_num_threads())
    cores = threads.usable_cores()
    counts = threads.candidates(cores)
    times: dict[int, float] = {}
    # sums split over another number of threads round differently: --deterministic keeps one count, the cores
    if len(counts) > 1 and not cfg.deterministic:
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        # a batch of the run's size up to THREAD_BATCH images or THREAD_PIXELS: parallel work as in training
        # (at 32 images, airnet's steps were too short to gain from a second thread, and the fast recipe
        # trained on one at batch 1,024), no more
        images = max(1, min(cfg.batch_size, THREAD_BATCH, THREAD_PIXELS // ds.image_size ** 2))
        x = torch.randn(images, ds.channels, ds.image_size, ds.image_size).contiguous(memory_format=fmt)
        state = {k: v.clone() for k, v in model.state_dict().items()}  # batch-norm statistics are restored

        def step() -> None:
            with eval_mode(model, train=True), autocast(device, cfg.precision):
                loss = model(x).float().logsumexp(1).mean()
            loss.backward()
            model.zero_grad(set_to_none=True)

        with torch.random.fork_rng(devices=[]):
            times = threads.measure(step, counts)
        model.load_state_dict(state)
    chosen = threads.pick(times) if len(times) > 1 else counts[0]
    torch.set_num_threads(chosen)
    if cfg.verbose and is_main() and len(times) > 1:
        print(f"threads: {threads.describe(chosen, times, cores)}", file=sys.stderr)
    return cfg.replace(threads=chosen)


def _check_parameters(cfg: TrainConfig, ds: Dataset) -> None:
    """A model whose weights, gradients and optimizer state alone would not fit in the memory is refused
    with the numbers before a byte of it is allocated (counted on the meta device): e.g. seednet, whose
    first fully connected layer grows with the image size, at 4,000 px."""
    try:
        with torch.device("meta"):
            shell = create_model(cfg.model, len(ds.classes), ds.channels, ds.image_size, **cfg.model_args)
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - a builder that cannot run on the meta device: built for real below
        return
    params = sum(p.numel() for p in shell.parameters())
    need = params * 4 * 4  # fp32 weights, their gradients and two optimizer moments
    available = available_memory(torch.device("cpu"))
    if need > MEMORY_FRACTION * available:
        raise ConfigError(f"{cfg.model} at {ds.image_size} px has {params / 1e6:,.2f} M parameters: {_gib(need)} with "
                          f"their gradients and optimizer state, over {MEMORY_FRACTION:.0%} of the {_gib(available)} "
                          f"available; give a smaller --image-size (the planner chooses one when it is left unset) "
                          f"or another --model")


def _plan_memory(cfg: TrainConfig, probe: torch.nn.Module, ds: Dataset,
                 device: torch.device) -> tuple[TrainConfig, MemoryPlan]:
    """Measure the activations per image on the throw-away ``probe`` model; micro-batches when a batch
    would not fit (said once)."""
    model = probe.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        per_image = activation_bytes(model, ds.channels, ds.image_size, cfg.precision, device)
    memory = plan_memory(per_image, cfg.batch_size, cfg.micro_batch, available_memory(device),
                         f"{cfg.model} at {ds.image_size} px, batch {cfg.batch_size}")
    if memory.micro_batch != cfg.micro_batch:
        if cfg.verbose and is_main():
            print(f"note: a batch of {cfg.batch_size} would not fit in memory: forward and backward run in "
                  f"micro-batches of {memory.micro_batch} (one optimizer step per batch)", file=sys.stderr)
        cfg = cfg.replace(micro_batch=memory.micro_batch)
    return cfg, memory
