"""Shared fixtures: a few hundred real CIFAR-10 images from ../shared/data, and digits runs."""

from __future__ import annotations

import csv
import os
import tarfile
from pathlib import Path

import pytest

@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never read or fill the user's ~/.cache/recog."""
    os.environ["RECOG_CACHE"] = str(tmp_path_factory.mktemp("recog_cache"))


@pytest.fixture(scope="session", autouse=True)
def _threads_as_torch_has_them() -> None:
    """Runs take torch's thread count instead of timing each count anew (a few steps in each of the
    suite's hundreds of runs); tests/test_threads.py measures with the variable removed."""
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))


SHARED_DATA = Path(os.environ.get("RECOG_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def extract_subset(archive: Path, dest: Path, per_class: dict[str, int]) -> Path:
    """The first ``per_class[split]`` images of each class of each split, streamed out of the tarball."""
    if not archive.is_file():
        pytest.skip(f"shared CIFAR-10 copy not found at {archive}: set RECOG_SHARED_DATA to the folder that "
                    f"holds cifar10-png.tar.gz (the project's ../shared/data) to run this test")
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) != 3 or parts[0] not in per_class:
                continue
            key = (parts[0], parts[1])
            if counts.get(key, 0) >= per_class[parts[0]]:
                continue
            counts[key] = counts.get(key, 0) + 1
            target = dest / member.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
    return dest


@pytest.fixture(scope="session")
def cifar_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CIFAR-10 (lossless PNG copy) subset: train/<class>/ 30 each, test/<class>/ 10 each."""
    return extract_subset(SHARED_DATA / "cifar10-png.tar.gz", tmp_path_factory.mktemp("cifar_png"),
                          {"train": 30, "test": 10})


@pytest.fixture(scope="session")
def cifar_jpg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CIFAR-10 (JPEG copy) subset: train/<class>/ 20 each, test/<class>/ 5 each."""
    return extract_subset(SHARED_DATA / "cifar10-jpg.tar.gz", tmp_path_factory.mktemp("cifar_jpg"),
                          {"train": 20, "test": 5})


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory):
    """One finished quick run on digits, shared by the eval/predict/load tests."""
    import recog

    project = tmp_path_factory.mktemp("runs")
    return recog.train(data="digits", model="airnet_small", epochs=6, project=str(project), verbose=False)


VEHICLES = {"airplane", "automobile", "ship", "truck"}


def manifest_rows(root: Path, split: str) -> list[dict[str, str]]:
    rows = []
    for path in sorted((root / split).glob("*/*.png")):
        cls = path.parent.name
        rows.append({"image": str(path.relative_to(root)), "labels": f"{cls};{'vehicle' if cls in VEHICLES else 'animal'}",
                     "split": split})
    return rows


def write_manifest(path: Path, rows: list[dict[str, str]], columns: tuple[str, ...] = ("image", "labels", "split")) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def manifest(cifar_png: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """labels.csv naming 300 training and 100 test images of the CIFAR-10 subset, two labels each, by
    paths relative to the manifest's own folder (``../cifar_png0/train/cat/…``)."""
    folder = tmp_path_factory.mktemp("manifest")
    rows = manifest_rows(cifar_png, "train") + manifest_rows(cifar_png, "test")
    for row in rows:
        row["image"] = os.path.relpath(cifar_png / row["image"], folder)
    return write_manifest(folder / "labels.csv", rows)


@pytest.fixture(scope="session")
def multilabel_run(manifest: Path, tmp_path_factory: pytest.TempPathFactory):
    import recog

    # 270 training images (30 held out for validation and the thresholds): AdamW gets there in 20 epochs
    return recog.train(data=str(manifest), model="airnet_small", epochs=20, batch_size=32, optimizer="adamw",
                       lr=3e-3, flip=True, translate=2, seed=0, project=str(tmp_path_factory.mktemp("ml_runs")),
                       verbose=False)
