"""`recog serve` under load: the real server (a `recog serve` subprocess) driven on loopback by an
asyncio HTTP client (aiohttp) at concurrency 1, 8, 32 and 128 with a bounded number of requests per
level; prints requests/s, p50/p95/p99 latency and errors per level, with dynamic batching on
(`--max-batch 32`, the default) and off (`--max-batch 1`, the baseline), and each backend's own
images/s at batch 1 and 64 (in this process, before any server runs).

    python benchmarks/serve_load.py [--airnet RUN] [--resnet RUN] [--model airnet resnet]
        [--backend torch onnx onnx-int8] [--requests 64] [--levels 1,8,32,128] [--rounds 1]

Models: `airnet` on CIFAR-10 (32 px; torch and ONNX fp32) with real CIFAR-10 test PNGs as requests,
and torchvision's ResNet-18 at 224 px (`tv:resnet18`, 1.8 GMACs; torch in bf16 where the CPU has
it, else fp32; ONNX fp32 and int8) with the real ants/bees photos (JPEG, ~500x375) as requests.
Without --airnet / --resnet, short runs are trained first into a temporary folder (1 minute of
airnet on the shared CIFAR-10 PNG copy; 1 epoch of tv:resnet18 on the shared photos): speed does not
depend on how well they are trained (only the runs a selected model needs are trained). Each level
sends ``--requests`` requests (at least 2 per connection) after a warm-up; both servers (batching on
and off) are up together and take turns level by level, ``--rounds`` times (the median round is kept,
every round printed), so that the machine's drift falls on both alike. The model alone is timed in
a fresh process with the server's own inference policy (precision, TTA), as the server runs it. The
client runs on the same cores as the server: on a 2-core machine it takes its share. For each level the
ratio of batching on to off (the median of the rounds' paired ratios) is printed beside the model
alone's batch-64 / batch-1 speed ratio. Last line JSON keyed "model/backend/batching/concurrency".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

from _common import cifar10_folder, command, hymenoptera, machine, machine_line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`recog serve SOURCE --port P …` as a subprocess, until closed."""

    def __init__(self, source: Path, backend: str, max_batch: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "recog", "serve", str(source), "--port", str(self.port),
                                      "--backend", backend, "--max-batch", str(max_batch)],
                                     stderr=subprocess.PIPE, text=True)
        for _ in range(600):
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=1)
                break
            except OSError:
                if self.proc.poll() is not None:
                    sys.exit(f"server failed: {self.proc.stderr.read()}")
                time.sleep(0.1)
        with urllib.request.urlopen(self.url + "/v1/model") as r:
            self.card = json.loads(r.read())

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


