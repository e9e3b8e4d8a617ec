"""Image folders as users have them: bad files, every Pillow mode, caching, streaming, imbalance."""

from __future__ import annotations

import builtins
import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import recog
from recog.cli import main
from recog.data import load_dataset, load_image
from recog.data.files import decode_files
from recog.data.folder import scan_folder
from recog.data.image import ImageReadError, set_max_image_pixels
from recog.data.loader import Normalize
from recog.data.stream import SamplePolicy, make_loader
from recog.errors import DataError


def _png_bytes(color=(200, 30, 60), size=(12, 10), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


def _jpeg_bytes(color=(200, 30, 60), size=(16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def make_folder(root: Path, classes=("a", "b"), per_class=4, size=(12, 10)) -> Path:
    for ci, cls in enumerate(classes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", size, (40 * i, 100 * ci, 50)).save(root / cls / f"{i}.png")
    return root


# ---- bad files ----------------------------------------------------------------------------------


def test_each_kind_of_bad_file_is_skipped_with_its_reason(tmp_path: Path, capsys) -> None:
    root = make_folder(tmp_path / "data")
    (root / "a" / "zero.jpg").write_bytes(b"")
    jpeg = _jpeg_bytes()
    (root / "a" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    png = _png_bytes(size=(64, 64), mode="RGB")
    noisy = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(noisy, "PNG")
    png = noisy.getvalue()
    (root / "b" / "cut.png").write_bytes(png[: len(png) // 2])
    (root / "b" / "page.jpg").write_text("<!doctype html><html><body>404</body></html>")
    (root / "b" / "dir.png").mkdir()  # a folder with an image's name
    ds = load_dataset(str(root), val_fraction=0.0, cache=False)
    reasons = {Path(p).name: r for p, r in ds.skipped}
    assert set(reasons) == {"zero.jpg", "cut.jpg", "cut.png", "page.jpg"}
    assert "empty file" in reasons["zero.jpg"]
    assert "truncated" in reasons["cut.jpg"] or "decode" in reasons["cut.jpg"]
    assert "not an image" in reasons["page.jpg"]
    assert len(ds.train) == 8
    err = capsys.readouterr().err
    assert f"skipped {root / 'a' / 'zero.jpg'}" in err


def test_unreadable_file_is_skipped(tmp_path: Path, monkeypatch) -> None:
    root = make_folder(tmp_path / "data")
    locked = root / "a" / "locked.png"
    locked.write_bytes(_png_bytes())
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads any file: refuse this one the way the kernel would for a user
        real_open = builtins.open

        def guarded(file, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            if str(file) == str(locked):
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", guarded)
    ds = load_dataset(str(root), val_fraction=0.0, cache=False)
    assert [(Path(p).name, r) for p, r in ds.skipped] == [("locked.png", "no permission to read the file")]


def test_file_deleted_between_scan_and_load_is_skipped(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    scan = scan_folder(root)
    os.remove(root / "b" / "2.png")
    skipped: list = []
    split = decode_files(scan.files["train"], 3, 8, skipped)
    assert len(split) == 7
    assert skipped == [(str(root / "b" / "2.png"), "file disappeared before it could be read")]


def test_file_deleted_while_streaming_is_skipped_and_listed(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", per_class=20)
    run_dir = tmp_path / "runs"

    def delete_after_first_epoch(row: dict) -> None:
        if row["epoch"] == 1:
            os.remove(root / "a" / "3.png")

    run = recog.train(data=str(root), model="seednet", epochs=2, loader="stream", workers=0, val_fraction=0.2,
                      project=str(run_dir), verbose=False, on_epoch_end=delete_after_first_epoch)
    assert "a/3.png" in (run.path / "skipped.csv").read_text()


def test_decompression_bomb_limit_is_configurable(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    Image.new("RGB", (400, 300)).save(root / "a" / "big.png")
    try:
        ds = load_dataset(str(root), val_fraction=0.0, max_image_pixels=50_000, image_size=8, cache=False)
        assert [Path(p).name for p, _ in ds.skipped] == ["big.png"]
        assert "decompression bomb" in ds.skipped[0][1]
        ds = load_dataset(str(root), val_fraction=0.0, max_image_pixels=200_000, image_size=8, cache=False)
        assert ds.skipped == [] and len(ds.train) == 9
    finally:
        set_max_image_pixels(None)


# ---- what counts as an image and a class --------------------------------------------------------


def test_png_named_jpg_loads_and_non_images_and_hidden_are_ignored(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    (root / "a" / "really_png.jpg").write_bytes(_png_bytes((1, 2, 3)))
    for name in ("notes.txt", "labels.csv", "README.md"):
        (root / "b" / name).write_text("x")
    (root / "b" / ".DS_Store").write_bytes(b"\x00")
    (root / "b" / "._0.png").write_bytes(b"\x00")  # macOS resource fork
    (root / ".ipynb_checkpoints").mkdir()
    (root / ".hidden_class").mkdir()
    Image.new("RGB", (12, 10)).save(root / ".hidden_class" / "x.png")
    ds = load_dataset(str(root), val_fraction=0.0, cache=False)
    assert ds.classes == ["a", "b"]
    assert len(ds.train) == 9 and ds.skipped == []
    assert (ds.train.images[4, :, 0, 0].tolist()) == [1, 2, 3]  # a/really_png.jpg sorts after a/3.png


def test_empty_class_is_an_error_unless_allowed(tmp_path: Path, capsys) -> None:
    root = make_folder(tmp_path / "data")
    (root / "c_empty").mkdir()
    with pytest.raises(DataError, match=r"c_empty holds no images.*--allow-empty-classes"):
        load_dataset(str(root), cache=False)
    ds = load_dataset(str(root), allow_empty_classes=True, val_fraction=0.0, cache=False)
    assert ds.classes == ["a", "b", "c_empty"]
    assert "c_empty holds no images" in capsys.readouterr().err


def test_class_with_only_broken_files_counts_as_empty(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data")
    (root / "c").mkdir()
    (root / "c" / "x.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="no readable images left"):
        load_dataset(str(root), cache=False)


def test_symlink_loop_ends_with_a_warning(tmp_path: Path, capsys) -> None:
    root = make_folder(tmp_path / "data")
    (root / "a" / "loop").symlink_to(root / "a", target_is_directory=True)
    ds = load_dataset(str(root), val_fraction=0.0, cache=False)
    assert len(ds.train) == 8
    assert "symlink loop" in capsys.readouterr().err


def test_links_back_into_the_dataset_never_relabel_images(tmp_path: Path, capsys) -> None:
    # before: train/a/up -> ../.. made every other class and the test split train as 'a'
    data = tmp_path / "data"
    make_folder(data / "train")
    make_folder(data / "test")
    outside = make_folder(tmp_path / "elsewhere")  # a folder outside the dataset: followed
    plain = load_dataset(str(data), val_fraction=0.0, cache=False)
    counts = plain.counts(plain.train).tolist()
    (data / "train" / "a" / "up").symlink_to(data, target_is_directory=True)  # the dataset root
    (data / "train" / "a" / "parent").symlink_to(data / "train", target_is_directory=True)  # the split
    (data / "train" / "a" / "sibling").symlink_to(data / "train" / "b", target_is_directory=True)  # a class
    (data / "train" / "a" / "above").symlink_to(tmp_path, target_is_directory=True)  # above the dataset
    (data / "train" / "a" / "extra").symlink_to(outside / "a", target_is_directory=True)
    ds = load_dataset(str(data), val_fraction=0.0, cache=False)
    assert ds.counts(ds.train).tolist() == [counts[0] + counts[0], counts[1]]  # only extra/ adds to 'a'
    assert len(ds.test) == len(plain.test)
    err = capsys.readouterr().err
    assert err.count("not following") == 4 and "another class or split" in err and "a folder above it" in err


# ---- every Pillow mode ----------------------------------------------------------------------------


def _save(im: Image.Image, path: Path, **kw) -> Path:
    im.save(path, **kw)
    return path


def test_every_pillow_mode_becomes_the_models_channels(tmp_path: Path) -> None:
    red = (200, 30, 60)
    files = {}
    files["rgb"] = _save(Image.new("RGB", (8, 8), red), tmp_path / "rgb.png")
    files["l"] = _save(Image.new("L", (8, 8), 77), tmp_path / "l.png")
    files["la"] = _save(Image.new("LA", (8, 8), (77, 255)), tmp_path / "la.png")
    rgba = Image.new("RGBA", (8, 8), red + (255,))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # one fully transparent pixel
    files["rgba"] = _save(rgba, tmp_path / "rgba.png")
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0] + list(red) + [0] * 762)
    pal.info["transparency"] = 0
    pal.putpixel((0, 0), 0)
    files["p_transparent"] = _save(pal, tmp_path / "p.png", transparency=0)
    files["cmyk"] = _save(Image.new("RGB", (8, 8), red).convert("CMYK"), tmp_path / "cmyk.jpg", quality=100)
    files["cmyk_tif"] = _save(Image.new("RGB", (8, 8), red).convert("CMYK"), tmp_path / "cmyk.tif")
    i16 = Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16))
    files["i16"] = _save(i16, tmp_path / "i16.png")
    bw = Image.new("1", (8, 8), 0)
    bw.putpixel((1, 1), 1)
    files["bit"] = _save(bw, tmp_path / "bit.png")

    def rgb(name: str) -> np.ndarray:
        return load_image(files[name], 3, 8)

    assert rgb("rgb")[:, 3, 3].tolist() == list(red)
    assert rgb("l")[:, 3, 3].tolist() == [77, 77, 77]
    assert load_image(files["l"], 1, 8).shape == (1, 8, 8)
    assert rgb("la")[:, 3, 3].tolist() == [77, 77, 77]
    assert rgb("rgba")[:, 3, 3].tolist() == list(red)
    assert rgb("rgba")[:, 0, 0].tolist() == [255, 255, 255]  # transparent: the white background
    assert rgb("p_transparent")[:, 3, 3].tolist() == list(red)
    assert rgb("p_transparent")[:, 0, 0].tolist() == [255, 255, 255]
    for name in ("cmyk", "cmyk_tif"):  # not inverted
        assert np.abs(rgb(name)[:, 3, 3].astype(int) - np.array(red)).max() <= 6, name
    grey = load_image(files["i16"], 1, 8)
    assert grey[0, 3, 3] == round(40000 / 65535 * 255)  # scaled, not clipped to white
    bit = load_image(files["bit"], 1, 8)
    assert bit[0, 1, 1] == 255 and bit[0, 0, 0] == 0
    # RGB image asked for one channel: luminance
    assert load_image(files["rgb"], 1, 8)[0, 3, 3] == Image.new("RGB", (1, 1), red).convert("L").getpixel((0, 0))


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    im = Image.new("RGB", (16, 8), (0, 0, 0))
    for x in range(8):
        for y in range(8):
            im.putpixel((x, y), (255, 255, 255))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = tmp_path / "rotated.jpg"
    im.save(path, exif=exif, quality=100)
    arr = load_image(path, 1, 8)  # shown as 8 wide x 16 tall: top half white after rotation, then centre crop
    upright = np.asarray(Image.open(path).transpose(Image.Transpose.ROTATE_270).convert("L"))
    assert upright.shape == (16, 8)
    assert arr[0, 0, 4] > 200 and arr[0, 7, 4] < 60  # centre crop spans the white/black boundary vertically


def test_first_frame_of_animated_gif_and_multipage_tiff(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    for name in ("anim.gif", "pages.tif"):
        assert load_image(tmp_path / name, 3, 8)[:, 4, 4].tolist() == [255, 0, 0], name


def test_training_and_prediction_decode_identically(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "x").mkdir(parents=True)
    (root / "y").mkdir()
    Image.new("RGBA", (30, 20), (10, 200, 30, 128)).save(root / "x" / "a.png")
    Image.fromarray(np.arange(600, dtype=np.uint16).reshape(20, 30) * 100).save(root / "y" / "b.png")
    ds = load_dataset(str(root), val_fraction=0.0, image_size=16, channels=3, cache=False)
    for i, path in enumerate([root / "x" / "a.png", root / "y" / "b.png"]):
        assert np.array_equal(ds.train.images[i].numpy(), load_image(path, 3, 16))


def test_other_sizes_are_resized_shorter_side_then_centre_cropped(tmp_path: Path) -> None:
    im = Image.new("RGB", (30, 10), (0, 0, 0))
    for x in range(10, 20):
        for y in range(10):
            im.putpixel((x, y), (255, 255, 255))  # a white middle third
    im.save(tmp_path / "wide.png")
    arr = load_image(tmp_path / "wide.png", 1, 10)
    assert arr.shape == (1, 10, 10) and arr.min() == 255  # the centre crop is the white third


# ---- the user's folder is never written -----------------------------------------------------------


def _hashes(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_training_never_writes_to_the_data_folder(cifar_jpg: Path, tmp_path: Path) -> None:
    before = _hashes(cifar_jpg)
    mtimes = {p: os.stat(p).st_mtime_ns for p in before}
    listing = sorted(str(p) for p in cifar_jpg.rglob("*"))
    recog.train(data=str(cifar_jpg), model="seednet", epochs=1, project=str(tmp_path), verbose=False)
    recog.train(data=str(cifar_jpg), model="seednet", epochs=1, loader="stream", workers=1,
                random_resized_crop=True, project=str(tmp_path), verbose=False)
    assert _hashes(cifar_jpg) == before
    assert {p: os.stat(p).st_mtime_ns for p in before} == mtimes
    assert sorted(str(p) for p in cifar_jpg.rglob("*")) == listing


# ---- cache, summary, imbalance --------------------------------------------------------------------


def test_second_run_starts_from_the_cache_and_a_changed_file_invalidates_it(tmp_path: Path, capsys) -> None:
    root = make_folder(tmp_path / "data")
    first = load_dataset(str(root), val_fraction=0.0)
    assert not any("cache" in n for n in first.notes)
    second = load_dataset(str(root), val_fraction=0.0)
    assert any("loaded from the cache" in n for n in second.notes)
    assert torch.equal(first.train.images, second.train.images)
    Image.new("RGB", (12, 10), (9, 9, 9)).save(root / "a" / "0.png")  # replaced by the user
    os.utime(root / "a" / "0.png", ns=(1, 1))
    third = load_dataset(str(root), val_fraction=0.0)
    assert not any("cache" in n for n in third.notes)
    assert third.train.images[0, :, 0, 0].tolist() == [9, 9, 9]
    fourth = load_dataset(str(root), val_fraction=0.0, image_size=6)  # other size: other cache entry
    assert fourth.image_size == 6 and not any("cache" in n for n in fourth.notes)


def test_summary_lists_classes_counts_sizes_and_skips(tmp_path: Path, capsys) -> None:
    root = tmp_path / "data"
    make_folder(root / "train", per_class=10)
    make_folder(root / "test", per_class=3, size=(20, 20))
    (root / "train" / "a" / "bad.png").write_bytes(b"junk")
    assert main(["train", "--data", str(root), "--model", "seednet", "--epochs", "1", "--project",
                 str(tmp_path / "runs"), "--val-fraction", "0.2"]) == 0
    err = capsys.readouterr().err
    assert "2 classes" in err
    assert "class" in err and "train" in err and "val" in err and "test" in err
    line_a = next(x for x in err.splitlines() if x.strip().startswith("a "))
    assert line_a.split() == ["a", "8", "2", "3"]
    assert "12x10 x20" in err and "20x20 x6" in err
    assert "skipped 1 files" in err
    assert (tmp_path / "runs" / "train" / "skipped.csv").read_text().startswith("path,reason")


def test_imbalance_warns_and_class_weights_and_balanced_sampling_help(tmp_path: Path, capsys) -> None:
    root = make_folder(tmp_path / "data", classes=("many",), per_class=50)
    make_folder(root, classes=("few",), per_class=5)
    ds = load_dataset(str(root), val_fraction=0.0)
    assert ds.imbalance() is not None
    recog.train(data=str(root), model="seednet", epochs=1, val_fraction=0.0, project=str(tmp_path / "r"))
    assert "class imbalance" in capsys.readouterr().err
    weights = ds.class_weights()
    assert weights[ds.classes.index("few")] / weights[ds.classes.index("many")] == pytest.approx(10.0)
    # balanced sampling: each class about half of the epoch
    loader = make_loader(ds.train, 3, ds.image_size, 55, Normalize([0.5] * 3, [0.5] * 3), train=True,
                         sample_weights=ds.sample_weights())
    labels = torch.cat([y for _, y in loader])
    few_share = (labels == ds.classes.index("few")).float().mean().item()
    assert 0.3 < few_share < 0.7
    run = recog.train(data=str(root), model="seednet", epochs=1, val_fraction=0.0, class_weights="auto",
                      balanced_sampling=True, project=str(tmp_path / "r"), verbose=False)
    assert run.report == {}  # no held-out split: no report, and no error


# ---- memory and streaming paths agree -------------------------------------------------------------


def test_memory_and_stream_paths_agree(cifar_png: Path, tmp_path: Path) -> None:
    mem = load_dataset(str(cifar_png), val_fraction=0.1, loader="memory")
    stream = load_dataset(str(cifar_png), val_fraction=0.1, loader="stream")
    assert mem.classes == stream.classes and not stream.in_memory
    assert torch.equal(mem.test.labels, stream.test.labels)
    normalize = Normalize([0.5] * 3, [0.25] * 3)
    a = torch.cat([x for x, _ in make_loader(mem.test, 3, 32, 64, normalize)])
    b = torch.cat([x for x, _ in make_loader(stream.test, 3, 32, 64, normalize, workers=2)])
    assert torch.equal(a, b)  # the same eval preprocessing, bit for bit
    opts = dict(data=str(cifar_png), model="airnet_small", epochs=3, flip=True, seed=1, verbose=False,
                project=str(tmp_path))
    acc_mem = recog.train(**opts, loader="memory").report["accuracy"]
    acc_stream = recog.train(**opts, loader="stream", workers=2).report["accuracy"]
    assert abs(acc_mem - acc_stream) <= 0.1  # 100 test images, 3 epochs: noise of a few points


@pytest.mark.parametrize(
    "policy",
    [dict(auto_augment="randaugment"), dict(auto_augment="trivialaugment", color_jitter=0.3),
     dict(random_resized_crop=True, random_erasing=0.5)],
    ids=["randaugment", "trivialaugment-jitter", "rrc-erasing"],
)
def test_streaming_augmentation_policies_train(cifar_jpg: Path, tmp_path: Path, policy: dict) -> None:
    run = recog.train(data=str(cifar_jpg), model="seednet", epochs=1, workers=1, project=str(tmp_path),
                      verbose=False, **policy)
    assert run.metrics[0]["train_loss"] > 0 and run.report["num_images"] == 50


def test_sample_policy_keeps_shape_and_dtype() -> None:
    from recog.data.splits import Split
    from recog.data.stream import SampleDataset

    split = Split(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8), torch.arange(4))
    ds = SampleDataset(split, 3, 16, SamplePolicy(True, 0.3, "randaugment", 0.2))
    image, label, _, _, index = ds[2]
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8 and label == index == 2


def test_image_read_error_is_not_raised_for_good_files(tmp_path: Path) -> None:
    path = tmp_path / "ok.png"
    path.write_bytes(_png_bytes())
    try:
        load_image(path, 3, 4)
    except ImageReadError as exc:  # pragma: no cover - the failure message is the point
        pytest.fail(f"good file refused: {exc}")


def test_every_training_file_vanishing_mid_run_is_one_clear_error(tmp_path: Path) -> None:
    # before: ZeroDivisionError in the loop
    root = make_folder(tmp_path / "data", per_class=6)

    def remove_all(row: dict) -> None:
        for f in root.rglob("*.png"):
            f.unlink()

    from recog.errors import TrainingError

    with pytest.raises(TrainingError, match="no training image could be read in epoch 2"):
        recog.train(data=str(root), model="airnet_small", epochs=3, loader="stream", workers=0, val_fraction=0.0,
                    batch_size=4, project=str(tmp_path / "runs"), verbose=False, on_epoch_end=remove_all)
    skipped = (tmp_path / "runs" / "train" / "skipped.csv").read_text()
    assert "disappeared" in skipped
