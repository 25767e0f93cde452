"""The `lmtune` command line: train, eval, predict, explain, serve, sweep, compare, ensemble, export, distill,
models, methods, tasks.

Every command builds the same `RunConfig` as the YAML file and the Python API. A user
error prints one line and exits with code 2; there is no traceback for those.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape
from rich.table import Table as RichTable

from lmtune.errors import LmtuneError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Fine-tune, evaluate and use language models. `lmtune COMMAND --help` for details.",
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def _quiet_libraries() -> None:
    """Keep the terminal to progress and results; library chatter goes away."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()


# ---- flags shared by several commands ----------------------------------------------------------
# Declared once; typer copies the option of each parameter that uses one of these.
ConfigArg = Annotated[Path | None, typer.Argument(help="YAML run config (optional if flags say enough).")]
ModelFlag = Annotated[str | None, typer.Option(help="Model: packaged name, local dir or hub id.")]
TaskFlag = Annotated[str | None, typer.Option(help="Task type, e.g. classification.")]
TrainFileFlag = Annotated[str | None, typer.Option("--train", help="Training data file.")]
ValidationFlag = Annotated[str | None, typer.Option(help="Validation data file.")]
TestFlag = Annotated[str | None, typer.Option(help="Test data file.")]
EpochsFlag = Annotated[float | None, typer.Option(help="Sets train.epochs.")]
SetFlag = Annotated[
    list[str] | None, typer.Option("--set", help="Override any key: --set train.batch_size=32")
]
SetConfigFlag = Annotated[list[str] | None, typer.Option("--set", help="Override any key of the config.")]
OverwriteFlag = Annotated[bool, typer.Option(help="Replace an existing run in the output dir.")]
RunDirArg = Annotated[Path, typer.Argument(help="A finished run directory.")]
LabelledDataFlag = Annotated[str, typer.Option(help="Labelled data file to evaluate on.")]
MetricsOutputFlag = Annotated[Path | None, typer.Option(help="Write the metrics as JSON here.")]


def _run_flags(
    model: str | None,
    task: str | None,
    train_file: str | None,
    validation: str | None,
    test: str | None,
    epochs: float | None,
) -> dict[str, Any]:
    """The config keys that the shared run flags set (None: not given)."""
    return {
        "model.name": model,
        "task.type": task,
        "data.train": train_file,
        "data.validation": validation,
        "data.test": test,
        "train.epochs": epochs,
    }


def _raw_config(config: Path | None, flags: dict[str, Any], set_: list[str] | None) -> dict[str, Any]:
    """The YAML file (if any), then the flags given, then --set: later ones win."""
    from lmtune.config import apply_overrides, load_yaml

    raw: dict[str, Any] = load_yaml(config) if config else {}
    overrides = [f"{key}={json.dumps(value)}" for key, value in flags.items() if value is not None]
    raw = apply_overrides(raw, overrides + list(set_ or []))
    if "model" not in raw:
        raise LmtuneError(
            "no model given", hint="pass --model NAME or set `model:` in the config (see `lmtune models`)"
        )
    return raw


# ---- train ------------------------------------------------------------------------------------
@app.command()
def train(
    config: ConfigArg = None,
    model: ModelFlag = None,
    task: TaskFlag = None,
    method: Annotated[str | None, typer.Option(help="Method, e.g. lora, full, freeze, bitfit.")] = None,
    train_file: TrainFileFlag = None,
    validation: ValidationFlag = None,
    test: TestFlag = None,
    output_dir: Annotated[str | None, typer.Option("--output-dir", "-o", help="Run directory.")] = None,
    epochs: EpochsFlag = None,
    set_: SetFlag = None,
    overwrite: OverwriteFlag = False,
    resume: Annotated[
        bool, typer.Option(help="Continue an unfinished run (the default for the same config).")
    ] = False,
    num_processes: Annotated[
        int,
        typer.Option(
            min=1, help="Train in N processes on this machine (accelerate launch; DDP unless configured)."
        ),
    ] = 1,
    allow_code: Annotated[
        bool,
        typer.Option(
            "--allow-code", help="Let the task run your Python code (GRPO `module:function` rewards)."
        ),
    ] = False,
) -> None:
    """Fine-tune a model and write a run directory with model, metrics and report."""
    from lmtune.config import RunConfig
    from lmtune.run import prepare_output_dir
    from lmtune.run import train as run_train

    flags = {
        **_run_flags(model, task, train_file, validation, test, epochs),
        "method.name": method,
        "output_dir": output_dir,
        # Off unless asked: only the tasks that run user code have this option (others refuse it).
        "task.allow_code": True if allow_code else None,
    }
    raw = _raw_config(config, flags, set_)
    cfg = RunConfig.from_dict(raw, source=str(config) if config else "command line")
    if resume and prepare_output_dir(cfg, overwrite=False) != "resume":
        raise LmtuneError(f"nothing to resume in {cfg.output_dir}", hint="drop --resume to start a new run")
    _quiet_libraries()
    from lmtune.training import distributed

    if num_processes > 1 and not distributed.is_distributed():
        _launch_processes(cfg, num_processes, overwrite)
        _print_report(Path(cfg.output_dir))
        return
    if distributed.launched_as_main():
        console.print(f"[bold]lmtune[/bold] {cfg.method.name} on {cfg.model.name} -> {cfg.output_dir}")
    run = run_train(cfg, overwrite=overwrite)
    if run is not None:  # None: a non-main process of a multi-process run
        _print_report(run.directory)