async def drive(url: str, bodies: list[bytes], concurrency: int, total: int) -> dict[str, object]:
    """``total`` POSTs of the bodies in turn, ``concurrency`` at a time on kept-alive connections
    (aiohttp: its C parser costs the shared cores ~1/4 of httpx's CPU per request): requests/s,
    latency percentiles, errors."""
    import aiohttp

    latencies: list[float] = []
    timings: list[dict[str, float]] = []  # the server's Server-Timing header: decode, queue, model (ms)
    errors: Counter[str] = Counter()
    sent = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as client:
        async def worker() -> None:
            nonlocal sent
            while sent < total:
                body = bodies[sent % len(bodies)]
                sent += 1
                start = time.perf_counter()
                try:
                    async with client.post(url, data=body) as r:
                        await r.read()
                        if r.status == 200:
                            latencies.append(time.perf_counter() - start)
                            timings.append({part.split(";")[0].strip(): float(part.split("dur=")[1].split(";")[0])
                                            for part in r.headers.get("Server-Timing", "").split(",") if "dur=" in part})
                        else:
                            errors[str(r.status)] += 1
                except aiohttp.ClientError as exc:
                    errors[type(exc).__name__] += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()

    def pct(q: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else float("nan")

    def median(key: str) -> float:
        values = sorted(t[key] for t in timings if key in t)
        return values[len(values) // 2] if values else float("nan")

    return {"requests": total, "rps": round(len(latencies) / elapsed, 1), "p50_ms": pct(0.50), "p95_ms": pct(0.95),
            "p99_ms": pct(0.99), "errors": dict(errors),
            "server_ms": {k: median(k) for k in ("decode", "queue", "model")}}


SPEED = """
import json, sys, time
from pathlib import Path
from recog.serve import Predictor
source, backend, files = sys.argv[1], sys.argv[2], sys.argv[3:]
predictor = Predictor(source, backend)
images = [predictor.read(Path(f).read_bytes()) for f in files]
out = {"policy": predictor.policy}
for batch in (1, 64):
    xs = (images * (64 // len(images) + 1))[:batch]
    predictor.run(xs, 5)  # warm-up
    best = 0.0
    for _ in range(3):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < 1.0 or n == 0:
            predictor.run(xs, 5)
            n += batch
        best = max(best, n / (time.perf_counter() - start))
    out[f"b{batch}_img_s"] = round(best, 1)
print(json.dumps(out))
"""


def model_speed(source: Path, backend: str, files: list[Path]) -> dict[str, float]:
    """The backend's own images/s at batch 1 and 64 (decoded images, no HTTP), best of 3, in a fresh
    process with the server's defaults (the run's inference policy): nothing of this process (an ONNX
    Runtime session left by the export, its spinning threads) competes for the cores."""
    proc = subprocess.run([sys.executable, "-c", SPEED, str(source), backend, *map(str, files)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"model speed failed: {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["b1_ms"] = round(1000 / out["b1_img_s"], 2)
    out["batch_gain"] = round(out["b64_img_s"] / out["b1_img_s"], 2)
    return out


def train_runs(tmp: Path, args: argparse.Namespace) -> dict[str, Path]:
    """The runs of the selected models: given, or trained briefly."""
    import recog

    runs = {}
    if "airnet" in args.model:
        runs["airnet"] = Path(args.airnet) if args.airnet else recog.train(
            data=str(cifar10_folder("png")), model="airnet", time_budget="1m", project=str(tmp), name="airnet",
            verbose=False).path
    if "resnet" in args.model:
        runs["tv:resnet18"] = Path(args.resnet) if args.resnet else recog.train(
            data=str(hymenoptera()), model="tv:resnet18", image_size=224, epochs=1, project=str(tmp),
            name="resnet", verbose=False).path
    return runs


def paired_ratio(on: list[float], off: list[float]) -> float:
    """Batching on over off: the median of each round's ratio (a round's two runs are minutes apart at
    most, the rounds are not: the machine's speed drifts between them)."""
    return round(statistics.median(a / max(1e-9, b) for a, b in zip(on, off)), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--airnet", metavar="RUN", help="a CIFAR-10 airnet run (default: train 1 minute)")
    parser.add_argument("--resnet", metavar="RUN", help="a tv:resnet18 224-px run (default: train 1 epoch)")
    parser.add_argument("--model", nargs="+", default=["airnet", "resnet"], choices=["airnet", "resnet"])
    parser.add_argument("--backend", nargs="+", default=["torch", "onnx", "onnx-int8"],
                        choices=["torch", "onnx", "onnx-int8"], help="onnx-int8: the ResNet only")
    parser.add_argument("--requests", type=int, default=64, help="requests per level (at least 2 per connection)")
    parser.add_argument("--levels", default="1,8,32,128")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure each level this many times, batching on and off alternating (the median)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    levels = [int(c) for c in args.levels.split(",")]
    import onnxruntime

    from recog.export import export

    info = machine()
    print(machine_line(info, onnxruntime=onnxruntime.__version__), flush=True)
    files = {"airnet": sorted((cifar10_folder("png") / "test").glob("*/*.png"))[::100][:64],
             "tv:resnet18": sorted((hymenoptera() / "val").glob("*/*.jpg"))[:64]}
    requests = {model: [p.read_bytes() for p in paths] for model, paths in files.items()}
    print(f"requests: {len(files['airnet'])} CIFAR-10 test PNGs (32x32); {len(files['tv:resnet18'])} ants/bees JPEGs "
          f"(~{sum(map(len, requests['tv:resnet18'])) // len(files['tv:resnet18']) // 1000} kB)", flush=True)
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        runs = train_runs(tmp, args)
        configs = []
        for model, run in runs.items():
            if "torch" in args.backend:
                configs.append((model, "torch", run))
            if "onnx" in args.backend:
                configs.append((model, "onnx", export(run, output=tmp / f"{run.name}.onnx", verbose=False)))
            if "onnx-int8" in args.backend and model == "tv:resnet18":
                try:
                    configs.append((model, "onnx-int8", export(run, output=tmp / f"{run.name}-q.onnx", int8=True,
                                                               verbose=False)))
                except Exception as exc:  # noqa: BLE001 - int8 refused (accuracy): measure the rest, say why
                    print(f"int8 export refused: {exc}", flush=True)
        for model, backend, source in configs:
            engine = "onnx" if backend.startswith("onnx") else "torch"
            speed = model_speed(source, engine, files[model])
            results[f"{model}/{backend}/model"] = speed
            servers = {max_batch: Server(source, engine, max_batch) for max_batch in (32, 1)}
            try:
                for server in servers.values():
                    asyncio.run(drive(server.url + "/v1/predict", requests[model], 4, 16))  # warm-up
                samples: dict[tuple[int, int], list[dict]] = {(b, c): [] for b in servers for c in levels}
                for r in range(args.rounds):  # on and off alternate, level by level: drift hits both alike
                    for c in levels:
                        for max_batch in ((32, 1) if r % 2 == 0 else (1, 32)):
                            server = servers[max_batch]
                            row = asyncio.run(drive(server.url + "/v1/predict", requests[model], c,
                                                    max(2 * c, args.requests)))
                            samples[(max_batch, c)].append(row)
                            print(f"{model:12} {backend:9} {server.card['precision']:5} batching "
                                  f"{'on' if max_batch > 1 else 'off':3} c={c:<4} round {r + 1}: "
                                  f"{row['rps']:7.1f} req/s  p50 {row['p50_ms']:7.1f}  p95 {row['p95_ms']:7.1f}  "
                                  f"p99 {row['p99_ms']:7.1f} ms  errors {row['errors'] or 0}", flush=True)
                for (max_batch, c), rows in samples.items():  # each level's median round
                    row = sorted(rows, key=lambda x: x["rps"])[len(rows) // 2]
                    results[f"{model}/{backend}/{'on' if max_batch > 1 else 'off'}/{c}"] = {
                        **row, "precision": servers[max_batch].card["precision"],
                        "rounds_rps": [x["rps"] for x in rows]}
            finally:
                for server in servers.values():
                    server.close()
            c1 = results.get(f"{model}/{backend}/on/1")
            summary = {"on_over_off": {c: paired_ratio(results[f"{model}/{backend}/on/{c}"]["rounds_rps"],
                                                       results[f"{model}/{backend}/off/{c}"]["rounds_rps"])
                                       for c in levels},
                       "model_batch_gain": speed["batch_gain"],
                       "overhead_ms": round(c1["p50_ms"] - speed["b1_ms"], 1) if c1 else None}
            if c1:  # where c=1's time goes, by the server's own Server-Timing (medians) and the rest: HTTP
                t = c1["server_ms"]
                summary["c1_ms"] = {**t, "http_and_client": round(c1["p50_ms"] - sum(t.values()), 1)}
            results[f"{model}/{backend}/summary"] = summary
            print(f"{model:12} {backend:9} model alone ({speed['policy']}): batch 1 {speed['b1_img_s']} img/s "
                  f"({speed['b1_ms']} ms), batch 64 {speed['b64_img_s']} img/s ({speed['batch_gain']}x); batching "
                  f"on / off by level {summary['on_over_off']}; "
                  f"server overhead (p50 at c=1 - batch-1 time) {summary['overhead_ms']} ms; c=1 by Server-Timing: "
                  f"{summary.get('c1_ms')}", flush=True)
    print(f"command: {command()}")
    print(json.dumps({"machine": info, "onnxruntime": onnxruntime.__version__, "results": results}))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
