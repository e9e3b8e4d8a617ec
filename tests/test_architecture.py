"""The shape of the house: imports point downward, the config is frozen and fully recorded, the run
reads as build -> fit, and the seams later features plug into (tasks, heads, sources, bytes) work."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import recog
from recog.config import make_config

PACKAGE = Path(recog.__file__).parent

# a module may import modules of its own layer or below, never above (``recog/__init__`` is the lazy
# facade: its imports run only when an attribute is asked for, inside __getattr__, and it imports only
# ``_version`` at the top); ``data`` and ``models`` never import each other
LAYERS = {
    "cli": 6, "api": 5, "tuning": 5, "lr_range": 5, "explanations": 5, "export": 5, "serve": 5, "engine": 4,
    "onnx_predict": 3, "evaluation": 3, "inference": 3, "tasks": 2, "text": 2, "data": 1, "models": 1,
    "report": 0, "weights": 0, "memory": 0, "cores": 0, "faithfulness": 5, "_version": 0, "runs": 3, "device": 0, "fileio": 0, "errors": 0, "config": 0, "__main__": 7,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p) for p in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Every recog module ``path`` imports, at the top or inside functions (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("recog"):
            submodules = {f"{node.module}.{a.name}" for a in node.names}  # `from recog.data import builtin`
            found.update(submodules)
            if node.module != "recog" or not submodules <= MODULES:  # `from recog import api` names a module
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("recog"))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def _layer(module: str) -> int:
    """The package facade (``import recog``) sits with the CLI: the API users call, above the API."""
    return LAYERS[module.split(".")[1]] if module != "recog" else LAYERS["cli"]


def _top_level_imports(path: Path) -> set[str]:
    """The recog modules a file imports when it is imported (not inside functions)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("recog"):
            found.add(node.module)
    return found


def test_imports_point_downward_and_never_in_a_circle() -> None:
    graph = _graph()
    upward = [(a, b) for a, deps in graph.items() for b in deps if _layer(b) > _layer(a)]
    assert upward == []
    # the package facade (`import recog`; recog.train, recog.predict…) is the CLI's to use, nobody else's
    assert {a for a, deps in graph.items() if "recog" in deps} <= {"recog.cli"}
    assert _top_level_imports(PACKAGE / "__init__.py") == {"recog._version"}  # the facade imports lazily
    top = {m: m.split(".")[1] if "." in m else "" for m in graph}
    sideways = [(a, b) for a, deps in graph.items() for b in deps
                if top[a] != top[b] and {top[a], top[b]} <= {"data", "models"}]
    assert sideways == []
    # no circle of any length (Tarjan would do; the graph is small: a depth-first search)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in graph.get(node, ()):
            assert state.get(dep) != 1, f"import circle: {' -> '.join(path + [dep])}"
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_a_finished_run_is_read_without_the_training_engine() -> None:
    """Evaluation, export, explanations, serving, inference and the run folder's module read a run
    through ``recog.runs``; none of them imports ``recog.engine``, at the top or inside a function."""
    graph = _graph()
    readers = [m for m in graph if m != "recog" and m.split(".")[1] in ("evaluation", "export", "explanations", "serve",
                                                       "inference", "runs", "onnx_predict")]
    assert len(readers) == 7
    assert {m: sorted(d for d in graph[m] if d.startswith("recog.engine")) for m in readers} == {m: [] for m in readers}


def test_build_only_builds_and_no_task_kind_is_named_outside_tasks() -> None:
    """Decisions live in the planner (engine/plan.py, engine/resolve.py); build.py builds from the
    resolved config. The task kinds are named by the tasks (config.py's list of choices aside)."""
    build = PACKAGE / "engine" / "build.py"
    assert len(build.read_text().splitlines()) <= 300
    named = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.parent.name != "tasks"
             and p.name != "config.py" and any(f'"{k}"' in p.read_text() or f"'{k}'" in p.read_text()
                                               for k in ("multilabel", "classification"))}
    assert named == set()


