"""Benchmark `flywheel serve-model` on loopback: latency, throughput, errors, and how fast a hard
image reaches Label Studio.

A throwaway stack, an MNIST project with a champion trained on 100 labels, the endpoint as the
user runs it (`flywheel serve-model`), then, from this process (aiohttp, one event loop; it shares
the 2 cores with the endpoint, so the figures are what the machine does with its load generator):
- `serve_p50_ms`: 1,000 requests one after the other, one image each (after 50 to warm up);
- `serve_throughput_ips` and `serve_errors`: 10,000 requests, 16 in flight at a time;
- `route_to_label_studio_s`: new images sent one at a time until 5 were answered under
  `production.route_below`, each timed from its answer to its task being listed by Label Studio's
  API (the median);
- `serve_idle_cpu_percent`: the endpoint's processes, 10 s without requests.

Run: `python -m bench.serving` (about 3 minutes).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import psutil
import yaml

from bench.results import record
from bench.stack import ROOT, throwaway_stack
from components.loop.workspace import open_workspace
from components.adapters import stack as embedded
from components.studies.datasets import materialize
from components.core.params import load_params
from components.studies.simulator import label_balanced

SEQUENTIAL = 1000
CONCURRENT = 10_000
CONCURRENCY = 16
ROUTED = 5
IDLE_S = 10


async def load(url: str, bodies: list[bytes], count: int, concurrency: int) -> tuple[list[float], int, float]:
    """Send `count` requests, `concurrency` in flight; returns latencies (s), failures, wall time (s)."""
    latencies: list[float] = []
    failures = 0
    numbers = iter(range(count))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def one(i: int) -> None:
            nonlocal failures
            start = time.perf_counter()
            try:
                async with session.post(url, data=bodies[i % len(bodies)]) as answer:
                    await answer.read()
                    failures += answer.status != 200
            except aiohttp.ClientError:
                failures += 1
            latencies.append(time.perf_counter() - start)

        async def worker() -> None:
            for i in numbers:
                await one(i)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, failures, time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    root = psutil.Process(pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def model_runtimes(ws, champion, batch: int = 16, repeats: int = 300) -> dict[str, float]:
    """Milliseconds per batch of `batch` images of the champion in eager PyTorch and in ONNX Runtime
    (its logged export), one thread each, as the endpoint runs it."""
    import tempfile

    import numpy as np
    import onnxruntime
    import torch

    from components.networks.export import Preprocessed

    torch.set_num_threads(1)
    model = Preprocessed(ws.models.load(champion)).eval()
    pixels = np.random.default_rng(0).integers(0, 256, (batch, 28, 28, 3), dtype=np.uint8)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as scratch:
        session = onnxruntime.InferenceSession(str(ws.models.download_export(champion, "onnx", Path(scratch))), options,
                                               providers=["CPUExecutionProvider"])

    def timed(run) -> float:
        for _ in range(20):
            run()
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        return (time.perf_counter() - start) / repeats * 1000

    with torch.inference_mode():
        eager = timed(lambda: model(torch.from_numpy(pixels)))
    onnx = timed(lambda: session.run(None, {"images": pixels}))
    return {"torch": eager, "onnx": onnx}


def main() -> None:
    with throwaway_stack() as (settings, workspace):
        endpoint = None
        try:
            params_path = workspace / "params.yaml"
            raw = yaml.safe_load((ROOT / "params.yaml").read_text())
            raw["project"] = {"title": "serving bench", "config": str(ROOT / raw["project"]["config"])}
            raw["pretrain"]["enabled"] = False  # the endpoint's speed does not depend on how the champion was trained
            params_path.write_text(yaml.safe_dump(raw))
            params = load_params(params_path)
            images = materialize("mnist", workspace / "datasets", limit=800)
            random.Random(0).shuffle(images)  # the dataset comes class by class
            project_images, production = images[:300], images[300:]
            ws = open_workspace(settings, params, create_project=True)
            ws.label_studio.import_images(ws.project, [i.path for i in project_images])
            label_balanced(ws.label_studio, ws.project, {i.path.name: i.label for i in project_images}, 100, random.Random(0))
            from flows.flywheel import flywheel_iteration

            summary = flywheel_iteration(str(params_path), warm=False)
            champion = ws.models.champion()
            assert champion is not None, summary

            port = embedded.free_port()
            endpoint = subprocess.Popen(
                [str(Path(sys.executable).parent / "flywheel"), "serve-model", "--params", str(params_path), "--port", str(port)],
                cwd=ROOT, env=os.environ.copy(), stdout=open(workspace / "serve-model.log", "w"), stderr=subprocess.STDOUT,
            )
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                try:
                    import httpx

                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or endpoint.poll() is not None:
                    raise RuntimeError((workspace / "serve-model.log").read_text()[-3000:])
                time.sleep(0.3)

            bodies = [i.path.read_bytes() for i in production[:400]]
            asyncio.run(load(f"{url}/predict", bodies, 50, 1))  # warm-up
            sequential, seq_failures, _ = asyncio.run(load(f"{url}/predict", bodies, SEQUENTIAL, 1))
            concurrent, failures, wall = asyncio.run(load(f"{url}/predict", bodies, CONCURRENT, CONCURRENCY))
            p50_ms = statistics.median(sequential) * 1000
            throughput = CONCURRENT / wall
            print(f"p50 {p50_ms:.2f} ms; {throughput:.0f} images/s at {CONCURRENCY}; {failures} errors", flush=True)

            import httpx

            route_s = []
            for path in [i.path for i in production[400:]]:  # images never sent: the unsure ones are routed
                body = path.read_bytes()
                answer = httpx.post(f"{url}/predict", content=body, timeout=30)
                answered = time.perf_counter()
                if answer.json()["routed"] != "low confidence":
                    continue
                digest = hashlib.sha256(body).hexdigest()
                while ws.label_studio.task_with_hash(ws.project.id, digest) is None:
                    if time.perf_counter() - answered > 60:
                        raise RuntimeError("an unsure image never reached Label Studio")
                    time.sleep(0.02)
                route_s.append(time.perf_counter() - answered)
                if len(route_s) == ROUTED:
                    break
            route = statistics.median(route_s)

            runtime_ms = model_runtimes(ws, champion)
            before = cpu_seconds(endpoint.pid)
            time.sleep(IDLE_S)
            idle = (cpu_seconds(endpoint.pid) - before) / IDLE_S * 100
        finally:
            if endpoint is not None:
                endpoint.terminate()
                endpoint.wait(timeout=30)

    figures = {
        "serve_p50_ms": round(p50_ms, 2),
        "serve_throughput_ips": round(throughput),
        "serve_errors": failures + seq_failures,
        "route_to_label_studio_s": round(route, 3),
        "serve_idle_cpu_percent": round(idle, 1),
        "serve_model_ms_b16_torch": round(runtime_ms["torch"], 2),
        "serve_model_ms_b16_onnx": round(runtime_ms["onnx"], 2),
    }
    q = statistics.quantiles(concurrent, n=100)
    markdown = f"""## Serving

