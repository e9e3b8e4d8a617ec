"""Where one training step of the fast recipe's net goes on this machine (torch.profiler), its FLOPs,
and the achieved rate against a measured matrix-multiply peak; eager vs torch.compile.

    python benchmarks/profile_step.py [--config configs/cifar10-fast.yaml] [--batch-size 1024] [--steps 3]
                                      [--compile]

The step is the recipe's: its net (``model_args``) and its optimizer (Muon for the filters).
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import torch
from _common import ROOT, command, machine

import recog
from recog.config import make_config
from recog.device import resolve_precision
from recog.memory import reuse_freed_memory
from recog.engine.optim import make_optimizer
from recog.engine.step import Stepper
from recog.tasks import Classification

CATEGORIES = [  # (label, substrings of aten op names), first match wins
    ("conv backward", ("convolution_backward",)),
    ("conv forward", ("mkldnn_convolution", "convolution", "conv2d")),
    ("batch-norm", ("batch_norm",)),
    ("GELU", ("gelu",)),
    ("max-pool", ("max_pool", "adaptive_max")),
    ("optimizer: Muon's Newton-Schulz matmuls", ("mm",)),
    ("optimizer: element-wise", ("_foreach", "sgd", "add_", "mul_", "lerp", "norm", "div")),
    ("dtype casts / copies", ("copy_", "_to_copy", "to")),
    ("fill / zero", ("fill_", "zero_")),
]


def peak_matmul_tflops(dtype: torch.dtype, n: int = 2048, repeats: int = 8) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(ROOT / "configs" / "cifar10-fast.yaml"))
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (inductor)")
    args = parser.parse_args()

    cfg = make_config(args.config)
    model = recog.create_model(cfg.model, 10, 3, 32, **cfg.model_args).to(memory_format=torch.channels_last)
    x = torch.randn(args.batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,))
    opt = make_optimizer(model, cfg.optimizer, 0.01, cfg.weight_decay, cfg.momentum, cfg.nesterov, cfg.bias_lr_scale,
                         cfg.muon_lr, cfg.muon_momentum)
    cpu = torch.device("cpu")
    precision = resolve_precision(cfg.precision, cpu, verbose=False)  # bf16 where the CPU has it, as training
    stepper = Stepper(model, model, opt, Classification(label_smoothing=cfg.label_smoothing), cpu, precision)

    def step(net: torch.nn.Module) -> None:  # recog's own training step: the task's loss, backward, Muon
        stepper.net = net
        stepper((x, y))

    def time_steps(net: torch.nn.Module, n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            step(net)
        return (time.perf_counter() - start) / n

    for _ in range(2):
        step(model)
    # training keeps freed memory for reuse (recog.engine.memory); timed side by side with glibc's
    # default, which maps fresh pages for every large activation of every step
    plain, reused = [], []
    for _ in range(2):
        plain.append(time_steps(model, args.steps))
        with reuse_freed_memory() as applied:
            step(model)  # the heap grows once
            reused.append(time_steps(model, args.steps))
    default_malloc_s, eager_s = min(plain), min(reused) if applied else min(plain)
    with reuse_freed_memory(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step(model)
    shares: dict[str, float] = collections.defaultdict(float)
    total = 0.0
    for event in prof.key_averages():
        if not event.key.startswith("aten::"):
            continue
        self_us = event.self_cpu_time_total
        total += self_us
        name = event.key[len("aten::"):]
        label = next((lab for lab, keys in CATEGORIES if any(k in name for k in keys)), "other")
        shares[label] += self_us

    frozen_s = None
    if hasattr(model, "freeze_stem") and cfg.freeze_stem_epochs is not None:
        model.freeze_stem()  # the steps after --freeze-stem-epochs
        with reuse_freed_memory():
            step(model)
            frozen_s = time_steps(model, args.steps)
    _, macs = recog.models.model_stats(model, 3, 32)
    step_flops = 3 * 2 * macs * args.batch_size  # forward + backward (about 2x forward)
    peak_bf16, peak_fp32 = peak_matmul_tflops(torch.bfloat16), peak_matmul_tflops(torch.float32)
    peak = peak_bf16 if precision == "bf16" else peak_fp32
    compiled_s = compile_s = None
    if args.compile:
        net = torch.compile(model)
        start = time.perf_counter()
        for _ in range(2):
            step(net)
        compile_s = time.perf_counter() - start
        with reuse_freed_memory():
            step(net)
            compiled_s = time_steps(net, args.steps)

    info = machine()
    print(f"\nOne training step of {Path(args.config).name} (airnet {cfg.model_args.get('widths', '')}, "
          f"optimizer {cfg.optimizer}), batch {args.batch_size}, {precision}, channels-last")
    print(f"{'where the time goes':<44}{'share':>8}")
    for label, us in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"{label:<44}{100 * us / total:>7.1f}%")
    print(f"\nforward multiply-adds per image: {macs / 1e6:.1f} M; step FLOPs (fwd+bwd ~3x fwd): "
          f"{step_flops / 1e12:.3f} TFLOP")
    print(f"eager step: {eager_s:.2f} s = {args.batch_size / eager_s:.0f} img/s = "
          f"{step_flops / eager_s / 1e12:.3f} TFLOP/s achieved")
    print(f"measured matmul peak (2048^3): bf16 {peak_bf16:.2f} TFLOP/s, fp32 {peak_fp32:.2f} TFLOP/s "
          f"-> {100 * step_flops / eager_s / 1e12 / peak:.0f}% of the {precision} peak")
    print(f"glibc's default malloc (fresh pages for each large tensor): {default_malloc_s:.2f} s/step; "
          f"freed memory kept for reuse, as training does: {eager_s:.2f} s/step ({default_malloc_s / eager_s:.2f}x)")
    if frozen_s is not None:
        print(f"with the stem frozen (after {cfg.freeze_stem_epochs} epochs): {frozen_s:.2f} s/step "
              f"({eager_s / frozen_s:.2f}x)")
    if compiled_s is not None:
        print(f"torch.compile: {compiled_s:.2f} s/step ({eager_s / compiled_s:.2f}x eager), "
              f"first two steps incl. compilation {compile_s:.0f} s")
    epoch_flops = step_flops / args.batch_size * 50_000
    print(f"one CIFAR-10 epoch: {epoch_flops / 1e15:.3f} PFLOP -> floor at the {precision} peak "
          f"{epoch_flops / peak / 1e12:.0f} s/epoch")
    print(f"machine: {info['cpu']}, {info['cores']} cores, AMX {info['amx']}, AVX-512-BF16 {info['avx512_bf16']}, "
          f"torch {info['torch']}")
    print(f"command: {command()}")
    print(json.dumps({
        "benchmark": "profile_step", "batch_size": args.batch_size,
        "shares": {k: round(v / total, 4) for k, v in shares.items()},
        "macs_per_image": macs, "step_tflop": step_flops / 1e12, "eager_step_s": eager_s,
        "achieved_tflops": step_flops / eager_s / 1e12, "peak_bf16_tflops": peak_bf16,
        "peak_fp32_tflops": peak_fp32, "compiled_step_s": compiled_s, "compile_s": compile_s,
        "frozen_stem_step_s": frozen_s, "default_malloc_step_s": default_malloc_s, "config": args.config,
        "device": info["cpu"], "torch": info["torch"], "precision": precision,
    }))


if __name__ == "__main__":
    main()