def test_the_run_is_a_short_composition_and_the_loop_is_one_screen() -> None:
    from recog.api import train
    from recog.engine.fit import fit

    assert len(inspect.getsource(train).splitlines()) <= 40
    assert len(inspect.getsource(fit).splitlines()) <= 80
    assert len(inspect.signature(fit).parameters) <= 6


def test_config_is_frozen_and_the_run_folder_records_every_automatic_value(digits_run) -> None:
    cfg = make_config(data="digits")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]
    assert cfg.lr == 0.05  # the optimizer's default, filled in by config.py
    saved = yaml.safe_load((digits_run.path / "config.yaml").read_text())
    for key in ("lr", "precision", "mean", "std", "image_size", "channels", "steps", "epochs", "warmup_epochs",
                "workers", "max_image_pixels", "name"):
        assert saved[key] is not None, key
    assert saved["precision"] in ("fp32", "bf16") and saved["image_size"] == 8 and saved["channels"] == 1
    # the planner's choices are recorded: airnet_small is not the recipes' model, so the plain
    # defaults (recipe none): 1,294 training digits in batches of 64, 20 steps per epoch, 30% of
    # the 120 steps warm up (one-cycle)
    assert (saved["recipe"], saved["batch_size"], saved["schedule"]) == ("none", 64, "onecycle")
    assert saved["steps"] == 6 * 20 and saved["warmup_epochs"] == pytest.approx(36 / 20)


def test_reusing_a_recorded_config_trains_the_same_run(tmp_path: Path) -> None:
    common = dict(data="digits", model="airnet_small", epochs=2, deterministic=True, verbose=False)
    first = recog.train(**common, project=str(tmp_path / "a"))
    again = recog.train(first.path / "config.yaml", project=str(tmp_path / "b"))
    for (k, a), b in zip(first.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_precision_auto_follows_torchs_cpu_checks(monkeypatch) -> None:
    from recog import device

    cpu = torch.device("cpu")
    for amx, avx512 in ((False, False), (True, False), (False, True)):
        device.cpu_has_bf16.cache_clear()
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512: v)
        assert device.resolve_precision("auto", cpu, verbose=False) == ("bf16" if amx or avx512 else "fp32")
    device.cpu_has_bf16.cache_clear()


def test_normalize_is_a_module_and_the_classifier_takes_uint8_images(digits_run) -> None:
    from recog.data import Normalize

    clf = recog.load(digits_run.path)
    assert isinstance(clf.normalize, torch.nn.Module) and isinstance(clf, torch.nn.Module)
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        expected = clf.model(Normalize(clf.meta["mean"], clf.meta["std"])(x))
        assert torch.allclose(clf(x), expected)
    assert {"normalize.scale", "normalize.shift"} <= set(clf.state_dict())  # travels inside an export


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_images_decode_from_bytes_as_from_files_and_errors_say_their_kind(tmp_path: Path) -> None:
    from recog.data import ImageReadError, load_image

    rng = np.random.default_rng(0)
    array = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    data = _png_bytes(array)
    (tmp_path / "a.png").write_bytes(data)
    assert np.array_equal(load_image(data, 3, 16), load_image(tmp_path / "a.png", 3, 16))
    cases = {"empty": b"", "not_an_image": b"<html>not an image</html>", "truncated": data[: len(data) // 2]}
    for kind, content in cases.items():
        with pytest.raises(ImageReadError) as info:
            load_image(content, 3, 16)
        assert info.value.kind == kind, (kind, str(info.value))
    with pytest.raises(ImageReadError) as info:
        load_image(tmp_path / "missing.png", 3, 16)
    assert info.value.kind == "unreadable"


def test_a_data_source_registers_by_name(tmp_path: Path) -> None:
    from recog.data import Dataset, Split, list_sources, load_dataset, register_source

    def tiny(data_root=None, **_):  # noqa: ANN001, ANN003, ANN202
        images = torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8)
        return Dataset("tiny", ["a", "b"], 1, 8, Split(images, torch.arange(20) % 2))

    register_source("tiny-test-source", tiny)
    assert "tiny-test-source" in list_sources()
    ds = load_dataset("tiny-test-source", val_fraction=0.2)
    assert (len(ds.train), len(ds.val)) == (16, 4)
    with pytest.raises(ValueError, match="already registered"):
        register_source("tiny-test-source", tiny)
    run = recog.train(data="tiny-test-source", model="airnet_small", epochs=1, project=str(tmp_path), verbose=False)
    assert run.classes == ["a", "b"]


@pytest.mark.parametrize("name", recog.list_models())
def test_every_model_has_a_head_that_can_be_read_and_replaced(name: str) -> None:
    from recog.models import feature_width, head, replace_head

    model = recog.create_model(name, num_classes=4, in_channels=3, image_size=32)
    _, layer = head(model)
    assert layer.out_features == 4 and feature_width(model) == layer.in_features
    replace_head(model, 9)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 9)


