"""How fast the board is with 500 run directories: API times cold and warm, and page loads in
headless Chromium (Debian's package) until the page has drawn its content.

    python benchmarks/board_load.py --template runs/sentiment [--runs 500] [--out benchmarks/BOARD.md]

The 500 runs are copies of one finished run (without its model weights, which the index never
reads), each with its own name, status and metrics, so every row differs. Without --template a
one-epoch MiniLM run on the built-in sentiment example is trained first (about 30 s).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
_LIGHT_FILES = ("run.json", "config.yaml", "metrics.json", "train_log.jsonl", "report.md", "README.md")


def make_runs(template: Path, root: Path, count: int, seed: int = 0) -> None:
    """`count` run directories under root/<group>/<name>, copied from `template` and varied."""
    rng = random.Random(seed)
    for i in range(count):
        target = root / f"group-{i % 20:02d}" / f"run-{i:04d}"
        target.mkdir(parents=True)
        for name in _LIGHT_FILES:
            if (template / name).is_file():
                shutil.copy2(template / name, target / name)
        for folder in ("predictions",):
            if (template / folder).is_dir():
                shutil.copytree(template / folder, target / folder)
        for png in template.glob("*.png"):
            shutil.copy2(png, target / png.name)
        metrics = json.loads((target / "metrics.json").read_text())
        for split in ("validation", "test"):
            for key, value in (metrics.get(split) or {}).items():
                if isinstance(value, float) and 0 <= value <= 1:
                    metrics[split][key] = round(min(1.0, max(0.0, value + rng.uniform(-0.1, 0.05))), 4)
        (target / "metrics.json").write_text(json.dumps(metrics))
        state = json.loads((target / "run.json").read_text())
        if i % 25 == 0:  # a few killed runs: the index checks their process
            state.update(status="running", pid=2**22 + i, host=socket.gethostname())
        (target / "run.json").write_text(json.dumps(state))


def timed(call: Any, repeat: int = 5) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(1000 * (time.perf_counter() - started))
    return {"first_ms": round(times[0], 1), "median_ms": round(statistics.median(times[1:] or times), 1)}


def api_times(root: Path) -> dict[str, dict[str, float]]:
    from fastapi.testclient import TestClient

    from lmtune.board.app import BoardSettings, create_board_app
    from lmtune.board.index import RunIndex

    out: dict[str, dict[str, float]] = {}
    # What the board's start-up warm-up costs: every run read once.
    cold = timed(lambda: RunIndex(root).scan(), repeat=1)
    out["index, cold (every run read; done in the background at start)"] = cold
    with TestClient(create_board_app(BoardSettings(root))) as client:
        time.sleep(2 * cold["first_ms"] / 1000 + 0.5)  # let the start-up warm-up finish
        runs = client.get("/api/runs")
        assert runs.status_code == 200 and len(runs.json()["runs"]) >= 500
        out["GET /api/runs, cached"] = timed(lambda: client.get("/api/runs"))
        for path in list(root.glob("group-0*/run-000*"))[:10]:
            (path / "metrics.json").touch()
        out["GET /api/runs, 10 runs changed"] = timed(lambda: client.get("/api/runs"), repeat=1)
        first = runs.json()["runs"][0]["path"]
        out["GET /api/run (one run's page)"] = timed(lambda: client.get("/api/run", params={"path": first}))
        five = [r["path"] for r in runs.json()["runs"][:5]]
        out["GET /api/compare (5 runs)"] = timed(lambda: client.get("/api/compare", params={"runs": five}))
    return out


def _serve(root: Path) -> tuple[str, Any]:
    import uvicorn

    from lmtune.board.app import BoardSettings, create_board_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_board_app(BoardSettings(root))
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def page_times(root: Path, repeat: int = 3) -> dict[str, dict[str, float]]:
    """Navigation start to drawn content, in Chromium: the runs table with every row, a run's
    first chart, a comparison's table. The first load of each also parses plotly.js (4.8 MB)
    from an empty browser cache; the rest find it cached, as a user's later visits do."""
    import urllib.request

    from playwright.sync_api import sync_playwright

    base, server = _serve(root)
    with urllib.request.urlopen(f"{base}/api/runs", timeout=120) as answer:  # the start-up warm-up's work
        answer.read()
    first = sorted(p.parent.relative_to(root).as_posix() for p in root.glob("*/*/run.json"))
    pages = {
        "Runs page, 500 rows drawn": ("#/runs", "document.querySelectorAll('tbody tr').length >= 500"),
        "Run page, first chart drawn": (
            f"#/run?path={first[1]}",
            "document.querySelector('.js-plotly-plot svg')",
        ),
        "Compare page, 5 runs": (
            f"#/compare?runs={','.join(first[1:6])}",
            "document.querySelectorAll('table tbody tr').length >= 1",
        ),
    }
    out: dict[str, dict[str, float]] = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
            page = browser.new_page()
            for name, (route, ready) in pages.items():
                times = []
                for _ in range(repeat):
                    page.goto("about:blank")
                    started = time.perf_counter()
                    page.goto(f"{base}/{route}")
                    page.wait_for_function(ready, timeout=60_000)
                    times.append(1000 * (time.perf_counter() - started))
                out[name] = {"first_ms": round(times[0], 1), "median_ms": round(statistics.median(times), 1)}
            browser.close()
    finally:
        server.should_exit = True
    return out


def train_template(workdir: Path) -> Path:
    import lmtune
    from lmtune.config import RunConfig

    examples = Path(__file__).resolve().parent.parent / "examples"
    overrides = [f"output_dir={workdir / 'template'}", "train.epochs=1"]
    cfg = RunConfig.from_yaml(examples / "sentiment.yaml", overrides)
    lmtune.train(cfg)
    return workdir / "template"


def write_table(results: dict[str, dict[str, float]], count: int, out: Path) -> None:
    lines = [
        "# Board load times",
        "",
        f"{count} run directories (copies of one finished MiniLM run, each varied), 2 CPU cores,",
        "server and browser on the same machine. Written by `benchmarks/board_load.py`.",
        "",
        "| what | first (ms) | median of the rest (ms) |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {t['first_ms']:,} | {t['median_ms']:,} |" for name, t in results.items()]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template", type=Path, help="a finished run to copy (default: train one)")
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "BOARD.md")
    parser.add_argument("--no-browser", action="store_true", help="API times only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="board-load-") as tmp:
        work = Path(tmp)
        template = args.template or train_template(work)
        root = work / "runs"
        make_runs(template, root, args.runs)
        results = api_times(root)
        if not args.no_browser:
            results.update(page_times(root))
        write_table(results, args.runs, args.out)


if __name__ == "__main__":
    main()
