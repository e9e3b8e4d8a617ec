"""Forward + backward time of each convolution of the fast recipe's net, alone, in bf16 and
channels-last on the CPU, with a few "rounder" alternative shapes; and of its 2x2 max-pool
against two hand-written alternatives (reshape + amax, pairwise maximum).

    python benchmarks/conv_layers.py [--batch 256] [--repeats 6]

Prints ms per batch and the achieved TFLOP/s (3 x the forward's 2 x MACs; 2 x for a layer whose
input gradient is not needed), the machine, the torch version and the command; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from _common import command, machine

# (name, c_in, c_out, side, input gradient needed)
LAYERS = [
    ("group 1 conv 1, 24->64 @ 31", 24, 64, 31, True),
    ("  the same, stem frozen (no input gradient)", 24, 64, 31, False),
    ("  32 stem channels instead of 24", 32, 64, 31, True),
    ("  32x32 maps instead of 31x31", 24, 64, 32, True),
    ("group 1 conv 2, 64->64 @ 15", 64, 64, 15, True),
    ("group 2 conv 1, 64->256 @ 15", 64, 256, 15, True),
    ("group 2 conv 2, 256->256 @ 7", 256, 256, 7, True),
    ("  8x8 maps instead of 7x7", 256, 256, 8, True),
    ("group 3 conv 1, 256->256 @ 7", 256, 256, 7, True),
    ("group 3 conv 2, 256->256 @ 3", 256, 256, 3, True),
]


def time_layer(batch: int, c_in: int, c_out: int, side: int, input_grad: bool, repeats: int) -> float:
    x = torch.randn(batch, c_in, side, side).to(memory_format=torch.channels_last).requires_grad_(input_grad)
    w = torch.randn(c_out, c_in, 3, 3, requires_grad=True)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = F.conv2d(x, w, padding=1)
        y.float().sum().backward()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def _pool_reshape(x: torch.Tensor) -> torch.Tensor:
    h2, w2 = x.shape[2] // 2, x.shape[3] // 2
    x = x[:, :, : 2 * h2, : 2 * w2]
    return x.unflatten(3, (w2, 2)).unflatten(2, (h2, 2)).amax(dim=(3, 5))


def _pool_pairs(x: torch.Tensor) -> torch.Tensor:
    h2, w2 = x.shape[2] // 2, x.shape[3] // 2
    x = x[:, :, : 2 * h2, : 2 * w2]
    rows = torch.maximum(x[:, :, 0::2], x[:, :, 1::2])
    return torch.maximum(rows[:, :, :, 0::2], rows[:, :, :, 1::2])


POOLS = {"F.max_pool2d": lambda x: F.max_pool2d(x, 2), "reshape + amax": _pool_reshape,
         "pairwise maximum": _pool_pairs}


def time_pool(fn, shape: tuple[int, ...], repeats: int) -> float:  # noqa: ANN001
    x = torch.randn(shape, dtype=torch.bfloat16).to(memory_format=torch.channels_last).requires_grad_()
    for _ in range(2):
        fn(x).float().sum().backward()
    start = time.perf_counter()
    for _ in range(repeats):
        fn(x).float().sum().backward()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for name, c_in, c_out, side, input_grad in LAYERS:
        seconds = time_layer(args.batch, c_in, c_out, side, input_grad, args.repeats)
        flop = (3 if input_grad else 2) * 2 * args.batch * side * side * c_in * c_out * 9
        rows.append({"layer": name.strip(), "ms": round(seconds * 1000, 1), "tflops": round(flop / seconds / 1e12, 3)})
        print(f"{name:46s} {seconds * 1000:8.1f} ms  {flop / seconds / 1e12:.3f} TFLOP/s", flush=True)
    pools = []
    for shape in [(args.batch, 64, 31, 31), (args.batch, 192, 15, 15), (args.batch, 192, 7, 7)]:
        x = torch.randn(shape, dtype=torch.bfloat16).to(memory_format=torch.channels_last)
        times = {}
        for name, fn in POOLS.items():
            assert torch.equal(fn(x), F.max_pool2d(x, 2)), name  # the same function
            times[name] = round(time_pool(fn, shape, args.repeats) * 1000, 1)
        pools.append({"shape": list(shape), "ms": times})
        print(f"max-pool 2x2 of {shape}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in times.items()), flush=True)
    info = machine()
    print(f"batch {args.batch}, bf16 autocast, channels-last; {info['cpu']}, {info['cores']} cores, "
          f"AMX {'yes' if info['amx'] else 'no'}, torch {info['torch']}")
    print(f"command: {command()}")
    print(json.dumps({"benchmark": "conv_layers", "batch": args.batch, "layers": rows, "pools": pools, "device": info["cpu"],
                      "cores": info["cores"], "amx": info["amx"], "torch": info["torch"], "command": command()}))


if __name__ == "__main__":
    main()