def _launch_processes(cfg: Any, num_processes: int, overwrite: bool) -> None:
    """Re-run this training in `num_processes` processes through accelerate launch.

    The children read the config as validated here (one temporary YAML), so flags, --set and
    the config file mean exactly the same in every process.
    """
    import subprocess
    import tempfile

    from lmtune.training import distributed

    with tempfile.TemporaryDirectory(prefix="lmtune-launch-") as tmp:
        config_path = Path(tmp) / "config.yaml"
        config_path.write_text(cfg.to_yaml(), encoding="utf-8")
        args = ["train", str(config_path), *(["--overwrite"] if overwrite else [])]
        command = distributed.launch_command(num_processes, args)
        console.print(
            f"[bold]lmtune[/bold] {cfg.method.name} on {cfg.model.name} -> {cfg.output_dir} "
            f"in {num_processes} processes"
        )
        code = subprocess.call(command)
    if code != 0:
        # The processes already printed their error; keep the exit status (2 for bad input).
        raise typer.Exit(code if code in (1, 2) else 1)


def _dataclass_flags(ctx: typer.Context, cls: type) -> dict[str, Any]:
    """The command's flags that are named as fields of the dataclass `cls` (set one to one)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {key: value for key, value in ctx.params.items() if key in names}


def _print_markdown(path: Path) -> None:
    """A markdown file lmtune wrote, without its plot images (a terminal cannot show them)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    console.print(Markdown("\n".join(line for line in lines if not line.startswith("!["))))


def _print_table(table: RichTable, output: Path | None, result: dict[str, Any]) -> None:
    """Print the metrics table; with --output, also write `result` as JSON."""
    from lmtune.io import write_json

    console.print(table)
    if output:
        write_json(output, result)
        console.print(f"metrics written to {output}")


def _print_report(directory: Path) -> None:
    if (directory / "report.md").exists():
        _print_markdown(directory / "report.md")
    console.print(f"\nrun directory: [bold]{directory}[/bold] (report.md, metrics.json, model/)")


# ---- eval -------------------------------------------------------------------------------------
@app.command("eval")
def eval_(
    run_dir: RunDirArg,
    data: LabelledDataFlag,
    output: MetricsOutputFlag = None,
    group_column: Annotated[
        list[str] | None,
        typer.Option(
            help="Also report metrics per value of this column of --data (repeatable); not model input."
        ),
    ] = None,
    max_gap: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Flag groups whose accuracy or macro F1 is this far below all rows'."
        ),
    ] = 0.05,
    save_predictions: Annotated[
        bool,
        typer.Option(help="Also write each example's prediction to RUN/predictions/<data file stem>.jsonl."),
    ] = False,
) -> None:
    """Evaluate a finished run on a labelled file (per group too, with --group-column)."""
    from lmtune.run import load_run

    _quiet_libraries()
    if group_column:
        from lmtune.evaluation.fairness import evaluate_groups

        if save_predictions:
            raise LmtuneError(
                "--save-predictions cannot be combined with --group-column",
                hint="run `lmtune eval` once with each",
            )
        metrics = evaluate_groups(run_dir, data, group_column, max_gap)
    elif save_predictions:
        metrics = _eval_saving_predictions(run_dir, data)
    else:
        metrics = load_run(run_dir).evaluate(data)
    table = RichTable("metric", "value", title=f"{run_dir} on {data}")
    # Multi-task runs nest one metric dict per sub-task: show them as `task.metric`.
    rows = [
        (f"{key}.{sub}" if isinstance(value, dict) else key, v)
        for key, value in metrics.items()
        if key not in ("details", "groups")
        for sub, v in (value.items() if isinstance(value, dict) else [(key, value)])
    ]
    for key, value in rows:
        if isinstance(value, float | int) and not isinstance(value, bool):
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    if group_column:
        _print_groups(metrics["groups"], output)
    _print_table(table, output, metrics)


def _eval_saving_predictions(run_dir: Path, data: str) -> dict[str, Any]:
    """`Run.evaluate`, writing the records to RUN/predictions/<stem>.jsonl (never training's files)."""
    from lmtune.evaluation.predictions import check_eval_name, write_predictions
    from lmtune.run import load_run

    name = check_eval_name(data)  # before the model loads: a refused name costs nothing
    result = load_run(run_dir).evaluate_result(data)
    path = write_predictions(run_dir, name, result.records)
    console.print(f"{len(result.records)} predictions written to {path}")
    return {**result.metrics, "details": result.details}


