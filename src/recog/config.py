"""The one schema for a training run: a dataclass, YAML files and ``--key value`` overrides.

The CLI flags, the YAML keys and the keyword arguments of :func:`recog.train` are the field
names of :class:`TrainConfig`, so there is one vocabulary. Unknown keys are rejected with the
closest valid name.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recog.errors import ConfigError, did_you_mean

OPTIMIZERS = ("sgd", "adamw", "muon")
SCHEDULES = ("onecycle", "cosine", "linear", "constant")
PRECISIONS = ("fp32", "bf16", "auto")
LOADERS = ("auto", "memory", "stream")
AUTO_AUGMENTS = ("randaugment", "trivialaugment")
PROGRESS = ("auto", "bar", "lines", "none")
HEADS = ("linear", "text")
FUSIONS = ("concat", "gated")  # how a fusion:NAME model mixes image and text features
MODALITIES = ("image", "text")
FUSION_PREFIX = "fusion:"  # --model fusion:NAME: NAME's image features fused with a text embedding
TRANSFERS = ("auto", "probe", "partial", "full", "none")  # how pretrained weights are used (recog.engine.probe,
# recog.engine.partial)
CACHED = ("probe", "partial")  # transfers that train on cached activations of a frozen trunk
UNFREEZE = 2  # transfer partial: the last stages that train, when neither the user nor the planner said
FINAL_EVALS = ("auto", "val", "off")  # "val" and "off": the test split is never read
CROP_SCALE = 0.35  # the smallest random-resized-crop area (torchvision uses 0.08; small images want more)
RECIPE_AUTO = "auto"
NO_RECIPE = "none"
DEFAULT_LR = {"sgd": 0.05, "adamw": 1e-3, "muon": 0.05}  # lr left unset: by optimizer
MAX_DIST_TIMEOUT_S = 7 * 24 * 3600
# --help: the options people change most, first; then every other option under its section, named by the
# section's first field in TrainConfig's order
COMMON_OPTIONS = ("data", "model", "pretrained", "transfer", "epochs", "time_budget", "batch_size", "lr", "image_size",
                  "precision", "project", "name")
SECTIONS = {"recipe": "the plan", "data_root": "data", "flip": "augmentation (batched on the training device)",
            "model_args": "model", "steps": "optimisation", "channels_last": "speed and reproducibility",
            "dist_timeout": "several processes (torchrun)", "tensorboard": "output and evaluation"}
LR_AUTO = "auto"  # lr: auto (flag, YAML, keyword, recog tune): the lr range test chooses it before training


def opt(default: Any = None, help: str | None = None, factory: Any = None,  # noqa: A002 - argparse's word
        recorded: bool = False) -> Any:
    """A config field with its one-line help (shown by ``recog train --help``). ``recorded``: a fact the
    run writes into its config.yaml (not a flag: a value given for it is replaced)."""
    meta: dict[str, Any] = {"help": help} if help else {}
    if recorded:
        meta["recorded"] = True
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Saved as ``config.yaml`` in each run folder."""

    recipe: str | None = opt(RECIPE_AUTO, "auto: chosen from the images and the time budget (small at <= 64 px, "
                                          "photos above); a named set of defaults under the YAML and flags "
                                          "(recog/recipes/NAME.yaml); none: the plain defaults")
    # data
    data: str = opt("digits", 'digits | cifar10 | cifar100 | mnist | fashion-mnist | PATH to an image folder '
                              'or to a CSV/JSONL label manifest')
    data_root: str | None = opt(None, 'an existing copy of a torchvision dataset (never downloads)')
    val_fraction: float = opt(0.1, 'carved from train (stratified) when the data has no val split')
    split_seed: int = opt(0, 'seed of that split: fixed, so seeds compare on the same images')
    final_eval: str = opt("auto", 'the final report on: auto (the test split if there is one, else val); '
                                  'val (the test split is never read: recog tune); off (no final report)')
    image_size: int | None = opt(None, 'image folders: side of the square input (default: most common size)')
    channels: int | None = opt(None, 'image folders: 1 or 3 (default: 1 if every image is greyscale)')
    mean: list[float] | None = opt(None, 'normalisation (default: measured on the training split)')
    std: list[float] | None = opt(None)
    loader: str = opt("auto", 'auto | memory | stream (memory when decoded data fits --memory-fraction of RAM)')
    memory_fraction: float = opt(0.25)
    workers: int | None = opt(None, 'streaming loader worker processes (default: the CPU count, up to 8)')
    threads: int | None = opt(None, 'CPU threads for training (default: measured on this machine: its usable cores, '
                                    'fewer when another process keeps them busy)')
    cache: bool = opt(True, 'keep decoded image folders in the cache folder for the next run')
    max_image_pixels: int | None = opt(None, "larger images are skipped as decompression bombs (Pillow's 89.5M)")
    allow_empty_classes: bool = opt(False, 'an empty class folder is a warning instead of an error')
    class_weights: str | None = opt(None, 'auto: loss weights inverse to class frequency')
    balanced_sampling: bool = opt(False, 'draw training images with equal probability per class')
    pos_weight: str | None = opt(None, 'multi-label: auto weighs each label\'s positives by negatives/positives')
    # augmentation, batched on the training device
    flip: bool = opt(False, 'random horizontal flip')
    alternating_flip: bool = opt(False, 'flip a fixed random half in even epochs and the other half in odd ones')
    translate: int = opt(0, 'random translation by up to this many pixels (reflect padding)')
    cutout: int = opt(0, 'zero a random square of this side')
    random_resized_crop: bool = opt(False, 'random crop of --crop-scale..1 of the area, resized back')
    crop_scale: float = opt(CROP_SCALE, 'random-resized-crop: the smallest area fraction')
    random_erasing: float = opt(0.0, 'probability of erasing a random rectangle per image')
    auto_augment: str | None = opt(None, 'randaugment | trivialaugment (per sample: streaming loader)')
    color_jitter: float = opt(0.0, 'brightness/contrast/saturation strength (per sample: streaming loader)')
    # model
    model: str = opt("airnet", 'airnet | airnet_small | seednet | resnet18 | tv:NAME | timm:NAME | fusion:NAME '
                               '(recog models lists them; photos default to a pretrained timm model)')
    model_args: dict[str, Any] = opt(None, 'builder keyword arguments', factory=dict)
    weights: str | None = opt(None, 'initial weights: a .safetensors or a plain state dict file')
    pretrained: str | None = opt(None, 'start from pretrained weights, offline: a name (recog models --pretrained: '
                                       'efficientnet_lite0 ships with recog) or a PATH to a timm/torchvision '
                                       'checkpoint; default: efficientnet_lite0 for photos (transfer auto)')
    transfer: str = opt("auto", 'auto | probe | partial | full | none: with pretrained weights, train a linear head on '
                                'cached features of the frozen backbone (probe), the last stages and the head on '
                                'cached activations (partial), or the whole network (full); auto: the planner times '
                                'them on this machine and picks for the budget; none: from scratch')
    unfreeze: int | None = opt(None, 'transfer partial: how many of the backbone\'s last stages train (default: '
                                     'planned for the budget)')
    head: str = opt("linear", 'linear | text: the classes as language, scored against prompt embeddings of their '
                              'names (recog[text]); predict and eval can then take other --classes')
    prompt: str = opt("a photo of a {class}|a blurry photo of a {class}|a close-up photo of the {class}",
                      'head text: prompt templates, separated by |, averaged per class')
    text_encoder: str | None = opt(None, 'head text: a local sentence-transformers folder (default: the MiniLM '
                                         'that recog[text] installs)')
    fusion: str | None = opt(None, 'model fusion:NAME: concat (an MLP over both, the default) | gated (a learned '
                                   'gate mixes image and text features)')
    modalities: str | None = opt(None, 'model fusion:NAME: image | text | image,text (the default): what it learns '
                                       'from (the ablations)')
    # optimisation
    epochs: int | None = opt(None, 'default: planned from the data (and the time budget)')
    time_budget: str | None = opt(None, 'e.g. 5m: measure the first steps and choose the epochs to fit')
    steps: int | None = opt(None, 'stop after this many optimizer steps (a partial last epoch; the LR ends there)')
    batch_size: int | None = opt(None, 'default: planned from the data and the memory the model needs per image')
    micro_batch: int | None = opt(None, 'forward/backward in chunks of this many images, one optimizer step per batch')
    optimizer: str = opt("sgd", 'sgd | adamw | muon (orthogonalised updates for conv filters, SGD for the rest)')
    lr: float | None = opt(None, "default: 0.05 for sgd (and muon's non-filter parameters), 0.001 for adamw")
    momentum: float = opt(0.9)
    nesterov: bool = opt(True)
    weight_decay: float = opt(5e-4)
    bias_lr_scale: float = opt(1.0, 'learning-rate multiplier for biases and normalisation parameters')
    muon_lr: float = opt(0.24, 'optimizer muon: peak learning rate of the conv filters (same schedule as lr)')
    muon_momentum: float = opt(0.6, 'optimizer muon: Nesterov momentum of the conv filters')
    backbone_lr_scale: float = opt(1.0, 'with pretrained weights: the backbone\'s learning rate as a fraction of the '
                                        'head\'s (discriminative learning rates; the pretrained recipe: 0.1)')
    freeze_stem_epochs: float | None = opt(None, "stop training the model's stem (airnet: whitening bias) after these")
    resize_from: float | None = opt(None, 'progressive resizing: the first steps train at this fraction of the image '
                                          'size (e.g. 0.75: 24 px for 32), growing in eighths to the full size')
    resize_until: float = opt(0.5, 'progressive resizing: the fraction of the training by which the full size is reached')
    l1: float = opt(0.0, 'L1 penalty on weights (conv and linear)')
    label_smoothing: float = opt(0.0)
    schedule: str = opt("onecycle", 'onecycle | cosine | linear | constant')
    warmup_epochs: float | None = opt(None, 'linear warm-up (default: 30% for onecycle, else 0)')
    final_lr: float = opt(0.0, 'fraction of lr reached at the end of linear and cosine decay')
    grad_clip: float | None = opt(None, 'clip gradient norm to this')
    lookahead: bool = opt(False, "airbench's lookahead: pull weights to a trailing average every 5 steps")
    patience: int | None = opt(None, 'early stopping: epochs without val_acc improvement')
    # speed and reproducibility
    precision: str = opt("auto", 'fp32 | bf16 (autocast on CPU and CUDA) | auto (bf16 where the hardware has it)')
    channels_last: bool = opt(True, 'NHWC tensors (faster convolutions on CPUs and GPUs)')
    compile: bool = opt(False, 'torch.compile the model')
    reuse_memory: bool = opt(True, 'CPU, Linux: keep freed memory for reuse while training (no per-step page faults)')
    device: str = opt("auto", 'auto | cpu | cuda | cuda:N')
    seed: int = opt(0)
    deterministic: bool = opt(False)
    # several processes (torchrun)
    dist_timeout: str = opt("5m", 'torchrun: how long a process waits for the others at a collective before it '
                                  'stops with an error naming its rank')
    sync_bn: bool = opt(False, 'torchrun on GPUs: batch-norm statistics over the global batch (SyncBatchNorm)')
    world_size: int = opt(1, 'the processes that trained the run', recorded=True)
    # output
    project: str = opt("runs", 'parent folder of run folders')
    name: str | None = opt(None, 'run folder name (auto-numbered when taken or unset)')
    tensorboard: bool = opt(False)
    progress: str = opt("auto", 'auto | bar | lines | none: a progress bar on a terminal; one line per epoch when '
                                'the output goes to a file (auto)')
    tta: bool | None = opt(None, 'test-time augmentation in the final evaluation (default: on with the small and '
                                 'photos recipes, fewer views or off when it would take over 10% of a time budget)')
    tta_translate: bool = opt(True, 'TTA also averages 1-px shifts (if trained with translate): 3x the views of flips alone')
    tta_confidence: float | None = opt(None, 'selective TTA: images whose plain prediction is at least this sure (top '
                                             'probability) keep it; only the others are seen in the other views')
    verbose: bool = opt(True)

    def __post_init__(self) -> None:
        self.validate()
        if self.lr is None:  # frozen: the default is filled in once, here
            object.__setattr__(self, "lr", DEFAULT_LR[self.optimizer])

    @property
    def budget_s(self) -> float | None:
        """``time_budget`` in seconds (None without one); checked when the config is made."""
        return None if self.time_budget is None else parse_duration(self.time_budget)

    def replace(self, **values: Any) -> TrainConfig:
        """A new config with ``values`` (checked again); this one is never changed."""
        return dataclasses.replace(self, **values)

    def validate(self) -> None:
        """Check values; raise :class:`ConfigError` naming the key and value."""
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("loader", self.loader, LOADERS)
        _choice("progress", self.progress, PROGRESS)
        _choice("final_eval", self.final_eval, FINAL_EVALS)
        _choice("head", self.head, HEADS)
        _choice("transfer", self.transfer, TRANSFERS)
        if self.pretrained is not None and self.weights is not None:
            raise ConfigError("give pretrained (a backbone to transfer from) or weights (a checkpoint to start from), "
                              "not both")
        if self.transfer in ("probe", "partial") and (is_fusion(self.model) or self.head == "text"):
            raise ConfigError(f"transfer {self.transfer} trains on cached features of a linear head; fusion models "
                              "and text heads train with transfer full")
        if self.threads is not None and (isinstance(self.threads, bool) or not 1 <= self.threads <= 1024):
            raise ConfigError(f"threads must be 1 to 1024, got {self.threads!r}")
        if self.unfreeze is not None and (isinstance(self.unfreeze, bool) or self.unfreeze < 1):
            raise ConfigError(f"unfreeze must be a whole number of stages, at least 1, got {self.unfreeze!r}")
        if any("{class}" not in t for t in self.prompt.split("|") if t.strip()) or not self.prompt.strip("| "):
            raise ConfigError(f"prompt: each template needs {{class}}, e.g. 'a photo of a {{class}}'; got {self.prompt!r}")
        if self.fusion is not None or self.modalities is not None:
            if not is_fusion(self.model):
                key = "fusion" if self.fusion is not None else "modalities"
                raise ConfigError(f"{key} is for image + text models: use --model fusion:{self.model} (and a "
                                  f"manifest with a text column)")
            if self.fusion is not None:
                _choice("fusion", self.fusion, FUSIONS)
            if self.modalities is not None:
                parse_modalities(self.modalities)
        if self.head == "text" and is_fusion(self.model):
            raise ConfigError("head text is for image models; a fusion model's classes come from its own head "
                              "(use --model " + self.model[len(FUSION_PREFIX):] + " --head text for labels as "
                              "language)")
        if self.auto_augment is not None:
            _choice("auto_augment", self.auto_augment, AUTO_AUGMENTS)
        if self.class_weights is not None:
            _choice("class_weights", self.class_weights, ("auto",))
        if self.pos_weight is not None:
            _choice("pos_weight", self.pos_weight, ("auto",))
        if not 0.0 < self.memory_fraction <= 1.0:
            raise ConfigError(f"memory_fraction must be in (0, 1], got {self.memory_fraction}")
        if not 0.0 < self.crop_scale <= 1.0:
            raise ConfigError(f"crop_scale must be in (0, 1], got {self.crop_scale}")
        if not 0.0 <= self.random_erasing <= 1.0:
            raise ConfigError(f"random_erasing is a probability in [0, 1], got {self.random_erasing}")
        if self.color_jitter < 0:
            raise ConfigError(f"color_jitter must not be negative, got {self.color_jitter}")
        if self.max_image_pixels is not None and self.max_image_pixels < 1:
            raise ConfigError(f"max_image_pixels must be positive, got {self.max_image_pixels}")
        if not 0 < self.backbone_lr_scale <= 1:
            raise ConfigError(f"backbone_lr_scale must be in (0, 1], got {self.backbone_lr_scale}")
        if self.bias_lr_scale <= 0:
            raise ConfigError(f"bias_lr_scale must be positive, got {self.bias_lr_scale}")
        if self.alternating_flip and not self.flip:
            raise ConfigError("alternating_flip needs flip: true")
        if self.time_budget is not None:
            parse_duration(self.time_budget)
        if parse_duration(self.dist_timeout, "dist_timeout") > MAX_DIST_TIMEOUT_S:  # torch's timer overflows
            raise ConfigError(f"dist_timeout must be at most 7 days, got {self.dist_timeout!r}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"workers must not be negative, got {self.workers}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise ConfigError(f"micro_batch must be at least 1, got {self.micro_batch}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps must be at least 1, got {self.steps}")
        for key in ("epochs", "batch_size"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.optimizer == "muon" and self.lr == 0:
            raise ConfigError("lr must be positive with optimizer muon: the filters' muon_lr follows lr's schedule "
                              "as a multiple of it; got lr 0")
        if self.freeze_stem_epochs is not None and self.freeze_stem_epochs < 0:
            raise ConfigError(f"freeze_stem_epochs must not be negative, got {self.freeze_stem_epochs}")
        if self.resize_from is not None and not 0.25 <= self.resize_from <= 1.0:
            raise ConfigError(f"resize_from is a fraction of the image size in [0.25, 1], got {self.resize_from}")
        if self.tta_confidence is not None and not 0.0 < self.tta_confidence <= 1.0:
            raise ConfigError(f"tta_confidence is a probability in (0, 1], got {self.tta_confidence}")
        if not 0.0 < self.resize_until <= 1.0:
            raise ConfigError(f"resize_until is a fraction of the training in (0, 1], got {self.resize_until}")
        for key in ("lr", "weight_decay", "l1", "momentum", "final_lr", "muon_lr", "muon_momentum"):
            if getattr(self, key) is not None and getattr(self, key) < 0:
                raise ConfigError(f"{key} must not be negative, got {getattr(self, key)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels}")
        if self.image_size is not None and self.image_size < 4:
            raise ConfigError(f"image_size must be at least 4, got {self.image_size}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"patience must be at least 1, got {self.patience}")
        if self.translate < 0 or self.cutout < 0:
            raise ConfigError("translate and cutout must not be negative")
        if (self.mean is None) != (self.std is None):
            raise ConfigError("give both mean and std, or neither")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ConfigError(f"std values must be positive, got {self.std}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def is_fusion(model: str) -> bool:
    """``fusion:NAME``: an image + text model."""
    return model.startswith(FUSION_PREFIX)


def parse_modalities(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``image``, ``text`` or ``image,text`` as a tuple in that order; anything else names the value."""
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    if not items or any(v not in MODALITIES for v in items) or len(set(items)) != len(items):
        raise ConfigError(f"modalities must be image, text or image,text; got {value!r}")
    return tuple(m for m in MODALITIES if m in items)


def parse_duration(text: str | float | int, key: str = "time_budget") -> float:
    """Seconds from ``90``, ``90s``, ``5m``, ``1.5h`` or ``1h30m``; raises naming the value."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m)?\s*(?:(\d+(?:\.\d+)?)\s*s?)?\s*",
                             text.lower())
        if not parts or not any(parts.groups()):
            raise ConfigError(f"{key}: cannot read {text!r} as a duration (examples: 90s, 5m, 1h30m)")
        h, m, s = (float(g) if g else 0.0 for g in parts.groups())
        seconds = h * 3600 + m * 60 + s
    if seconds <= 0:
        raise ConfigError(f"{key} must be positive, got {text!r}")
    return seconds


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def check_keys(keys: typing.Iterable[str], where: str) -> None:
    valid = set(field_names())
    for key in keys:
        if key not in valid:
            hint = did_you_mean(key.replace("-", "_"), valid, cutoff=0.5)
            raise ConfigError(f"unknown config key {key!r} in {where}{hint}")


@functools.cache
def _field_types() -> dict[str, Any]:
    # cached: get_type_hints evaluates every annotation anew, and coerce asks once per key
    return typing.get_type_hints(TrainConfig)


def unwrap_optional(hint: Any) -> Any:
    """``X | None`` -> ``X``; other hints unchanged."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def coerce(key: str, value: Any) -> Any:
    """Convert a YAML or CLI value to the field's type, or raise naming the key."""
    if value is None:
        return None
    target = unwrap_optional(_field_types()[key])
    target_origin = typing.get_origin(target) or target
    try:
        if target_origin is bool:
            if isinstance(value, str):
                low = value.lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if target_origin is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if target_origin is float:
            return float(value)
        if target_origin is str:
            return str(value)
        if target_origin is list:
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split()]
            return [float(v) for v in value]
        if target_origin is dict:
            if not isinstance(value, dict):
                raise ValueError(value)
            return dict(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: cannot use {short(value)} as {getattr(target, '__name__', target)}") from None
    return value


MAX_NODES = 100_000  # values a config file may expand to, aliases counted as often as they are used


def _expanded_size(node: Any, memo: dict[int, int]) -> int:
    """How many values the YAML node graph holds once every alias is expanded (each node counted once
    per use; shared nodes are sized once)."""
    if node is None:
        return 0
    if id(node) not in memo:
        import yaml

        if isinstance(node, yaml.SequenceNode):
            memo[id(node)] = 1 + sum(_expanded_size(child, memo) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            memo[id(node)] = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
        else:
            memo[id(node)] = 1
    return memo[id(node)]


def short(value: Any, limit: int = 120) -> str:
    """A value as an error message shows it: its repr, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        size = _expanded_size(yaml.compose(text, Loader=yaml.SafeLoader), {})
        if size > MAX_NODES:  # "billion laughs": a few lines whose aliases (*name) expand to gigabytes
            raise ConfigError(f"{path} expands to {size:,} YAML values through its aliases (*name); a config "
                              f"has at most {MAX_NODES:,}")
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file (not UTF-8): a config is YAML text") from None
    except RecursionError:
        raise ConfigError(f"{path} is nested too deeply to be a config") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(loaded).__name__}")
    check_keys(loaded, str(path))
    return loaded


RECIPES_DIR = Path(__file__).parent / "recipes"


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_values(name: str | None) -> dict[str, Any]:
    """The recipe's values (none for ``none``, unset or ``auto``: auto is decided by the planner)."""
    if name in (None, NO_RECIPE, RECIPE_AUTO):
        return {}
    path = RECIPES_DIR / f"{name}.yaml"
    if not path.is_file():
        hint = did_you_mean(name, list_recipes())
        raise ConfigError(f"unknown recipe {name!r}{hint} (known: {', '.join(list_recipes())})")
    return load_yaml(path)


_MODEL_KEYS = ("model_args", "freeze_stem_epochs")  # a recipe's values that belong to its model
_OPTIMIZER_KEYS = ("lr", "momentum", "nesterov", "weight_decay", "bias_lr_scale")  # ... and to its optimizer


def recipe_layer(recipe: str | None, given: dict[str, Any]) -> dict[str, Any]:
    """The recipe's values under what the user ``given``: without its settings of its model when the
    user chose another model, nor of its optimizer when the user chose another optimizer (the fast
    recipe's lr of 1.5 is for SGD on airnet's scaled head, not for AdamW)."""
    values = recipe_values(recipe)
    for keys, key in ((_MODEL_KEYS, "model"), (_OPTIMIZER_KEYS, "optimizer")):
        if key in given and key in values and given[key] != values[key]:
            values = {k: v for k, v in values.items() if k not in keys}
    return values


# the planner: (the values the user gave) -> (recipe name, planned values); it chooses the recipe
# for ``recipe: auto`` and sizes what a named recipe leaves unset
Planner = typing.Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]


def config_and_overrides(config: Any, overrides: dict[str, Any]) -> tuple[str | os.PathLike | None, dict[str, Any]]:
    """What the API's ``config`` argument may be: a YAML file's path, a :class:`TrainConfig` (its values
    that differ from the defaults count as given, as keywords would) or a dict of config keys. Returns
    the path (or None) and the keywords, those given explicitly winning."""
    if config is None or isinstance(config, (str, os.PathLike)):
        return config, overrides
    if isinstance(config, TrainConfig):
        default = TrainConfig()
        given = {f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(config, f.name) != getattr(default, f.name)}
    elif isinstance(config, dict):
        given = dict(config)
    else:
        raise ConfigError(f"config must be a YAML file's path, a recog.TrainConfig or a dict of config keys, "
                          f"not {type(config).__name__}")
    return None, {**given, **{k: v for k, v in overrides.items() if v is not None}}


def make_config(config: str | os.PathLike | None = None, plan: Planner | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the recipe (and what ``plan`` chose for ``recipe: auto``), then the YAML file,
    then overrides (keys whose value is None are left out): what the user gives always wins."""
    from_file = load_yaml(config) if config is not None else {}
    check_keys(overrides, "arguments")
    given = {**from_file, **{k: v for k, v in overrides.items() if v is not None}}
    if given.get("lr") == LR_AUTO:  # recog train and tune run the range test first (lr_is_auto) and give a
        given.pop("lr")  # number; anything else (the range test itself) starts from the optimizer's default
    recipe = given.get("recipe", RECIPE_AUTO)  # an old config.yaml's ``recipe: null`` is no recipe
    planned: dict[str, Any] = {}
    if recipe not in (None, NO_RECIPE) and plan is not None:  # auto, or a named recipe to size
        given = {k: coerce(k, v) for k, v in given.items()}
        TrainConfig(**given)  # bad values are reported before the planner reads the data
        recipe, planned = plan({**given, "recipe": recipe})
    values = {**recipe_layer(recipe, given), **planned, **given, "recipe": recipe}
    return TrainConfig(**{k: coerce(k, v) for k, v in values.items()})


def lr_is_auto(config: str | os.PathLike | None, overrides: dict[str, Any]) -> bool:
    """Whether ``lr: auto`` was asked for, by a keyword (flag) or, when none gives lr, by the YAML file."""
    lr = overrides.get("lr")
    if lr is None and config is not None:
        lr = load_yaml(config).get("lr")
    return lr == LR_AUTO


def save_yaml(cfg: TrainConfig, path: Path) -> None:
    import yaml

    from recog.fileio import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
