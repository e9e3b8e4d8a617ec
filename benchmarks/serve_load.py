"""`recog serve` under load: the real server (a `recog serve` subprocess) driven on loopback by an
asyncio HTTP client (aiohttp) at concurrency 1, 8, 32 and 128 with a bounded number of requests per
level; prints requests/s, p50/p95/p99 latency and errors per level, with dynamic batching on
(`--max-batch 32`, the default) and off (`--max-batch 1`, the baseline), and each backend's own
images/s at batch 1 and 64 (in this process, before any server runs).

    python benchmarks/serve_load.py [--airnet RUN] [--resnet RUN] [--requests 4] [--levels 1,8,32,128]

Models: `airnet` on CIFAR-10 (32 px; torch and ONNX fp32) with real CIFAR-10 test PNGs as requests,
and torchvision's ResNet-18 at 224 px (`tv:resnet18`, 1.8 GMACs; torch in bf16 where the CPU has
it, else fp32; ONNX fp32 and int8) with the real ants/bees photos (JPEG, ~500x375) as requests.
Without --airnet / --resnet, short runs are trained first into a temporary folder (1 minute of
airnet on the shared CIFAR-10 PNG copy; 1 epoch of tv:resnet18 on the shared photos): speed does not
depend on how well they are trained. Each level sends max(32, requests x concurrency) requests after
a warm-up. The client runs on the same cores as the server: on a 2-core machine it takes its share.
Last line JSON keyed "model/backend/batching/concurrency".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
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


def model_speed(source: Path, backend: str, bodies: list[bytes], rounds: int = 3) -> dict[str, float]:
    """The backend's own images/s at batch 1 and 64 (decoded images, no HTTP), best of ``rounds``."""
    from recog.serve import Predictor

    predictor = Predictor(source, backend)
    images = [predictor.read(b) for b in bodies]
    out = {}
    for batch in (1, 64):
        xs = (images * (64 // len(images) + 1))[:batch]
        predictor.run(xs, 5)  # warm-up
        best = 0.0
        for _ in range(rounds):
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < 1.0 or n == 0:
                predictor.run(xs, 5)
                n += batch
            best = max(best, n / (time.perf_counter() - start))
        out[f"b{batch}_img_s"] = round(best, 1)
    out["b1_ms"] = round(1000 / out["b1_img_s"], 2)
    return out


def train_runs(tmp: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    import recog

    airnet = Path(args.airnet) if args.airnet else recog.train(
        data=str(cifar10_folder("png")), model="airnet", time_budget="1m", project=str(tmp), name="airnet",
        verbose=False).path
    resnet = Path(args.resnet) if args.resnet else recog.train(
        data=str(hymenoptera()), model="tv:resnet18", image_size=224, epochs=1, project=str(tmp), name="resnet",
        verbose=False).path
    return airnet, resnet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--airnet", metavar="RUN", help="a CIFAR-10 airnet run (default: train 1 minute)")
    parser.add_argument("--resnet", metavar="RUN", help="a tv:resnet18 224-px run (default: train 1 epoch)")
    parser.add_argument("--requests", type=int, default=4, help="requests per level: max(32, this x concurrency)")
    parser.add_argument("--levels", default="1,8,32,128")
    args = parser.parse_args()
    levels = [int(c) for c in args.levels.split(",")]
    import onnxruntime

    from recog.export import export

    info = machine()
    print(machine_line(info, onnxruntime=onnxruntime.__version__), flush=True)
    cifar = sorted((cifar10_folder("png") / "test").glob("*/*.png"))[::100][:64]
    photos = sorted((hymenoptera() / "val").glob("*/*.jpg"))[:64]
    requests = {"airnet": [p.read_bytes() for p in cifar], "tv:resnet18": [p.read_bytes() for p in photos]}
    print(f"requests: {len(cifar)} CIFAR-10 test PNGs (32x32, ~{sum(map(len, requests['airnet'])) // len(cifar)} B); "
          f"{len(photos)} ants/bees JPEGs (~{sum(map(len, requests['tv:resnet18'])) // len(photos) // 1000} kB)",
          flush=True)
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        airnet, resnet = train_runs(tmp, args)
        onnx_airnet = export(airnet, output=tmp / "airnet.onnx", verbose=False)
        onnx_resnet = export(resnet, output=tmp / "resnet.onnx", verbose=False)
        configs = [("airnet", "torch", airnet), ("airnet", "onnx", onnx_airnet),
                   ("tv:resnet18", "torch", resnet), ("tv:resnet18", "onnx", onnx_resnet)]
        try:
            int8 = export(resnet, output=tmp / "resnet-q.onnx", int8=True, verbose=False)
            configs.append(("tv:resnet18", "onnx-int8", int8))
        except Exception as exc:  # noqa: BLE001 - int8 refused (accuracy): measure the rest, say why
            print(f"int8 export refused: {exc}", flush=True)
        for model, backend, source in configs:
            engine = "onnx" if backend.startswith("onnx") else "torch"
            speed = model_speed(source, engine, requests[model])
            results[f"{model}/{backend}/model"] = speed
            for max_batch in (32, 1):
                server = Server(source, engine, max_batch)
                precision = server.card["precision"]
                try:
                    asyncio.run(drive(server.url + "/v1/predict", requests[model], 4, 16))  # warm-up
                    for c in levels:
                        row = asyncio.run(drive(server.url + "/v1/predict", requests[model], c,
                                                max(32, args.requests * c)))
                        batching = "on" if max_batch > 1 else "off"
                        results[f"{model}/{backend}/{batching}/{c}"] = {**row, "precision": precision}
                        print(f"{model:12} {backend:9} {precision:5} batching {batching:3} c={c:<4} "
                              f"{row['rps']:7.1f} req/s  p50 {row['p50_ms']:7.1f}  p95 {row['p95_ms']:7.1f}  "
                              f"p99 {row['p99_ms']:7.1f} ms  errors {row['errors'] or 0}", flush=True)
                finally:
                    server.close()
            on, off = results.get(f"{model}/{backend}/on/32"), results.get(f"{model}/{backend}/off/32")
            c1 = results.get(f"{model}/{backend}/on/1")
            summary = {"batching_gain_c32": round(on["rps"] / off["rps"], 2) if on and off else None,
                       "overhead_ms": round(c1["p50_ms"] - speed["b1_ms"], 1) if c1 else None}
            if c1:  # where c=1's time goes, by the server's own Server-Timing (medians) and the rest: HTTP
                t = c1["server_ms"]
                summary["c1_ms"] = {**t, "http_and_client": round(c1["p50_ms"] - sum(t.values()), 1)}
            results[f"{model}/{backend}/summary"] = summary
            print(f"{model:12} {backend:9} model alone: batch 1 {speed['b1_img_s']} img/s ({speed['b1_ms']} ms), "
                  f"batch 64 {speed['b64_img_s']} img/s; batching gain at c=32 {summary['batching_gain_c32']}x; "
                  f"server overhead (p50 at c=1 - batch-1 time) {summary['overhead_ms']} ms; c=1 by Server-Timing: "
                  f"{summary.get('c1_ms')}", flush=True)
    print(f"command: {command()}")
    print(json.dumps({"machine": info, "onnxruntime": onnxruntime.__version__, "results": results}))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