def _print_groups(groups: dict[str, Any], output: Path | None) -> None:
    """One table per group column ((!) marks flagged groups); with --output, a chart beside it."""
    from lmtune.evaluation.fairness import groups_png, table_rows

    for column, report in groups.items():
        header, rows = table_rows(report)
        gaps = report["gaps"]
        caption = ", ".join(f"{k} {v:.4f}" for k, v in gaps.items() if isinstance(v, float))
        table = RichTable(*header, title=f"by {escape(column)}", caption=caption)
        for row in rows:
            table.add_row(*(escape(cell) for cell in row))
        console.print(table)
        for flag in report["flagged"]:
            console.print(
                f"[yellow]flagged:[/yellow] {escape(column)}={escape(flag['group'])}: {flag['metric']} "
                f"{flag['value']:.4f}, {flag['below_by']:.4f} below all rows (n={flag['n']})"
            )
    if output:
        chart = output.with_name(f"{output.stem}_groups.png")
        groups_png(groups, chart)
        console.print(f"group chart written to {chart}")


# ---- predict ----------------------------------------------------------------------------------
@app.command()
def predict(
    run_dir: RunDirArg,
    input_file: Annotated[
        str | None, typer.Option("--input", "-i", help="File of inputs (csv/tsv/json/jsonl).")
    ] = None,
    text: Annotated[list[str] | None, typer.Option(help="Text to predict (repeatable).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="JSONL file to write.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Inference batch size.")] = None,
    option: Annotated[
        list[str] | None, typer.Option(help="Task prediction option, e.g. --option max_new_tokens=64.")
    ] = None,
) -> None:
    """Predict with a finished run; writes JSONL (task-shaped rows, e.g. {"text", "label", "scores"})."""
    from lmtune.config import parse_override
    from lmtune.io import write_jsonl
    from lmtune.run import load_run

    if not input_file and not text:
        raise LmtuneError("nothing to predict", hint="pass --input FILE or --text 'some text'")
    if input_file and text:
        raise LmtuneError("give either --input or --text, not both")
    _quiet_libraries()
    run = load_run(run_dir)
    options = {}
    for item in option or []:
        parts, value = parse_override(item)
        options[".".join(parts)] = value
    if input_file:
        rows = run.predict_file(input_file, batch_size, options)
    else:
        rows = run.predict(list(text or []), batch_size, options)
    if output:
        write_jsonl(output, rows)
        err_console.print(f"{len(rows)} predictions written to {output}")
    else:
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")


# ---- explain ----------------------------------------------------------------------------------
@app.command()
def explain(
    run_dir: RunDirArg,
    text: Annotated[list[str] | None, typer.Option(help="Text to explain (repeatable).")] = None,
    input_file: Annotated[
        str | None, typer.Option("--input", "-i", help="File of inputs (csv/tsv/json/jsonl).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="HTML heatmap to write (JSONL beside it).")
    ] = None,
    jsonl: Annotated[Path | None, typer.Option(help="JSONL file of the records to write.")] = None,
    target: Annotated[str | None, typer.Option(help="Explain this label (default: the prediction).")] = None,
    method: Annotated[str, typer.Option(help="ig (integrated gradients) or rollout (attention).")] = "ig",
    steps: Annotated[int, typer.Option(min=1, max=512, help="Integrated-gradients steps.")] = 32,
    reduce: Annotated[str, typer.Option(help="Per-token score: sum (signed) or l2 (magnitude).")] = "sum",
    top: Annotated[int, typer.Option(min=1, help="Top tokens shown per input.")] = 5,
    faithfulness: Annotated[
        bool, typer.Option(help="Measure comprehensiveness and sufficiency on --input's rows.")
    ] = False,
    rows: Annotated[int, typer.Option(min=1, help="Rows (a seeded sample) for --faithfulness.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the sample and the random baseline.")] = 0,
    update_metrics: Annotated[
        bool, typer.Option(help="With --faithfulness: record it in the run's metrics.json.")
    ] = False,
    report: Annotated[
        bool, typer.Option(help="Explain --input's most confident errors in the run's report.md.")
    ] = False,
    errors: Annotated[int, typer.Option(min=1, help="Errors --report explains.")] = 5,
    option: Annotated[
        list[str] | None, typer.Option(help="Task prediction option, e.g. --option max_new_tokens=64.")
    ] = None,
) -> None:
    """Token attributions: which words moved the prediction (terminal colour, HTML, JSONL)."""
    from lmtune.config import parse_override
    from lmtune.evaluation.explain import ExplainSettings, require_explainable
    from lmtune.run import load_run

    if not input_file and not text:
        raise LmtuneError("nothing to explain", hint="pass --text 'some text' or --input FILE")
    if input_file and text:
        raise LmtuneError("give either --input or --text, not both")
    if (faithfulness or report) and not input_file:
        raise LmtuneError("--faithfulness and --report need a labelled --input FILE")
    if update_metrics and not faithfulness:
        raise LmtuneError("--update-metrics records --faithfulness: pass both")
    settings = ExplainSettings(method=method, n_steps=steps, reduce=reduce, target=target)
    _quiet_libraries()
    run = load_run(run_dir)
    require_explainable(run.task)
    options = dict(_override_pair(item, parse_override) for item in option or [])
    if text or output or jsonl or not (faithfulness or report):
        items = [{"text": t} for t in text] if text else run.task.read_inputs(input_file)
        _explain_inputs(run, items, settings, options, output, jsonl, top)
    scores = None
    if faithfulness:
        scores = _explain_faithfulness(run, input_file, settings, rows, seed, update_metrics)
    if report:
        _explain_report(run, input_file, settings, errors, scores)


def _override_pair(item: str, parse: Any) -> tuple[str, Any]:
    parts, value = parse(item)
    return ".".join(parts), value


def _explain_inputs(
    run: Any, items: list[dict[str, Any]], settings: Any, options: dict[str, Any], output: Path | None,
    jsonl: Path | None, top: int,
) -> None:  # fmt: skip
    """Explain the inputs; print them, or write HTML and JSONL."""
    from lmtune.evaluation.explain_render import print_records, write_html
    from lmtune.io import write_jsonl

    records = run.explain(items, settings, options)
    jsonl = jsonl or (output.with_suffix(".jsonl") if output else None)
    if output:
        write_html(output, records, title=f"lmtune explanations: {run.directory.name}")
    if jsonl:
        write_jsonl(jsonl, records)
    if output or jsonl:
        written = " and ".join(str(p) for p in (output, jsonl) if p)
        err_console.print(f"{len(records)} explanations written to {written}")
    else:
        print_records(console, records, top)


def _explain_faithfulness(
    run: Any, input_file: str, settings: Any, rows: int, seed: int, update_metrics: bool
) -> dict[str, Any]:
    """Measure faithfulness on the file's rows, print it, and record it in metrics.json if asked."""
    from lmtune.evaluation.explain_faithfulness import faithfulness
    from lmtune.io import write_json

    items = run.task.read_inputs(input_file)
    scores = faithfulness(run.task, run.model, run.tokenizer, items, settings, seed=seed, limit=rows)
    title = f"faithfulness on {scores['rows']} rows"
    table = RichTable("score", scores["method"], "random tokens", title=title)
    for name in ("comprehensiveness", "sufficiency"):
        table.add_row(name, f"{scores[name]:.4f}", f"{scores['random'][name]:.4f}")
    console.print(table)
    console.print("comprehensiveness: higher is better; sufficiency: lower is better.")
    if update_metrics:
        path = run.directory / "metrics.json"
        metrics = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        write_json(path, {**metrics, "explanations": scores})
        console.print(f"recorded under 'explanations' in {path}")
    return scores


def _explain_report(
    run: Any, input_file: str, settings: Any, errors: int, scores: dict[str, Any] | None
) -> None:
    """Rewrite report.md's explanation section: the most confident errors (and faithfulness)."""
    from lmtune.evaluation.explain_report import error_section, faithfulness_lines, replace_report_section

    dataset = run.task.read_labelled(input_file)
    lines = faithfulness_lines(scores) if scores else []
    lines += error_section(run.task, run.model, run.tokenizer, dataset, errors, settings)
    replace_report_section(run.directory / "report.md", lines)
    console.print(f"explained errors written to {run.directory / 'report.md'}")


# ---- board ------------------------------------------------------------------------------------
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@app.command()
def board(
    runs_dir: Annotated[Path, typer.Option(help="Where runs are found (recursively) and launched.")] = Path(
        "runs"
    ),
    data_dir: Annotated[
        list[Path] | None,
        typer.Option(help="A folder the launch form may pick data files from (repeatable)."),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Interface to bind; any but loopback needs a token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 7860,
    token: Annotated[
        str | None, typer.Option(help="Required on every request (default: $LMTUNE_BOARD_TOKEN).")
    ] = None,
    max_upload_mb: Annotated[
        float, typer.Option(min=0.001, help="Largest data file an upload may be.")
    ] = 50.0,
    max_running_jobs: Annotated[int, typer.Option(min=1, help="Trainings run at once (the rest queue).")] = 1,
) -> None:
    """The local web board: every run under RUNS_DIR, side by side; launch, watch and try runs."""
    from lmtune.board.app import TOKEN_ENV, BoardSettings, create_board_app, token_from_env

    token = token or token_from_env()
    if host not in LOCAL_HOSTS and not token:
        raise LmtuneError(
            f"--host {host} would expose the board to other machines without a token",
            hint=f"pass --token (or set {TOKEN_ENV}), or keep the default --host 127.0.0.1",
        )
    data_dirs = list(data_dir or [])
    for folder in [*data_dirs]:
        if not folder.is_dir():
            raise LmtuneError(f"--data-dir {folder} is not a folder")
    runs_dir.mkdir(parents=True, exist_ok=True)
    _quiet_libraries()
    import uvicorn

    settings = BoardSettings(runs_dir, data_dirs, token, max_upload_mb, max_running_jobs)
    server = create_board_app(settings)
    where = f"http://{host}:{port}" + ("/?token=..." if token else "")
    console.print(
        f"lmtune board on {where}  runs: {runs_dir.resolve()}  data: {', '.join(map(str, data_dirs)) or '-'}"
    )
    uvicorn.run(server, host=host, port=port, log_level="warning")


# ---- serve ------------------------------------------------------------------------------------
def _adapter_flags(specs: list[str]) -> dict[str, str]:
    """`--adapter NAME=RUN_DIR` flags as {name: run dir}, each name once."""
    extra: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise LmtuneError(f"--adapter {spec!r}: expected NAME=RUN_DIR", hint="e.g. --adapter v2=runs/v2")
        if name in extra:
            raise LmtuneError(f"--adapter {name} is given twice")
        extra[name] = path
    return extra


@app.command()
def serve(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory (served as adapter 'default').")],
    adapter: Annotated[
        list[str] | None,
        typer.Option(
            help="Extra adapter NAME=RUN_DIR on the same base model (repeatable); NAME=none serves "
            "the base model itself (a peft run's adapters switched off)."
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to bind; the default is local only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    max_batch_size: Annotated[int, typer.Option(min=1, help="Items per model forward.")] = 32,
    max_wait_ms: Annotated[float, typer.Option(min=0, help="How long a batch waits to fill.")] = 10.0,
    max_queue: Annotated[int, typer.Option(min=1, help="Requests waiting before 503.")] = 256,
    timeout_s: Annotated[float, typer.Option(min=0.001, help="Per-request limit before 504.")] = 30.0,
    max_request_items: Annotated[int, typer.Option(min=1, help="Inputs per request before 413.")] = 64,
    max_text_chars: Annotated[int, typer.Option(min=1, help="Characters per request before 413.")] = 20_000,
    max_new_tokens: Annotated[
        int, typer.Option(min=1, help="Most tokens an OpenAI-style request may generate (max_tokens).")
    ] = 512,
    no_batching: Annotated[bool, typer.Option(help="One forward per request (for comparison).")] = False,
    no_mixed_batches: Annotated[
        bool,
        typer.Option(help="Batch each LoRA adapter's requests apart, not mixed (for comparison)."),
    ] = False,
    no_merge: Annotated[
        bool,
        typer.Option(
            help="Keep a lone adapter unmerged (by default it is merged into the base weights while "
            "it is the only one served, and unmerged when another joins)."
        ),
    ] = False,
    precision: Annotated[
        str,
        typer.Option(
            help="Inference precision: run (the run's own; answers equal `lmtune predict`'s), fp32, "
            "or bf16 (GPUs, and CPUs with AMX/AVX512-BF16: faster, scores differ in the 4th decimal)."
        ),
    ] = "run",
    admin_token_env: Annotated[
        str, typer.Option(help="Env var holding the bearer token for /admin (unset: admin disabled).")
    ] = "LMTUNE_ADMIN_TOKEN",
) -> None:
    """Serve a run over HTTP: POST /predict, GET /info, /health, /metrics, /docs; for runs that
    generate text also OpenAI's /v1/chat/completions, /v1/completions and /v1/models."""
    extra = _adapter_flags(adapter or [])
    if "torch" not in sys.modules:
        # OpenMP threads that spin between a forward's operations take the cores the event loop
        # and the clients need; sleeping ones gave 1.35x the requests/s at 16 clients on 2 cores
        # (MiniLM LoRA, benchmarks/SERVE_LOAD.md). Read once, when OpenMP loads with torch.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _quiet_libraries()
    import uvicorn

    from lmtune.serving.app import ServeSettings, check_adapter_name, create_app

    for name in extra:
        check_adapter_name(name)
    settings = ServeSettings(
        **_dataclass_flags(ctx, ServeSettings),  # max_batch_size ... max_text_chars
        batching=not no_batching,
        mixed_adapter_batches=not no_mixed_batches,
        merge_single_adapter=not no_merge,
        admin_token=os.environ.get(admin_token_env) or None,
    )
    server = create_app(run_dir, extra, settings)
    if host not in LOCAL_HOSTS:
        err_console.print(f"[yellow]warning:[/yellow] listening on {host}: reachable from other machines")
    admin = f"on (token in ${admin_token_env})" if settings.admin_token else "off"
    err_console.print(
        f"serving {run_dir} (+{len(extra)} adapters) on http://{host}:{port}  docs: /docs  admin: {admin}",
        soft_wrap=True,
    )
    uvicorn.run(server, host=host, port=port, log_level="info")


# ---- experiments: sweep, compare, ensemble ------------------------------------------------------
@app.command()
def sweep(
    config: Annotated[Path, typer.Argument(help="YAML run config with a `sweep:` section.")],
    output_dir: Annotated[
        str, typer.Option("--output-dir", "-o", help="Sweep directory (study.db, trials).")
    ],
    n_jobs: Annotated[
        int,
        typer.Option(
            min=1,
            help="Trials in parallel threads (on a 2-core machine this rarely helps; Accelerate's "
            "state is one per process, so trial setups take turns).",
        ),
    ] = 1,
    set_: SetConfigFlag = None,
) -> None:
    """Search hyperparameters with Optuna; re-running the same command resumes the sweep."""
    from lmtune.search.sweep import load_sweep_config
    from lmtune.search.sweep import sweep as run_sweep

    raw = load_sweep_config(config, list(set_ or []))
    _quiet_libraries()
    summary = run_sweep(raw, output_dir, n_jobs=n_jobs, source=str(config))
    _print_markdown(Path(output_dir) / "summary.md")
    if summary["best"]:
        console.print(f"best config: [bold]{Path(output_dir) / 'best.yaml'}[/bold]")


@app.command()
def compare(
    config: ConfigArg = None,
    methods: Annotated[
        str | None, typer.Option(help="Comma-separated methods; default: every registered method.")
    ] = None,
    model: ModelFlag = None,
    task: TaskFlag = None,
    train_file: TrainFileFlag = None,
    validation: ValidationFlag = None,
    test: TestFlag = None,
    output_dir: Annotated[
        str, typer.Option("--output-dir", "-o", help="Comparison directory.")
    ] = "runs/compare",
    epochs: EpochsFlag = None,
    per_method_sweep: Annotated[
        int | None,
        typer.Option(
            "--lr-sweep",
            "--per-method-sweep",
            min=1,
            help="Per method, sweep the learning rate over N trials on validation first.",
        ),
    ] = None,
    across: Annotated[
        str | None,
        typer.Option(
            help="One more config key to vary with every method: KEY=V1,V2 (task.algorithm=dpo,orpo)."
        ),
    ] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per method; the table shows mean ± std.")] = 1,
    steps: Annotated[
        int | None, typer.Option(min=1, help="The same optimizer steps for every method (= steps:N).")
    ] = None,
    budget: Annotated[
        str | None,
        typer.Option(
            help="Every method's budget: steps:N (optimizer steps), time:SECONDS (training time), "
            "early-stopping[:MAX_EPOCHS] (until validation stops improving), epochs (the config's), "
            "auto (steps from the training set's size); default: auto, or the epochs where the "
            "config sets train.epochs or train.max_steps."
        ),
    ] = None,
    latency: Annotated[
        bool, typer.Option(help="Time each model's batch-1 forward, unmerged and merged.")
    ] = True,
    set_: SetConfigFlag = None,
) -> None:
    """Train several methods on the same data and budget; table, Pareto plot and recommendation."""
    from lmtune.search.compare import compare as run_compare

    raw = _raw_config(config, _run_flags(model, task, train_file, validation, test, epochs), set_)
    chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    _quiet_libraries()
    result = run_compare(
        raw, chosen, output_dir, per_method_sweep, _across(across), seeds, steps, budget, latency
    )
    _print_markdown(Path(output_dir) / "comparison.md")
    if not result["recommendation"]:
        raise LmtuneError("no method finished", hint=f"see the reasons in {output_dir}/comparison.md")


def _across(flag: str | None) -> tuple[str, list[Any]] | None:
    """`KEY=V1,V2` as (KEY, [V1, V2]); values read as YAML scalars (0.1 is a number)."""
    if flag is None:
        return None
    key, sep, values = flag.partition("=")
    if not sep or not key.strip():
        raise LmtuneError(f"--across {flag!r}: expected KEY=V1,V2", hint="--across task.algorithm=dpo,orpo")
    return key.strip(), [yaml.safe_load(v.strip()) for v in values.split(",") if v.strip()]


@app.command()
def ensemble(
    run_dirs: Annotated[list[Path], typer.Argument(help="Two or more finished classification runs.")],
    data: LabelledDataFlag,
    output: MetricsOutputFlag = None,
) -> None:
    """Average the class probabilities of several runs; the ensemble's metrics beside each member's."""
    from lmtune.ensemble import ensemble as run_ensemble

    _quiet_libraries()
    result = run_ensemble(list(run_dirs), data)
    keys = [k for k, v in result["ensemble"].items() if isinstance(v, float)]
    table = RichTable("model", *keys, title=f"Ensemble on {data}")
    table.add_row("ensemble (mean probabilities)", *(f"{result['ensemble'][k]:.4f}" for k in keys))
    for name, metrics in result["members"].items():
        table.add_row(name, *(f"{metrics[k]:.4f}" for k in keys))
    _print_table(table, output, result)


@app.command()
def probe(
    run_dir: RunDirArg,
    template: Annotated[str, typer.Option(help='Text with {name} placeholders, e.g. "{name} was great."')],
    fill: Annotated[
        list[str], typer.Option(help="NAME=FILE: the values of {NAME}, one a line (repeatable).")
    ],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the probe as JSON.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Inference batch size.")] = None,
) -> None:
    """Counterfactual probe: predict a template filled with every value; largest gaps per label."""
    from lmtune.evaluation.probe import probe as run_probe
    from lmtune.evaluation.probe import values_text
    from lmtune.io import write_json

    _quiet_libraries()
    result = run_probe(run_dir, template, fill, batch_size=batch_size)
    labels = list(result["gaps"])
    shown = labels[:8]  # a wide label set would not fit a terminal; the JSON has every label
    table = RichTable("values", "prediction", *shown, title=f"{run_dir}: {escape(template)}")
    for row in result["results"]:
        label = row["label"] if isinstance(row["label"], str) else ", ".join(row["label"])
        scores = (f"{row['scores'][name]:.4f}" for name in shown)
        table.add_row(escape(values_text(row["values"])), escape(label), *scores)
    console.print(table)
    gaps = RichTable("label", "largest gap", "highest (p)", "lowest (p)", title="Probability gaps")
    for name, gap in sorted(result["gaps"].items(), key=lambda item: -item[1]["gap"]):
        high, low = gap["highest"], gap["lowest"]
        gaps.add_row(
            escape(name),
            f"{gap['gap']:.4f}",
            f"{escape(values_text(high['values']))} ({high['probability']:.4f})",
            f"{escape(values_text(low['values']))} ({low['probability']:.4f})",
        )
    console.print(gaps)
    if output:
        write_json(output, result)
        console.print(f"probe written to {output}")


# ---- export and distill -----------------------------------------------------------------------
@app.command()
def export(
    ctx: typer.Context,
    run_dir: RunDirArg,
    to: Annotated[Path, typer.Option("--to", help="Directory for the variants and the table.")],
    merge: Annotated[bool, typer.Option(help="Merge LoRA-family adapters into a plain model.")] = True,
    keep_adapter: Annotated[bool, typer.Option(help="Also copy the run's adapter as trained.")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Dynamic int8 variant for CPU.")] = False,
    prune: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Magnitude-prune to this sparsity, e.g. 0.5.")
    ] = None,
    prune_heads: Annotated[int | None, typer.Option(min=1, help="Remove this many attention heads.")] = None,
    recover_steps: Annotated[
        int, typer.Option(min=0, help="Fine-tune pruned variants this many steps on the run's train data.")
    ] = 0,
    onnx: Annotated[bool, typer.Option("--onnx", help="ONNX variant, checked with onnxruntime.")] = False,
    gguf: Annotated[
        str | None, typer.Option(help="GGUF file of the merged decoder (llama.cpp, Ollama): f16 or q8_0.")
    ] = None,
    ollama: Annotated[bool, typer.Option("--ollama", help="With --gguf: an Ollama Modelfile.")] = False,
    benchmark: Annotated[bool, typer.Option(help="Measure CPU latency at batch 1 and 32.")] = True,
) -> None:
    """Write merged/int8/pruned/ONNX/GGUF variants of a run and a table comparing them."""
    from lmtune.compress.export import TABLE_MD, ExportOptions, export_run

    _quiet_libraries()
    export_run(run_dir, to, ExportOptions(**_dataclass_flags(ctx, ExportOptions)))
    console.print(Markdown((to / TABLE_MD).read_text(encoding="utf-8")))
    console.print(f"\nvariants and table: [bold]{to}[/bold] ({TABLE_MD}, export.json)")


@app.command()
def distill(
    teacher: Annotated[Path, typer.Option(help="The teacher: a finished run directory.")],
    student: Annotated[str, typer.Option(help="Student model: packaged name, local dir or hub id.")],
    output_dir: Annotated[str, typer.Option("--output-dir", "-o", help="Run directory for the student.")],
    method: Annotated[str, typer.Option(help="Fine-tuning method for the student.")] = "lora",
    temperature: Annotated[float, typer.Option(help="Softmax temperature of the soft labels.")] = 2.0,
    alpha: Annotated[float, typer.Option(help="Weight of the soft labels (1 - alpha: gold labels).")] = 0.5,
    student_layers: Annotated[
        int | None, typer.Option(min=1, help="Keep only the student's bottom N layers.")
    ] = None,
    epochs: EpochsFlag = None,
    set_: SetFlag = None,
    overwrite: OverwriteFlag = False,
) -> None:
    """Train a student on a run's soft labels; the result is a normal run directory."""
    from lmtune.compress.distill import distill as run_distill

    _quiet_libraries()
    overrides = list(set_ or []) + ([f"train.epochs={epochs}"] if epochs is not None else [])
    console.print(f"[bold]lmtune distill[/bold] {teacher} -> {student} ({method}) -> {output_dir}")
    run = run_distill(
        teacher,
        student,
        output_dir=output_dir,
        method=method,
        temperature=temperature,
        alpha=alpha,
        student_layers=student_layers,
        overrides=overrides,
        overwrite=overwrite,
    )
    record = run.metrics.get("distillation", {})
    for name, metrics in (("teacher", record.get("teacher_test")), ("student", run.metrics.get("test"))):
        if metrics:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            console.print(f"{name} test: {shown}")
    console.print(f"\nrun directory: [bold]{run.directory}[/bold] (report.md, metrics.json, model/)")


@app.command()
def audit(
    config: ConfigArg = None,
    model: ModelFlag = None,
    task: TaskFlag = None,
    train_file: TrainFileFlag = None,
    validation: ValidationFlag = None,
    test: TestFlag = None,
    set_: SetFlag = None,
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Where audit.csv/md go.")] = Path(
        "audit"
    ),
    thorough: Annotated[
        bool, typer.Option(help="Label issues from k fine-tuned folds of the run's method (slow).")
    ] = False,
    folds: Annotated[int, typer.Option(min=2, max=20, help="Folds for out-of-fold probabilities.")] = 5,
    near_duplicate: Annotated[
        float, typer.Option(min=0.5, max=1.0, help="Cosine at which two texts are near duplicates.")
    ] = 0.97,
    write_clean: Annotated[
        Path | None, typer.Option(help="Write train without label issues and duplicates here.")
    ] = None,
) -> None:
    """Audit the data: label issues, duplicates, leakage, outliers, imbalance, truncation."""
    from lmtune.config import RunConfig
    from lmtune.data.audit import ISSUES, AuditSettings
    from lmtune.data.audit_report import run_audit

    raw = _raw_config(config, _run_flags(model, task, train_file, validation, test, None), set_)
    cfg = RunConfig.from_dict(raw, source=str(config) if config else "command line")
    _quiet_libraries()
    mode = "thorough" if thorough else "fast"
    settings = AuditSettings(mode=mode, folds=folds, near_duplicate_similarity=near_duplicate)
    result = run_audit(cfg, settings, output_dir, write_clean)
    splits = list(result.summary["rows"])
    table = RichTable("issue", *splits, title=f"data audit ({mode}) of {cfg.data.train}")
    for issue in ISSUES:
        table.add_row(issue, *(str(result.summary["issues"][issue][s]) for s in splits))
    console.print(table)
    console.print(f"{len(result.findings)} findings: {output_dir / 'audit.csv'}, {output_dir / 'audit.md'}")
    if write_clean is not None:
        console.print(f"cleaned copy of {cfg.data.train}: {write_clean}")


@app.command("merge-adapters")
def merge_adapters(
    runs: Annotated[list[Path], typer.Argument(help="Two or more finished LoRA runs of one base model.")],
    output_dir: Annotated[Path, typer.Option("--output-dir", "-o", help="Run directory for the result.")],
    weights: Annotated[
        str | None, typer.Option(help="One weight per run, comma-separated (default: equal), e.g. 0.7,0.3.")
    ] = None,
    method: Annotated[
        str, typer.Option(help="peft's combination: linear, cat, svd, ties, dare_linear, dare_ties, ...")
    ] = "linear",
    density: Annotated[
        float | None, typer.Option(help="ties/dare/magnitude_prune: fraction of weights kept (default 0.5).")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="Labelled file to evaluate the result and each run on (default: the first run's test file)."
        ),
    ] = None,
    overwrite: OverwriteFlag = False,
) -> None:
    """Combine LoRA runs into one run (peft's add_weighted_adapter) for eval, predict, serve, export."""
    from lmtune.compress.merge_adapters import MergeSpec, evaluate_merge
    from lmtune.compress.merge_adapters import merge_adapters as combine
    from lmtune.run import read_finished_config

    _quiet_libraries()
    try:
        values = [float(w) for w in weights.split(",")] if weights else None
    except ValueError:
        raise LmtuneError(f"--weights {weights!r}: expected numbers separated by commas") from None
    spec = MergeSpec.of(list(runs), values, method, density)
    out = combine(spec, output_dir, overwrite)
    console.print(f"merged {len(runs)} runs ({spec.combination}) into [bold]{out}[/bold]")
    data = data or read_finished_config(spec.runs[0]).data.test
    if data:
        evaluate_merge(spec, out, data)
        _print_markdown(out / "merge.md")
    else:
        console.print("no test file to evaluate on: pass --data FILE, or run `lmtune eval` on the result")


# ---- listings ---------------------------------------------------------------------------------
@app.command()
def models() -> None:
    """The models lmtune can load here (packaged ones need no network)."""
    from lmtune.models import list_models

    table = RichTable(title="Packaged models")
    table.add_column("name", no_wrap=True, min_width=21)
    for column in ("hub id", "kind", "status", "description", "licence"):
        table.add_column(column)
    for row in list_models():
        cells = (row["hub_id"], row["architecture"], row["status"], row["description"], row["licence"])
        table.add_row(row["name"], *cells)
    console.print(table)
    console.print("Any local model directory or Hugging Face Hub id also works (the hub needs network).")


@app.command()
def methods() -> None:
    """Fine-tuning methods with their options and what each can do."""
    from lmtune.methods import METHODS

    def row(cls: Any) -> list[str]:
        return [cls.description, _defaults(cls.Options), f"{cls.default_learning_rate:g}", _listed(cls)]

    _print_registry("Methods", METHODS, ["options (default)", "default lr"], row)


@app.command()
def tasks() -> None:
    """Tasks with their options, the data keys only they read, and what each can do."""
    from lmtune.tasks import TASKS

    def row(cls: Any) -> list[str]:
        own_data = ", ".join(f"data.{k}" for k in cls.DataOptions.model_fields) or "-"
        return [cls.description, _defaults(cls.Options), own_data, _listed(cls)]

    _print_registry("Tasks", TASKS, ["options (default)", "own data keys"], row)


def _print_registry(title: str, registry: Any, columns: list[str], row: Any) -> None:
    table = RichTable(title=title)
    table.add_column("name", no_wrap=True, min_width=20)
    for column in ("description", *columns, "capabilities"):
        table.add_column(column)
    for name, cls in registry.classes().items():
        table.add_row(name, *row(cls))
    console.print(table)


def _defaults(options: Any) -> str:
    return ", ".join(f"{k}={f.default!r}" for k, f in options.model_fields.items()) or "-"


def _listed(cls: Any) -> str:
    return ", ".join(sorted(cls.capabilities)) or "-"


def main() -> None:
    try:
        app()
    except LmtuneError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted: re-run the same command to resume from the last checkpoint")
        sys.exit(130)


if __name__ == "__main__":
    main()
