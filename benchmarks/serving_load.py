"""Load test of `pretrain.serve` against a transformers `pipeline` server, side by side.

    python benchmarks/serving_load.py --workdir=FT_DIR --texts=FILE \
        [--clients=1,8,64] [--requests=400] [--max_seconds=60] [--out=DIR]

Exports FT_DIR (a classification workdir) twice, with `pretrain.export_serving` and
`pretrain.export_hf`, then serves it three ways on 127.0.0.1, one server at a time: our server
with dynamic batching, our server with every request alone (`--batching=false`), and a
transformers text-classification `pipeline` behind a minimal FastAPI wrapper (this file with
`--serve_hf=HF_DIR`, one request at a time). Against each, `--clients` concurrent asyncio httpx
clients send one text per request (FILE: one text per line, cycled) until `--requests` are
answered or `--max_seconds` pass: the run always stops by itself. Prints a markdown table
(requests/s, p50 and p99 latency, errors) and, as the last line, the same as JSON.
`run_load` and `wait_ready` are the client that tests/test_serving.py drives too.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

REPO = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class Result:
    latencies: list[float]  # Seconds, per answered request.
    errors: int  # Requests not answered 200.
    answers: list[tuple[int, dict]]  # (index of the text, its prediction).
    seconds: float

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    def summary(self) -> dict[str, float]:
        done = len(self.latencies)
        return {
            "requests": done,
            "errors": self.errors,
            "requests_per_s": round(done / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(self.percentile(50) * 1000, 1),
            "p99_ms": round(self.percentile(99) * 1000, 1),
        }


async def wait_ready(url: str, timeout_s: float = 300) -> None:
    """Until GET /healthz answers 200 (the server has warmed up)."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} was not ready within {timeout_s} s")


async def run_load(url: str, texts: list[str], *, clients: int, requests: int,
                   max_seconds: float) -> Result:  # fmt: skip
    """`clients` concurrent clients, one text per request, until `requests` are sent or
    `max_seconds` pass."""
    sent, latencies, answers, errors = 0, [], [], 0
    start = time.perf_counter()
    deadline = start + max_seconds

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal sent, errors
        while sent < requests and time.perf_counter() < deadline:
            i, sent = sent % len(texts), sent + 1
            t = time.perf_counter()
            try:
                response = await client.post("/v1/predict", json={"texts": [texts[i]]})
            except httpx.HTTPError:
                errors += 1
                continue
            if response.status_code != 200:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t)
            answers.append((i, response.json()["predictions"][0]))

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    return Result(latencies, errors, answers, time.perf_counter() - start)


def serve_hf(hf_dir: str, port: int) -> None:
    """A transformers text-classification pipeline behind POST /v1/predict and GET /healthz."""
    import transformers

    pipe = transformers.pipeline("text-classification", model=hf_dir)
    lock = threading.Lock()  # The pipeline runs one request at a time.
    app = FastAPI()

    def run(texts: list[str]) -> list[dict]:
        with lock:
            return [{"label": r["label"], "probability": float(r["score"])}
                    for r in pipe(texts, truncation=True)]  # fmt: skip

    @app.post("/v1/predict")
    async def predict(request: Request) -> JSONResponse:
        texts = (await request.json())["texts"]
        return JSONResponse({"predictions": await asyncio.to_thread(run, texts)})

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ready"})

    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    print(f"Serving {hf_dir} (transformers pipeline) on http://127.0.0.1:"
          f"{sock.getsockname()[1]}", flush=True)  # fmt: skip
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def _start(command: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    found = re.search(r"http://\S+", line)
    if not found:
        proc.kill()
        raise RuntimeError(f"{command[:4]} did not start: {line!r}")
    return proc, found.group(0)


def _export(workdir: str, out: Path, batch_size: int) -> tuple[Path, Path]:
    serve_dir, hf_dir = out / "serve", out / "hf"
    for module, args in (
        ("pretrain.export_serving", [f"--output={serve_dir}", f"--batch_size={batch_size}"]),
        ("pretrain.export_hf", [f"--output={hf_dir}"]),
    ):
        subprocess.run([sys.executable, "-m", module, f"--workdir={workdir}", *args],
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return serve_dir, hf_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", help="A classification fine-tuning workdir.")
    parser.add_argument("--texts", help="One text per line.")
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--requests", type=int, default=400, help="Per server and --clients.")
    parser.add_argument("--max_seconds", type=float, default=60, help="Per server and --clients.")
    parser.add_argument("--max_batch", type=int, default=32)
    parser.add_argument("--max_wait_ms", type=float, default=5)
    parser.add_argument("--out", default="", help="Where the exports go (default: a temp dir).")
    parser.add_argument("--serve_hf", default="", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_hf:
        return serve_hf(args.serve_hf, args.port)
    if not (args.workdir and args.texts):
        parser.error("give --workdir and --texts")
    texts = [t for t in Path(args.texts).read_text().splitlines() if t.strip()]
    out = Path(args.out or tempfile.mkdtemp(prefix="serving_load-"))
    serve_dir, hf_dir = _export(args.workdir, out, args.max_batch)
    ours = [sys.executable, "-m", "pretrain.serve", f"--model={serve_dir}", "--port=0",
            f"--max_batch={args.max_batch}", f"--max_wait_ms={args.max_wait_ms}",
            "--max_queue=1024"]  # fmt: skip
    servers = {
        "pretrain.serve, dynamic batching": ours,
        "pretrain.serve, no batching": [*ours, "--batching=false"],
        "transformers pipeline": [sys.executable, __file__, f"--serve_hf={hf_dir}"],
    }
    rows = []
    for name, command in servers.items():
        proc, url = _start(command)
        try:
            asyncio.run(wait_ready(url))
            for clients in (int(c) for c in args.clients.split(",")):
                result = asyncio.run(run_load(url, texts, clients=clients,
                                              requests=args.requests,
                                              max_seconds=args.max_seconds))  # fmt: skip
                rows.append({"server": name, "clients": clients, **result.summary()})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    print("| server | clients | requests/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['server']} | {r['clients']} | {r['requests_per_s']} | {r['p50_ms']} | "
              f"{r['p99_ms']} | {r['errors']} |")  # fmt: skip
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
