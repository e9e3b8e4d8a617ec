"""Datasets: image folders (both shared CIFAR-10 copies), layouts, splits, bad files, missing data."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import recog
from recog.data import load_dataset, load_image
from recog.data.splits import stratified_split
from recog.errors import DataError

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_cifar_png_copy_loads_as_an_image_folder(cifar_png: Path) -> None:
    ds = load_dataset(str(cifar_png), val_fraction=0.1)
    assert ds.classes == CIFAR_CLASSES
    assert (ds.channels, ds.image_size) == (3, 32)
    assert len(ds.train) + len(ds.val) == 300 and len(ds.test) == 100
    assert torch.bincount(ds.val.labels).tolist() == [3] * 10  # stratified
    # pixel-exact: the first training image is the PNG itself
    first = sorted((cifar_png / "train" / "airplane").iterdir())[0]
    assert np.array_equal(load_image(first, 3, 32), np.asarray(Image.open(first)).transpose(2, 0, 1))


def test_cifar_jpeg_copy_trains_from_the_cli(cifar_jpg: Path, tmp_path: Path) -> None:
    from recog.cli import main

    rc = main(["train", "--data", str(cifar_jpg), "--model", "airnet_small", "--epochs", "2", "--project",
               str(tmp_path), "--no-verbose"])
    assert rc == 0
    run = recog.load(tmp_path / "train")
    assert run.classes == CIFAR_CLASSES and run.meta["image_size"] == 32


def test_flat_folder_is_split_by_val_fraction(tmp_path: Path, cifar_png: Path) -> None:
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for f in sorted((cifar_png / "train" / cls).iterdir())[:20]:
            (tmp_path / cls / f.name).write_bytes(f.read_bytes())
    a = load_dataset(str(tmp_path), val_fraction=0.25, split_seed=1)
    b = load_dataset(str(tmp_path), val_fraction=0.25, split_seed=1)
    assert a.classes == ["cat", "dog"] and a.test is None
    assert (len(a.train), len(a.val)) == (30, 10)
    assert torch.equal(a.val.images, b.val.images)  # seeded
    assert a.eval_split[0] == "val"


def test_hidden_folders_and_non_images_are_ignored_and_bad_images_skipped(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (10, 12), (i * 40, 0, 0)).save(root / cls / f"{i}.png")
    (root / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (10, 12)).save(root / ".ipynb_checkpoints" / "x.png")
    (root / "a" / ".DS_Store").write_bytes(b"\0\1")
    (root / "a" / "labels.csv").write_text("x,y\n")
    (root / "a" / "empty.jpg").write_bytes(b"")
    (root / "b" / "page.jpg").write_text("<html>not an image</html>")
    good = (root / "a" / "0.png").read_bytes()
    (root / "b" / "truncated.png").write_bytes(good[: len(good) // 2])
    ds = load_dataset(str(root), val_fraction=0.0)
    assert ds.classes == ["a", "b"]
    assert len(ds.train) == 8
    reasons = {Path(p).name: r for p, r in ds.skipped}
    assert set(reasons) == {"empty.jpg", "page.jpg", "truncated.png"}
    assert "empty" in reasons["empty.jpg"] and "not an image" in reasons["page.jpg"]
    run = recog.train(data=str(root), model="seednet", epochs=1, project=str(tmp_path / "runs"), verbose=False)
    assert "truncated.png" in (run.path / "skipped.csv").read_text()


def test_images_of_other_sizes_and_modes_are_resized_to_one_shape(tmp_path: Path) -> None:
    root = tmp_path / "data" / "train"
    for cls in ("x", "y"):
        (root / cls).mkdir(parents=True)
    Image.new("RGB", (40, 30), "red").save(root / "x" / "wide.png")
    Image.new("L", (16, 16), 128).save(root / "x" / "grey.png")
    Image.new("RGBA", (16, 16), (0, 0, 255, 0)).save(root / "y" / "clear.png")  # fully transparent -> white
    Image.new("P", (16, 16)).save(root / "y" / "palette.gif")
    ds = load_dataset(str(tmp_path / "data"), val_fraction=0.0, image_size=16)
    assert ds.train.images.shape == (4, 3, 16, 16)
    clear = ds.train.images[2]
    assert clear.min() == 255  # composited onto the white background
    grey, red = ds.train.images[0], ds.train.images[1]  # sorted file names: grey.png, wide.png
    assert (grey == 128).all()
    assert (red[0] == 255).all() and (red[1:] == 0).all()


def test_missing_split_structure_errors_name_the_folder(tmp_path: Path) -> None:
    (tmp_path / "test" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no train/ folder"):
        load_dataset(str(tmp_path))
    empty = tmp_path / "other"
    (empty / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=r"other/a holds no images"):
        load_dataset(str(empty))


def test_torchvision_dataset_missing_offline_gives_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(DataError, match=r"cifar10 was not found in --data-root .*--data digits"):
        load_dataset("cifar10", data_root=str(tmp_path))
    monkeypatch.setenv("RECOG_OFFLINE", "1")
    monkeypatch.setenv("RECOG_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="RECOG_OFFLINE"):
        load_dataset("mnist")


def test_mnist_loads_from_a_data_root_in_torchvision_layout(tmp_path: Path) -> None:
    """MNIST's idx files (not pickles), written from the digits scans, read through torchvision."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)

    def idx(path: Path, array: np.ndarray) -> None:
        header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        path.write_bytes(header + array.astype(np.uint8).tobytes())

    images = np.round(digits.images * 255 / 16)
    idx(raw / "train-images-idx3-ubyte", images[:1500])
    idx(raw / "train-labels-idx1-ubyte", digits.target[:1500])
    idx(raw / "t10k-images-idx3-ubyte", images[1500:])
    idx(raw / "t10k-labels-idx1-ubyte", digits.target[1500:])
    ds = load_dataset("mnist", data_root=str(tmp_path), val_fraction=0.1)
    assert (ds.channels, ds.image_size, len(ds.test)) == (1, 8, 297)
    assert len(ds.train) + len(ds.val) == 1500
    assert ds.classes[0].startswith("0")


def test_unknown_dataset_name_suggests_the_closest() -> None:
    with pytest.raises(DataError, match="Did you mean 'fashion-mnist'"):
        load_dataset("fashion_mnist")


def test_stratified_split_keeps_every_class_on_both_sides() -> None:
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 2)
    keep, held = stratified_split(labels, 0.2, seed=0)
    assert set(labels[held].tolist()) == {0, 1, 2} and set(labels[keep].tolist()) == {0, 1, 2}
    assert len(np.intersect1d(keep, held)) == 0 and len(keep) + len(held) == 15