def test_kernel_size_and_depth_are_model_arguments() -> None:
    from recog.models import model_stats

    article = recog.create_model("seednet", 10, 3, 32, kernel_sizes=[5, 5], channels=[6, 16], fc=[120, 84])
    assert model_stats(article, 3, 32) == (62006, 651_720)  # the defaults are exactly the article's net
    deeper = recog.create_model("seednet", 10, 3, 32, kernel_sizes=[3, 3, 3], channels=[16, 32, 64], fc=[64])
    convs = [m for m in deeper.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 3 and deeper(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    air = recog.create_model("airnet", 10, 3, 32, kernel_size=5, depth=3, widths=[16, 32, 32])
    convs = [m for m in air.groups.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 9 and {c.kernel_size for c in convs} == {(5, 5)}
    assert air(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    from recog.errors import ConfigError

    with pytest.raises(ConfigError, match="kernel_size must be odd"):
        recog.create_model("airnet", 10, 3, 32, kernel_size=4)
    with pytest.raises(ConfigError, match="widths must be positive"):
        recog.create_model("airnet", 10, 3, 32, widths=[0, 0, 0])
    with pytest.raises(ConfigError, match="one entry per convolution"):
        recog.create_model("seednet", 10, 3, 32, kernel_sizes=[5], channels=[6, 16])


def test_tta_views_come_from_the_weights_so_a_flips_only_run_is_evaluated_with_flips(tmp_path: Path,
                                                                                       monkeypatch) -> None:
    import recog.evaluation as evaluation

    run = recog.train(data="digits", model="airnet_small", epochs=1, flip=True, translate=1, tta_translate=False,
                      project=str(tmp_path), verbose=False)
    seen = []
    original = evaluation.tta_forward

    def spy(model, task, views, batch, confidence=None):  # noqa: ANN001, ANN202
        seen.append(len(views))
        return original(model, task, views, batch, confidence)

    monkeypatch.setattr(evaluation, "tta_forward", spy)
    recog.evaluate(run.path, tta=True, out=tmp_path / "eval", verbose=False)
    assert set(seen) == {2}  # the image and its mirror, no shifted views (6 before this was read from the weights)


def test_evaluation_writes_predictions_to_find_the_confident_mistakes(digits_run, tmp_path: Path) -> None:
    import csv

    rows = list(csv.DictReader((digits_run.path / "predictions.csv").open()))
    assert len(rows) == 359 and set(rows[0]) == {"image", "true", "predicted", "probability"}
    wrong = sum(r["true"] != r["predicted"] for r in rows)
    assert wrong == round((1 - digits_run.report["accuracy"]) * 359)
    report = recog.evaluate(digits_run.path, out=tmp_path / "e", verbose=False)
    assert (Path(report["out"]) / "predictions.csv").read_text() == (digits_run.path / "predictions.csv").read_text()
