"""The planner: what a run trains with where the user left it unset (``recipe: auto``, the default).

One rule per choice, each stated here and in the README:

* **resolution** (photos, ``image_size`` unset): the largest size on :data:`LADDER`, never above the
  images' native size, at which the time budget fits at least :data:`MIN_EPOCHS` epochs plus the
  final evaluation — timed on this machine with the model each size would train (a few steps on
  synthetic images). Without a budget: :data:`PHOTO_SIZE` (or the native size when smaller).
  When no size fits, the smallest is taken and the plan says so.
* **recipe**: ``small`` at a working size of at most :data:`SMALL_MAX` px, else ``photos``; for
  ``photos`` with airnet the stem's stride makes the groups see ~32 px; under :data:`TINY` px
  (8-px digits) airnet's learned conv stem replaces the whitening one.
* **batch size**: a power of two near 1/20 of the training images, 32..1,024, so that a small set
  still gets steps; with a time budget no larger than gives :data:`MIN_STEPS` steps to the images
  that three quarters of the budget train at the measured speed. The recipe's learning rates
  (stated for 1,024) scale with it (the head's linearly, Muon's with the square root).
* **TTA** (the recipes'): all views without a budget; with one, as many as 10% of it affords
  (flip x 1-px shifts, the flip alone, or none), decided in build when the evaluation is timed.
* **epochs** (no budget): enough for :data:`MIN_STEPS` steps, 8..50.
* **memory** (:func:`plan_memory`, every run): the activation memory per image is measured on the
  built model; a batch that does not fit :data:`MEMORY_FRACTION` of the available memory is split
  into micro-batches, and a run where even one image does not fit is refused before training.

Explicit values (flags, YAML, keyword arguments) always win: the planner only fills what is unset.
"""

from __future__ import annotations

import itertools
import math
import sys
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from recog.config import (FUSION_PREFIX, NO_RECIPE, RECIPE_AUTO, UNFREEZE, TrainConfig, is_fusion, parse_duration,
                           recipe_layer)
from recog.data import Probe, probe_dataset
from recog.device import autocast, eval_mode, resolve_device, resolve_precision
from recog.engine.budget import time_eval, time_steps
from recog.errors import ConfigError

LADDER = (32, 48, 64, 96, 128, 160, 192, 224, 256)
SMALL_MAX = 64  # px: at most this, the small-image recipe
TINY = 16  # px: under this, airnet's learned conv stem instead of the whitening one
PHOTO_SIZE = 128  # px: photos without a time budget (the fastai Imagenette leaderboard's size)
MIN_EPOCHS = 8  # the budget rule: the largest size that fits at least this many epochs
MIN_STEPS = 320  # no budget: at least this many optimizer steps (8..50 epochs)
REFERENCE_BATCH = 1024  # the small and photos recipes' learning rates are for this batch
MEMORY_FRACTION = 0.5  # of the available memory (RAM, or free GPU memory), for one step's activations
PLAIN = {"batch_size": 64, "epochs": 20}  # recipe none: the plain defaults
TRANSFER_RECIPE = "pretrained"  # recog/recipes/pretrained.yaml: from pretrained weights
PARTIAL_EPOCHS = 10  # transfer partial, epochs unset: the tail's epochs (a budget may fit fewer)


@dataclass(frozen=True)
class SizeChoice:
    size: int
    epochs_fit: float | None  # epochs the budget fits at this size (None: no budget)
    why: str
    train_s: float | None = None  # seconds per training image measured at this size


