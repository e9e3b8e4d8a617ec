"""Bit-identical before and after a refactor: three deterministic reference runs on digits.

Prints, for each configuration, the sha256 of the best and last weights' tensors (not their metadata,
which names the version) and of metrics.csv without its timing columns, then one JSON line. Run it on
the commit before a change and after it, and compare the JSON lines:

    git worktree add /tmp/before <commit> && PYTHONPATH=/tmp/before/src python benchmarks/refactor_check.py
    python benchmarks/refactor_check.py
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import tempfile
from pathlib import Path

TIMING = {"seconds", "train_seconds", "images_per_s"}
CONFIGS = {
    "sgd-airnet_small": dict(model="airnet_small", optimizer="sgd", flip=True, translate=1, epochs=3),
    "small-recipe": dict(recipe="small", epochs=3),
    "seednet-adamw-l1": dict(model="seednet", optimizer="adamw", l1=1e-5, class_weights="auto", epochs=3),
}


def tensors_sha(path: Path) -> str:
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for name, tensor in sorted(load_file(str(path)).items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def metrics_sha(path: Path) -> str:
    with path.open() as f:
        rows = [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]


def main() -> None:
    import recog

    print(f"recog from {Path(recog.__file__).parent}", file=sys.stderr)
    out = {}
    with tempfile.TemporaryDirectory() as project:
        for name, kwargs in CONFIGS.items():
            run = recog.train(data="digits", deterministic=True, seed=0, project=project, name=name, verbose=False,
                              **kwargs)
            out[name] = {"best": tensors_sha(run.path / "weights" / "best.safetensors"),
                         "last": tensors_sha(run.path / "weights" / "last.safetensors"),
                         "metrics": metrics_sha(run.path / "metrics.csv"),
                         "accuracy": run.report.get("accuracy")}
            print(name, out[name])
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
