"""ONNX export of recog runs, fp32 against int8 (ONNX Runtime static QDQ, as `recog export --int8`
makes it): accuracy on each run's evaluation split and images/s at batch 1 and 64, the two files
timed side by side in one process (alternating rounds, best of each).

    python benchmarks/export_int8.py RUN [RUN ...] [--rounds 5]

The files are written to a temporary folder, never into the runs. Runs measured for the README:
the 6-minute CIFAR-10 airnet (`recog train --data ~/.cache/recog/cifar10-png --time-budget 6m`) and
`tv:resnet18` at 224 px (`recog train --data hymenoptera --model tv:resnet18 --image-size 224
--epochs 3`). Last line JSON: one entry per run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _common import command, machine, machine_line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import onnxruntime

    from recog.runs import run_data
    from recog.export import _accuracy, _images_per_second, _split_images, export
    from recog.inference import load
    from recog.onnx_predict import session

    info = machine()
    print(machine_line(info, onnxruntime=onnxruntime.__version__), flush=True)
    rows = []
    for run in args.runs:
        clf = load(run, "cpu")
        with tempfile.TemporaryDirectory() as tmp:
            int8_path = export(clf, output=Path(tmp) / "model.onnx", int8=True, verbose=False)
            fp32, int8 = session(Path(tmp) / "model.onnx"), session(int8_path)
            ds = run_data(clf.config, clf.meta["image_size"], clf.meta["channels"], "cpu")
            split_name, split = ds.eval_split
            images = _split_images(split, None, clf.read)
            row = {"run": run, "model": clf.meta["model"], "size": clf.meta["image_size"], "split": split_name,
                   "images": len(images), "acc_fp32": round(_accuracy(fp32, images, split.labels), 4),
                   "acc_int8": round(_accuracy(int8, images, split.labels), 4)}
            for batch in (1, 64):
                speeds = {"fp32": 0.0, "int8": 0.0}
                for _ in range(2):  # alternate, keep the best of each: the machine is shared
                    for name, sess in (("fp32", fp32), ("int8", int8)):
                        speeds[name] = max(speeds[name], _images_per_second(sess, images, batch, args.rounds))
                row[f"fp32_img_s_b{batch}"], row[f"int8_img_s_b{batch}"] = round(speeds["fp32"]), round(speeds["int8"])
                row[f"speedup_b{batch}"] = round(speeds["int8"] / speeds["fp32"], 2)
        rows.append(row)
        print(f"{row['model']} at {row['size']} px: {split_name} accuracy fp32 {row['acc_fp32']:.4f}, int8 "
              f"{row['acc_int8']:.4f} ({row['images']} images); batch 1: {row['fp32_img_s_b1']} -> {row['int8_img_s_b1']} "
              f"images/s ({row['speedup_b1']}x); batch 64: {row['fp32_img_s_b64']} -> {row['int8_img_s_b64']} "
              f"images/s ({row['speedup_b64']}x)", flush=True)
    print(f"command: {command()}")
    print(json.dumps({"benchmark": "export_int8", "rows": rows, "machine": info}))


if __name__ == "__main__":
    main()
