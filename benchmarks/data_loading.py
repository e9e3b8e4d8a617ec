"""Data loading on the shared CIFAR-10 copies (60,000 images): first decode into the uint8 cache,
cached start, and the images/s of the in-memory and streaming loaders, alone and feeding a model.

    python benchmarks/data_loading.py [--stream-images 10000] [--model seednet]

The first decode runs with an empty cache folder (a temporary RECOG_CACHE), so it is a true cold
start of the decode (the files themselves may be in the OS page cache).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from _common import cifar10_folder, command, machine


def timed(fn):  # noqa: ANN001, ANN201
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def loader_rate(loader, limit: int, step=None) -> float:  # noqa: ANN001
    """Images/s through ``loader`` (and ``step(x, y)`` when given) over about ``limit`` images."""
    seen, start = 0, time.perf_counter()
    for x, y in loader:
        if step is not None:
            step(x, y)
        seen += len(y)
        if seen >= limit:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stream-images", type=int, default=10_000, help="images timed per streaming run")
    parser.add_argument("--model", default="airnet_small", help="the small model fed in the feeding test")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()

    os.environ["RECOG_CACHE"] = tempfile.mkdtemp(prefix="recog-bench-cache-")
    import torch

    import recog
    from recog.data import BatchAugment, Normalize, load_dataset
    from recog.data.stream import make_loader

    rows = []
    figures: dict[str, float] = {}
    for kind in ("png", "jpg"):
        root = str(cifar10_folder(kind))
        ds, first = timed(lambda: load_dataset(root, val_fraction=0.0, loader="memory"))
        _, cached = timed(lambda: load_dataset(root, val_fraction=0.0, loader="memory"))
        rows.append((kind, len(ds.train) + len(ds.test), first, cached))
        if kind == "png":
            figures.update(first_decode_s=first, cached_start_s=cached)
            mem_ds = ds
        else:
            figures.update(first_decode_jpg_s=first, cached_start_jpg_s=cached)

    norm = Normalize([0.5] * 3, [0.25] * 3)
    aug = BatchAugment(flip=True, translate=2)
    mem = make_loader(mem_ds.train, 3, 32, args.batch_size, norm, train=True, augment=aug)
    stream_ds = load_dataset(str(cifar10_folder("png")), val_fraction=0.0, loader="stream")
    stream = make_loader(stream_ds.train, 3, 32, args.batch_size, norm, train=True, augment=aug)
    memory_rate = loader_rate(mem, 50_000)
    stream_rate = loader_rate(stream, args.stream_images)

    # feeding a small model: train steps alone (one resident batch) vs fed by each loader
    model = recog.create_model(args.model, 10, 3, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(x, y) -> None:  # noqa: ANN001
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    x0, y0 = next(iter(mem))
    n_steps = max(4, args.stream_images // args.batch_size)
    step(x0, y0)
    _, alone = timed(lambda: [step(x0, y0) for _ in range(n_steps)])
    model_rate = n_steps * args.batch_size / alone
    fed_memory = loader_rate(mem, args.stream_images, step)
    fed_stream = loader_rate(stream, args.stream_images, step)

    info = machine()
    print("\nData loading, CIFAR-10 (60,000 images, 32x32), shared copies")
    print(f"{'copy':<6}{'images':>8}{'first decode s':>16}{'cached start s':>16}")
    for kind, n, first, cached in rows:
        print(f"{kind:<6}{n:>8}{first:>16.2f}{cached:>16.2f}")
    print(f"\nloader throughput (batch {args.batch_size}, flip + translate 2, PNG copy)")
    print(f"{'path':<44}{'images/s':>10}")
    print(f"{'memory (uint8 resident, batched aug)':<44}{memory_rate:>10.0f}")
    print(f"{'stream (DataLoader, ' + str(stream.workers) + ' workers, PNG decode)':<44}{stream_rate:>10.0f}")
    print(f"\nfeeding {args.model} (train steps, fp32)")
    print(f"{'model alone (one resident batch)':<44}{model_rate:>10.0f}")
    print(f"{'fed by memory loader':<44}{fed_memory:>10.0f}")
    print(f"{'fed by stream loader':<44}{fed_stream:>10.0f}")
    print(f"stream keeps the model {100 * fed_stream / model_rate:.0f}% busy "
          f"(memory: {100 * fed_memory / model_rate:.0f}%)")
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}")
    print(f"command: {command()}")
    figures.update(memory_images_per_s=memory_rate, stream_images_per_s=stream_rate,
                   model_alone_images_per_s=model_rate, fed_by_memory_images_per_s=fed_memory,
                   fed_by_stream_images_per_s=fed_stream)
    print(json.dumps({"benchmark": "data_loading", **{k: round(v, 2) for k, v in figures.items()},
                      "stream_workers": stream.workers, "model": args.model, "device": info["cpu"],
                      "cores": info["cores"], "torch": info["torch"]}))


if __name__ == "__main__":
    main()