`python -m bench.serving`: `flywheel serve-model` (LitServe 0.2.19, ONNX Runtime, batches of up to 16 within 2 ms)
serving {champion.model_version} (conv4, MNIST 28x28 PNG bytes) on 127.0.0.1; the load generator (aiohttp) runs on
the same 2 cores. Measured {time.strftime('%Y-%m-%d')}.

| figure | value | target |
|---|---|---|
| `serve_p50_ms`: one image per request, {SEQUENTIAL:,} sequential | **{p50_ms:.2f} ms** (p90 {statistics.quantiles(sequential, n=10)[-1] * 1000:.2f}) | <= 10 |
| `serve_throughput_ips`: {CONCURRENT:,} requests, {CONCURRENCY} in flight | **{throughput:.0f} images/s** (p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms) | >= 1,000 |
| `serve_errors` over the {CONCURRENT:,} (and the {SEQUENTIAL:,}) | **{failures + seq_failures}** | 0 |
| `route_to_label_studio_s`: an unsure answer -> its task listed by Label Studio (median of {ROUTED}) | **{route:.2f} s** ({', '.join(f'{s:.2f}' for s in route_s)}) | <= 5 |
| endpoint idle, % of one core ({IDLE_S} s, no requests) | {idle:.1f} % | - |
| the champion on a batch of 16, one thread: eager PyTorch / ONNX Runtime (its logged export) | {runtime_ms["torch"]:.2f} / {runtime_ms["onnx"]:.2f} ms | - |

How the endpoint was chosen (LitServe, batching, one worker) is a design study: `docs/studies/serving-choice.md`.
"""
    record(figures, "serving", markdown)
    print(markdown)


if __name__ == "__main__":
    main()
