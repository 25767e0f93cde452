"""Load test of generation through `lmtune serve`'s OpenAI routes: tokens/s, latency, TTFT.

Usage: python benchmarks/serve_generate.py [RUN_DIR] [--requests 16] [--concurrency 1,4,16]
       [--max-tokens 32]

Without RUN_DIR a SmolLM2-135M-Instruct LoRA SFT run is trained for a few steps into a
temporary directory (what is served matters less than its size: the base model generates).
The server runs in its own process on 127.0.0.1. Each measurement sends `--requests` chat
completions (greedy, `--max-tokens` new tokens at most) from N concurrent clients:
- non-streamed, with micro-batching on (requests that wait together share one `generate`)
  and off (one `generate` per request): generated tokens/s, latency p50/p99;
- streamed (each request generates alone, its tokens sent as they come): time to the first
  token (TTFT) p50/p99 and latency;
- three adapters on one base (the run, a second LoRA run trained to answer otherwise, and the
  base model with adapters off), requests spread over them round-robin: mixed batches (peft's
  `adapter_names`, one `generate` for all) against batches grouped per adapter.
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import percentile, running_server

PROMPTS = [
    "Give me one tip for sleeping better.",
    "What is the capital of Japan?",
    "Write a short sentence about autumn.",
    "Name three fruits.",
    "How do I boil an egg?",
    "What does a bee make?",
    "Say hello in French.",
    "Why is the sky blue?",
]


def train_small_run(directory: Path, answer: str = "A short, helpful answer.") -> Path:
    import lmtune
    from lmtune.config import RunConfig

    records = [{"instruction": p, "output": answer} for p in PROMPTS]
    name = "smollm2-sft" if answer == "A short, helpful answer." else "smollm2-sft-second"
    data = directory / f"{name}.json"
    data.write_text(json.dumps(records * 2), encoding="utf-8")
    out = directory / name
    cfg = {
        "model": "SmolLM2-135M-Instruct",
        "task": {"type": "sft", "sample_generations": 0, "generation_eval_samples": 0},
        "method": {"name": "lora", "r": 8},
        "data": {"train": str(data), "validation": str(data), "test": str(data), "max_length": 64},
        "train": {"max_steps": 2, "batch_size": 4, "report_to": ["none"], "eval_strategy": "no"},
        "output_dir": str(out),
    }
    lmtune.train(RunConfig.from_dict(cfg))
    return out


def body(i: int, max_tokens: int, stream: bool, models: tuple[str, ...] = ("default",)) -> dict:
    message = {"role": "user", "content": PROMPTS[i % len(PROMPTS)]}
    return {
        "model": models[i % len(models)],
        "messages": [message],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }


async def load(
    url: str,
    clients: int,
    requests: int,
    max_tokens: int,
    stream: bool,
    models: tuple[str, ...] = ("default",),
) -> dict[str, float]:
    """`requests` chat completions over `clients` concurrent clients (round-robin over `models`)."""
    import httpx

    latencies: list[float] = []
    first_tokens: list[float] = []
    tokens = 0
    counter = iter(range(requests))

    async def one(http: httpx.AsyncClient, i: int) -> None:
        nonlocal tokens
        started = time.perf_counter()
        if not stream:
            response = await http.post("/v1/chat/completions", json=body(i, max_tokens, False, models))
            response.raise_for_status()
            tokens += response.json()["usage"]["completion_tokens"]
        else:
            first = None
            request = {**body(i, max_tokens, True), "stream_options": {"include_usage": True}}
            async with http.stream("POST", "/v1/chat/completions", json=request) as response:
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        tokens += chunk["usage"]["completion_tokens"]
                    elif first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        first = time.perf_counter() - started
            first_tokens.append(first if first is not None else time.perf_counter() - started)
        latencies.append(time.perf_counter() - started)

    async def client(http: httpx.AsyncClient) -> None:
        for i in counter:
            await one(http, i)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        seconds = time.perf_counter() - started
    return {
        "tokens_per_s": tokens / seconds,
        "p50": 1000 * statistics.median(latencies),
        "p99": 1000 * percentile(latencies, 0.99),
        "ttft_p50": 1000 * statistics.median(first_tokens) if first_tokens else float("nan"),
        "ttft_p99": 1000 * percentile(first_tokens, 0.99) if first_tokens else float("nan"),
    }


def plain_rows(run_dir: Path, args: argparse.Namespace) -> list[tuple[str, int, dict]]:
    """One adapter: batching off and on (non-streamed), and streamed."""
    rows = []
    for batching in (False, True):
        with running_server(run_dir, batching, 10.0) as url:
            asyncio.run(load(url, 2, 2, 4, False))  # warm-up
            modes = [("non-streamed", False)] + ([("streamed", True)] if batching else [])
            for mode, stream in modes:
                for clients in (int(c) for c in args.concurrency.split(",")):
                    result = asyncio.run(load(url, clients, args.requests, args.max_tokens, stream))
                    label = mode if stream else f"{mode}, batching {'on' if batching else 'off'}"
                    rows.append((label, clients, result))
                    print(f"{label}, {clients} clients: {result['tokens_per_s']:.1f} tok/s", file=sys.stderr)
    return rows


def mixed_rows(run_dir: Path, second: Path, args: argparse.Namespace) -> list[tuple[str, int, dict]]:
    """Three adapters on one base, requests round-robin: mixed batches vs grouped per adapter."""
    models = ("default", "second", "base")
    extra = ("--adapter", f"second={second}", "--adapter", "base=none")
    rows = []
    for mixed in (False, True):
        with running_server(run_dir, True, 10.0, extra + (() if mixed else ("--no-mixed-batches",))) as url:
            asyncio.run(load(url, 3, 3, 4, False, models))  # warm-up
            for clients in (int(c) for c in args.concurrency.split(",")):
                result = asyncio.run(load(url, clients, args.requests, args.max_tokens, False, models))
                label = "mixed in one batch" if mixed else "grouped per adapter"
                rows.append((label, clients, result))
                print(f"{label}, {clients} clients: {result['tokens_per_s']:.1f} tok/s", file=sys.stderr)
    return rows


def print_table(rows: list[tuple[str, int, dict]], first: str) -> None:
    print(f"| {first} | clients | generated tok/s | latency p50 ms | p99 ms | TTFT p50 ms | TTFT p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, clients, r in rows:
        ttft = f"{r['ttft_p50']:.0f} | {r['ttft_p99']:.0f}" if label == "streamed" else "- | -"
        print(f"| {label} | {clients} | {r['tokens_per_s']:.1f} | {r['p50']:.0f} | {r['p99']:.0f} | {ttft} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "run_dir", nargs="?", type=Path, help="a finished LoRA SFT/preference run (default: train one)"
    )
    parser.add_argument("--second", type=Path, help="a second LoRA run on the same base (default: train one)")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--sections", default="plain,mixed", help="which tables: plain, mixed or both")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="lmtune-bench-generate-"))
    run_dir = args.run_dir or train_small_run(scratch)
    sections = args.sections.split(",")
    head = f"`lmtune serve` /v1/chat/completions on {run_dir}: {args.requests} requests per row, greedy, "
    print(f"\n{head}at most {args.max_tokens} new tokens each")
    if "plain" in sections:
        print()
        print_table(plain_rows(run_dir, args), "requests")
    if "mixed" in sections:
        second = args.second or train_small_run(scratch, "Sorry, I cannot say.")
        print(f"\nThree adapters on one base model (`default`, `second` = {second}, `base` = adapters off), ")
        print("requests round-robin over them, non-streamed, micro-batching on:\n")
        print_table(mixed_rows(run_dir, second, args), "adapters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
