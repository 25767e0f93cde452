"""Load test of `lmtune serve`: requests/s and p50/p99 latency, micro-batching on vs off.

Usage: python benchmarks/serve_load.py [RUN_DIR] [--requests 48] [--concurrency 1,16] [--variants ...]
Without RUN_DIR a small MiniLM LoRA run is trained on examples/data/sentiment_train.csv into a
temporary directory first. The server runs in its own process (`python -m lmtune serve`) on
127.0.0.1, so clients and model do not share a GIL; each request carries one review from
examples/data/sentiment_test.csv. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent


def train_small_run(directory: Path) -> Path:
    import lmtune
    from lmtune.config import RunConfig

    out = directory / "minilm-lora"
    cfg = RunConfig.from_dict(
        {
            "model": "all-MiniLM-L6-v2",
            "task": "classification",
            "method": {"name": "lora", "r": 8},
            "data": {
                "train": str(ROOT / "examples/data/sentiment_train.csv"),
                "test": str(ROOT / "examples/data/sentiment_test.csv"),
                "max_length": 64,
            },
            "train": {"epochs": 1, "batch_size": 16, "report_to": ["none"]},
            "output_dir": str(out),
        }
    )
    lmtune.train(cfg)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    run_dir: Path, port: int, batching: bool, max_wait_ms: float, extra: tuple[str, ...] = ()
) -> subprocess.Popen:
    args = [sys.executable, "-m", "lmtune", "serve", str(run_dir), "--port", str(port), *extra]
    # Generous time limit: the benchmark measures latency, it must not turn slow answers into 504s.
    args += ["--max-wait-ms", str(max_wait_ms), "--max-queue", "1024", "--timeout-s", "600"]
    if not batching:
        args.append("--no-batching")
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextlib.contextmanager
def running_server(
    run_dir: Path, batching: bool, max_wait_ms: float, extra: tuple[str, ...] = ()
) -> Iterator[str]:
    """`lmtune serve` on a free loopback port, ready; yields its URL and stops it afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(run_dir, port, batching, max_wait_ms, extra)
    try:
        wait_ready(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("server did not start in time")


def batch_stats(url: str) -> tuple[float, float]:
    """(sum, count) of the server's batch-size histogram."""
    import httpx

    text = httpx.get(f"{url}/metrics").text
    total = float(re.search(r"^lmtune_batch_size_sum (\S+)$", text, re.M).group(1))
    count = float(re.search(r"^lmtune_batch_size_count (\S+)$", text, re.M).group(1))
    return total, count


async def load(url: str, texts: list[str], clients: int, requests: int) -> tuple[float, list[float]]:
    """`requests` requests in all, spread over `clients` concurrent clients; (seconds, latencies)."""
    import httpx

    latencies: list[float] = []
    counter = iter(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        for i in counter:
            started = time.perf_counter()
            response = await http.post("/predict", json={"texts": [texts[i % len(texts)]]})
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        return time.perf_counter() - started, latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# name -> (batching, extra `lmtune serve` flags): what one row of the table measures.
VARIANTS = {
    "no batching": (False, ()),
    "defaults": (True, ()),
    "unmerged": (True, ("--no-merge",)),
    "bf16": (True, ("--precision", "bf16")),
}


def server_variants(names: str) -> list[tuple[str, bool, tuple[str, ...]]]:
    from lmtune.tasks.base import cpu_has_native_bf16

    chosen = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown --variants {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if "bf16" in chosen and not cpu_has_native_bf16():
        print("skipping bf16: this CPU has no native bf16", file=sys.stderr)
        chosen.remove("bf16")
    return [(name, *VARIANTS[name]) for name in chosen]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", type=Path, help="a finished MiniLM run (default: train one)")
    parser.add_argument("--requests", type=int, default=48, help="requests per measurement (1 text each)")
    parser.add_argument("--concurrency", default="1,16", help="comma-separated client counts")
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="servers: " + ", ".join(VARIANTS))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lmtune-bench-serve-"))
    run_dir = args.run_dir or train_small_run(work)
    with open(ROOT / "examples/data/sentiment_test.csv", newline="", encoding="utf-8") as fh:
        texts = [row["text"] for row in csv.DictReader(fh)]
    rows = []
    for label, batching, extra in server_variants(args.variants):
        with running_server(run_dir, batching, args.max_wait_ms, extra) as url:
            asyncio.run(load(url, texts, 4, 8))  # warm-up
            for clients in (int(c) for c in args.concurrency.split(",")):
                before = batch_stats(url)
                seconds, latencies = asyncio.run(load(url, texts, clients, args.requests))
                after = batch_stats(url)
                mean_batch = (after[0] - before[0]) / max(after[1] - before[1], 1)
                rows.append(
                    (
                        label,
                        clients,
                        len(latencies),
                        len(latencies) / seconds,
                        1000 * statistics.median(latencies),
                        1000 * percentile(latencies, 0.99),
                        mean_batch,
                    )
                )
                print(f"{label}, {clients} clients: {rows[-1][3]:.1f} req/s", file=sys.stderr)
    print(f"\n`lmtune serve` on {run_dir} (1 text per request, max-wait {args.max_wait_ms:g} ms)\n")
    print("| server | clients | requests | req/s | p50 ms | p99 ms | mean items per forward |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, clients, n, rps, p50, p99, mean_batch in rows:
        print(f"| {label} | {clients} | {n} | {rps:.1f} | {p50:.1f} | {p99:.1f} | {mean_batch:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