def plan(given: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The :data:`recog.config.Planner` of ``recipe: auto``: (recipe, planned values) from the
    values the user gave. Probes the data (file headers), and with a time budget times the model."""
    verbose = given.get("verbose", True)
    probe = probe_dataset(given.get("data", TrainConfig.data), given.get("data_root"),
                          given.get("val_fraction", TrainConfig.val_fraction), given.get("channels"),
                          without_test=given.get("final_eval", TrainConfig.final_eval) != "auto")
    transfer = plan_transfer(given, probe)
    if transfer is not None:
        why = transfer.pop("why", "")
        if verbose:
            depth = f" (last {transfer['unfreeze']} stages)" if transfer.get("unfreeze") else ""
            size = transfer.get("image_size", given.get("image_size"))
            print(f"transfer: {transfer['transfer']}{depth} from {transfer['pretrained']} at {size} px for images of "
                  f"{probe.side} px{f' ({why})' if why else ''}: the pretrained recipe", file=sys.stderr)
        return (TRANSFER_RECIPE if given.get("recipe", RECIPE_AUTO) == RECIPE_AUTO else given["recipe"]), transfer
    planned: dict[str, Any] = {}
    named = given.get("recipe", RECIPE_AUTO) != RECIPE_AUTO  # --recipe NAME: sized, not chosen (see recipe_for)
    size = given.get("image_size")
    choice = None
    if size is None and not named:
        choice = choose_size(given, probe)
        size = choice.size
        if size != probe.side:
            planned["image_size"] = size
    size = size or probe.side
    recipe = recipe_for(size, given)
    train_s = None
    if given.get("time_budget") is not None and recipe != NO_RECIPE and given.get("batch_size") is None:
        train_s = choice.train_s if choice is not None and choice.train_s else time_per_image(given, probe, size)[0]
    planned.update(sizing(recipe, given, probe, size, train_s, adapt_model=not named or recipe == "photos"))
    if verbose and choice is not None and choice.why:
        print(f"resolution: {size} px for images of {probe.side} px ({choice.why}): the {recipe} recipe",
              file=sys.stderr)
    return recipe, planned


def plan_transfer(given: dict[str, Any], probe: Probe) -> dict[str, Any] | None:
    """Start from pretrained weights? Given ``pretrained`` (or ``transfer`` probe/full): yes. Else, with
    ``transfer: auto``, for photos (images over :data:`SMALL_MAX` px) when the model is left to the
    planner (or is the weights' architecture), no recipe is named, and the default weights are installed:
    they are what every tool users know starts from. The planned values: the weights, the strategy
    (auto: ``probe``), their architecture, resolution and mean/std (what the user gave wins)."""
    from recog.models.pretrained import DEFAULT, SOURCES, source_of

    transfer = given.get("transfer", "auto")
    pretrained = given.get("pretrained")
    if transfer == "none" or given.get("weights") is not None:
        return None
    if pretrained is None:
        if transfer == "auto" and ((given.get("image_size") or probe.side) <= SMALL_MAX
                                   or given.get("recipe", RECIPE_AUTO) not in (RECIPE_AUTO, TRANSFER_RECIPE)
                                   or given.get("model") not in (None, SOURCES[DEFAULT].architecture)
                                   or given.get("head", "linear") != "linear" or not SOURCES[DEFAULT].installed):
            return None
        pretrained = DEFAULT
    source = source_of(pretrained)
    planned: dict[str, Any] = {"pretrained": pretrained, "transfer": transfer}
    if source is None and given.get("model") is None:  # a checkpoint file: the user names its architecture
        raise ConfigError(f"--pretrained {pretrained}: say which architecture the checkpoint is for with --model "
                          f"(timm:NAME or tv:NAME)")
    fusion = is_fusion(given.get("model") or "")
    if source is not None:
        if given.get("model") not in (None, source.architecture, FUSION_PREFIX + source.architecture):
            raise ConfigError(f"pretrained {source.name} is for {source.architecture}, not {given['model']} "
                              f"({FUSION_PREFIX}{source.architecture} takes it too)")
        planned.update({k: v for k, v in (("model", source.architecture), ("image_size", source.image_size),
                                          ("mean", list(source.mean)), ("std", list(source.std)))
                        if given.get(k) is None})
        if given.get("channels") is None:
            planned["channels"] = 3  # greyscale photos are read as RGB: the weights see three channels
    if fusion:  # the image model's weights fine-tune with the fusion layers (cached features would drop the text)
        planned["transfer"] = "full" if transfer == "auto" else transfer
    elif transfer in ("auto", "probe", "partial"):
        choice = _choose_strategy(given, probe, {**given, **planned})
        if transfer == "auto" and choice.transfer is None:
            if given.get("pretrained") is None:  # the planner's own idea: from scratch instead
                if given.get("verbose", True):
                    print(f"transfer: none, from scratch: {choice.why}", file=sys.stderr)
                return None
            choice = replace(choice, transfer="probe")  # weights the user named are used: the cheapest way
        if transfer == "auto":
            planned["transfer"] = choice.transfer
        if planned["transfer"] == "partial":
            planned["unfreeze"] = given.get("unfreeze") or choice.unfreeze or UNFREEZE
        if choice.size is not None and given.get("image_size") is None:
            planned["image_size"] = choice.size
        if transfer == "auto" or choice.size is not None:
            planned["why"] = choice.why
    if planned["transfer"] == "partial" and given.get("epochs") is None:
        planned["epochs"] = PARTIAL_EPOCHS
    return planned


def _choose_strategy(given: dict[str, Any], probe: Probe, planned: dict[str, Any]) -> Any:
    """:func:`recog.engine.strategy.choose`, timed on this machine when there is a time budget."""
    from recog.engine.strategy import FEATURE_SHARE, choose, fitting_size, time_costs
    from recog.models import create_model
    from recog.models.split import stage_count

    budget = given.get("time_budget")
    size = planned.get("image_size") or probe.side
    with torch.random.fork_rng():  # a throw-away model: the run's initialisation is untouched
        model = create_model(planned["model"], 2, 3, size, **planned.get("model_args", {}))
    try:
        depth = min(UNFREEZE, stage_count(model))
    except ConfigError:
        depth = 0  # a model that cannot be cut into stages: no partial fine-tune
    costs = None
    if budget is not None:
        device = resolve_device(given.get("device", TrainConfig.device))
        precision = resolve_precision(given.get("precision", "auto"), device, verbose=False)
        costs = time_costs(model, 3, size, device, precision)
    budget_s = parse_duration(budget) if budget else None
    choice = choose(probe, budget_s, costs, flip=given.get("flip", True), default_unfreeze=depth)
    if given.get("transfer", "auto") == "auto" or budget_s is None or given.get("image_size") is not None:
        return choice
    # a strategy the user named, under a budget: the resolution its feature pass affords
    fits = fitting_size(probe, budget_s, costs, size, given.get("flip", True), LADDER)
    if fits == size:
        return replace(choice, size=None, why="")
    return replace(choice, size=fits, why=f"{fits} px: the feature pass at {size} px would take over "
                                          f"{FEATURE_SHARE:.0%} of the budget")


def recipe_for(size: int, given: dict[str, Any]) -> str:
    """The recipe a run at ``size`` trains with: the one the user named; else ``small`` up to
    :data:`SMALL_MAX` px and ``photos`` above; ``none`` (the plain defaults) for a model the user
    chose other than the recipes' airnet, whose settings are tuned for it."""
    if given.get("recipe", RECIPE_AUTO) != RECIPE_AUTO:
        return given["recipe"]
    if given.get("model", "airnet") != "airnet":
        return NO_RECIPE
    return "small" if size <= SMALL_MAX else "photos"


def sizing(recipe: str, given: dict[str, Any], probe: Probe, size: int, train_s: float | None = None,
           adapt_model: bool = True) -> dict[str, Any]:
    """Batch size (and the learning rates scaled to it), epochs and (``adapt_model``) airnet's stem
    for the size, for what neither the recipe nor the user set (the plain defaults keep their batch
    of 64). ``train_s``: seconds per training image measured at ``size``, for a time budget."""
    layer = recipe_layer(recipe, given)
    values = {**layer, **given}
    planned: dict[str, Any] = {}
    if recipe == NO_RECIPE:
        return planned
    if adapt_model and values.get("model", TrainConfig.model) == "airnet" and "model_args" not in given:
        if size > SMALL_MAX:
            planned["model_args"] = {**values.get("model_args", {}), "stem_stride": stem_stride(size)}
        elif size < TINY:  # too few 2x2 patches to whiten: the learned stem (digits: 98.3% vs 97.5%)
            planned["model_args"] = {**values.get("model_args", {}), "stem": "conv"}
    batch = values.get("batch_size")
    if batch is None:
        batch = batch_for(probe.train)
        if train_s is not None:  # a budget that trains few images: a smaller batch, for enough steps
            batch = min(batch, budget_batch(parse_duration(given["time_budget"]), train_s))
        planned["batch_size"] = batch
        if "lr" not in given and "lr" in layer:
            planned["lr"] = round(values["lr"] * batch / REFERENCE_BATCH, 6)
        if "muon_lr" not in given and "muon_lr" in layer:
            planned["muon_lr"] = round(values["muon_lr"] * math.sqrt(batch / REFERENCE_BATCH), 6)
    if values.get("epochs") is None and values.get("steps") is None and values.get("time_budget") is None:
        planned["epochs"] = epochs_for(math.ceil(probe.train / batch))
    return planned


def stem_stride(size: int) -> int:
    """airnet on photos: s x s patches so that the groups see ~32 px (1 at small sizes)."""
    return 1 if size <= SMALL_MAX else max(2, round(size / 32))


def batch_for(train_images: int) -> int:
    """A power of two near 1/20 of the training images, 32..1,024."""
    return int(min(REFERENCE_BATCH, max(32, 2 ** math.floor(math.log2(max(1, train_images / 20))))))


def budget_batch(seconds: float, train_s: float) -> int:
    """The batch that gives :data:`MIN_STEPS` steps to the images three quarters of the budget
    train (the rest: set-up and evaluation), a power of two, at least 32."""
    images = 0.75 * seconds / train_s
    return int(max(32, 2 ** math.floor(math.log2(max(1.0, images / MIN_STEPS)))))


def epochs_for(steps_per_epoch: int) -> int:
    return int(min(50, max(8, math.ceil(MIN_STEPS / max(1, steps_per_epoch)))))


def ladder(native: int) -> list[int]:
    """The sizes to consider, largest first, never above the native size (which is one when small)."""
    sizes = [s for s in LADDER if s <= native]
    return sorted(sizes or [native], reverse=True)


def choose_size(given: dict[str, Any], probe: Probe) -> SizeChoice:
    """The working resolution by the stated rule (module docstring)."""
    if probe.side <= SMALL_MAX:
        return SizeChoice(probe.side, None, "")
    budget = given.get("time_budget")
    if budget is None:
        size = max(s for s in ladder(probe.side) if s <= PHOTO_SIZE) if probe.side >= LADDER[0] else probe.side
        return SizeChoice(size, None, f"{PHOTO_SIZE} px without a time budget" if size == PHOTO_SIZE else "")
    seconds = parse_duration(budget)
    epochs, timed = {}, {}
    for size in ladder(probe.side):
        train_s, eval_s = time_per_image(given, probe, size)
        epochs[size] = fit = epochs_in(seconds, probe, train_s, eval_s, 2 if given.get("tta", True) else 1)
        timed[size] = train_s
        if fit >= MIN_EPOCHS:
            return SizeChoice(size, fit, f"the largest size at which {budget} fits >= {MIN_EPOCHS} epochs: "
                                         f"~{fit:.0f} measured", train_s)
    size = min(epochs)
    return SizeChoice(size, epochs[size], f"{budget} fits no size {MIN_EPOCHS} epochs; the smallest, "
                                          f"{size} px, fits ~{epochs[size]:.1f}", timed[size])


def epochs_in(seconds: float, probe: Probe, train_s: float, eval_s: float, final_views: int) -> float:
    """Epochs (training + validation) that fit after the final evaluation and a 10% margin."""
    final = (probe.test or probe.val) * final_views * eval_s
    epoch = probe.train * train_s + probe.val * eval_s
    return max(0.0, 0.9 * seconds - final) / epoch


def time_per_image(given: dict[str, Any], probe: Probe, size: int, images: int = 32) -> tuple[float, float]:
    """(training, evaluation) seconds per image at ``size`` for the model and optimizer that size
    would train with: a warm-up step and two timed steps on synthetic images."""
    from recog.config import make_config
    from recog.engine.optim import make_optimizer, optimizer_options
    from recog.engine.step import Stepper
    from recog.models import create_model
    from recog.tasks import Classification

    recipe = recipe_for(size, given)
    cfg = make_config(**{**given, "recipe": recipe, "image_size": size, "verbose": False,
                         **sizing(recipe, given, probe, size)})
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device, verbose=False)
    model = create_model(cfg.model, 10, probe.channels, size, **cfg.model_args).to(device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    optimizer = make_optimizer(model, **optimizer_options(cfg))  # a throw-away model
    step = Stepper(model, model, optimizer, Classification(), device, precision)
    x = torch.randn(images, probe.channels, size, size, device=device).contiguous(memory_format=memory_format)
    batch = (x, torch.randint(0, 10, (images,), device=device))
    train_s = time_steps(step, itertools.repeat(batch), 2) / images  # the budget's own timing
    return train_s, time_eval(model, x, lambda: autocast(device, precision))


def fill_defaults(cfg: TrainConfig) -> TrainConfig:
    """Batch size and epochs still unset (``recipe: none``, or a config made without the planner)."""
    unset = {k: v for k, v in PLAIN.items() if getattr(cfg, k) is None}
    if "epochs" in unset and (cfg.steps is not None or cfg.time_budget is not None):
        unset.pop("epochs")
    return cfg.replace(**unset) if unset else cfg


# ---- memory ------------------------------------------------------------------------------------


def activation_bytes(model: nn.Module, channels: int, size: int, precision: str, device: torch.device) -> float:
    """Bytes per image that one training forward pass keeps for its backward (measured: every
    tensor autograd saves, counted once per storage, parameters left out), for this model, size
    and precision: the growth from 2 to 4 images, so what does not grow with the batch (autocast's
    low-precision copies of the weights) is not counted per image."""
    return (_saved_bytes(model, channels, size, precision, device, 4) -
            _saved_bytes(model, channels, size, precision, device, 2)) / 2


def _saved_bytes(model: nn.Module, channels: int, size: int, precision: str, device: torch.device,
                 images: int) -> int:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    x = torch.randn(images, channels, size, size, device=device)
    state = {k: v.clone() for k, v in model.state_dict().items()}  # batch-norm statistics are restored
    with eval_mode(model, train=True), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            autocast(device, precision):
        model(x)
    model.load_state_dict(state)
    return sum(seen.values())


def available_memory(device: torch.device) -> int:
    """Free GPU memory, or the RAM the kernel says is available (MemAvailable)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    from recog.data.files import total_memory

    return total_memory() // 2


@dataclass(frozen=True)
class MemoryPlan:
    per_image: float  # bytes of activations per training image
    limit: float  # bytes allowed for one step's activations
    micro_batch: int | None  # the micro-batch the plan needs (None: the whole batch fits)

    def describe(self, batch: int) -> str:
        chunk = self.micro_batch or batch
        return (f"{_gib(self.per_image * chunk * _OVERHEAD)} of activations per "
                f"{'micro-batch of ' if self.micro_batch else 'batch of '}{chunk} "
                f"(limit {_gib(self.limit)}, {MEMORY_FRACTION:.0%} of the available memory)")


_OVERHEAD = 1.5  # the backward pass's gradients and workspaces on top of the saved activations


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def plan_memory(per_image: float, batch: int, micro_batch: int | None, available: float,
                what: str) -> MemoryPlan:
    """Split the batch into micro-batches (a power of two) when one step's activations would not
    fit; refuse when one image does not (``what`` names the model and size in the message)."""
    limit = MEMORY_FRACTION * available
    need = per_image * _OVERHEAD
    if need > limit:
        raise ConfigError(f"{what}: one training image needs {_gib(need)} of activations, more than "
                          f"{MEMORY_FRACTION:.0%} of the {_gib(available)} available; use a smaller --image-size "
                          f"or a smaller model")
    chunk = micro_batch or batch
    if need * chunk <= limit:
        return MemoryPlan(per_image, limit, micro_batch)
    fits = 2 ** int(math.floor(math.log2(limit / need)))
    if micro_batch is not None:  # the user's micro-batch does not fit either
        raise ConfigError(f"{what}: a micro-batch of {micro_batch} needs {_gib(need * micro_batch)} of activations, "
                          f"more than {MEMORY_FRACTION:.0%} of the {_gib(available)} available; use "
                          f"--micro-batch {fits} or less")
    return MemoryPlan(per_image, limit, fits)

