"""The `lmtune` command line: train, eval, predict, models, methods, tasks.

Every command builds the same `RunConfig` as the YAML file and the Python API. A user
error prints one line and exits with code 2; there is no traceback for those.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markdown import Markdown
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


# ---- train ------------------------------------------------------------------------------------
@app.command()
def train(
    config: Annotated[
        Path | None, typer.Argument(help="YAML run config (optional if flags say enough).")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model: packaged name, local dir or hub id.")] = None,
    task: Annotated[str | None, typer.Option(help="Task type, e.g. classification.")] = None,
    method: Annotated[str | None, typer.Option(help="Method, e.g. lora, full, freeze, bitfit.")] = None,
    train_file: Annotated[str | None, typer.Option("--train", help="Training data file.")] = None,
    validation: Annotated[str | None, typer.Option(help="Validation data file.")] = None,
    test: Annotated[str | None, typer.Option(help="Test data file.")] = None,
    output_dir: Annotated[str | None, typer.Option("--output-dir", "-o", help="Run directory.")] = None,
    epochs: Annotated[float | None, typer.Option(help="Sets train.epochs.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override any key: --set train.batch_size=32")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run in the output dir.")] = False,
    resume: Annotated[
        bool, typer.Option(help="Continue an unfinished run (the default for the same config).")
    ] = False,
) -> None:
    """Fine-tune a model and write a run directory with model, metrics and report."""
    from lmtune.config import RunConfig, apply_overrides, load_yaml
    from lmtune.run import prepare_output_dir
    from lmtune.run import train as run_train

    raw: dict[str, Any] = load_yaml(config) if config else {}
    flags = {
        "model.name": model,
        "task.type": task,
        "method.name": method,
        "data.train": train_file,
        "data.validation": validation,
        "data.test": test,
        "output_dir": output_dir,
        "train.epochs": epochs,
    }
    overrides = [f"{key}={json.dumps(value)}" for key, value in flags.items() if value is not None]
    raw = apply_overrides(raw, overrides + list(set_ or []))
    if "model" not in raw:
        raise LmtuneError(
            "no model given", hint="pass --model NAME or set `model:` in the config (see `lmtune models`)"
        )
    cfg = RunConfig.from_dict(raw, source=str(config) if config else "command line")
    if resume and prepare_output_dir(cfg, overwrite=False) != "resume":
        raise LmtuneError(f"nothing to resume in {cfg.output_dir}", hint="drop --resume to start a new run")
    _quiet_libraries()
    console.print(f"[bold]lmtune[/bold] {cfg.method.name} on {cfg.model.name} -> {cfg.output_dir}")
    run = run_train(cfg, overwrite=overwrite)
    report = run.directory / "report.md"
    if report.exists():
        text = "\n".join(
            line for line in report.read_text(encoding="utf-8").splitlines() if not line.startswith("![")
        )
        console.print(Markdown(text))
    console.print(f"\nrun directory: [bold]{run.directory}[/bold] (report.md, metrics.json, model/)")


# ---- eval -------------------------------------------------------------------------------------
@app.command("eval")
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    data: Annotated[str, typer.Option(help="Labelled data file to evaluate on.")],
    output: Annotated[Path | None, typer.Option(help="Write the metrics as JSON here.")] = None,
) -> None:
    """Evaluate a finished run on a labelled file."""
    from lmtune.io import write_json
    from lmtune.run import load_run

    _quiet_libraries()
    metrics = load_run(run_dir).evaluate(data)
    table = RichTable("metric", "value", title=f"{run_dir} on {data}")
    for key, value in metrics.items():
        if isinstance(value, float | int):
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    if output:
        write_json(output, metrics)
        console.print(f"metrics written to {output}")


# ---- predict ----------------------------------------------------------------------------------
@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
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


# ---- listings ---------------------------------------------------------------------------------
@app.command()
def models() -> None:
    """The models lmtune can load here (packaged ones need no network)."""
    from lmtune.models import list_models

    table = RichTable(title="Packaged models")
    table.add_column("name", no_wrap=True, min_width=21)
    for column in ("hub id", "kind", "status", "description"):
        table.add_column(column)
    for row in list_models():
        table.add_row(row["name"], row["hub_id"], row["architecture"], row["status"], row["description"])
    console.print(table)
    console.print("Any local model directory or Hugging Face Hub id also works (the hub needs network).")


@app.command()
def methods() -> None:
    """Fine-tuning methods with their options."""
    from lmtune.methods import METHODS

    table = RichTable(title="Methods")
    table.add_column("name", no_wrap=True, min_width=16)
    for column in ("description", "options (default)", "default lr"):
        table.add_column(column)
    for name in METHODS.names():
        cls = METHODS.get(name)
        options = ", ".join(f"{k}={f.default!r}" for k, f in cls.Options.model_fields.items()) or "-"
        table.add_row(name, cls.description, options, f"{cls.default_learning_rate:g}")
    console.print(table)


@app.command()
def tasks() -> None:
    """Tasks with their options."""
    from lmtune.tasks import TASKS

    table = RichTable(title="Tasks")
    table.add_column("name", no_wrap=True, min_width=20)
    for column in ("description", "options (default)"):
        table.add_column(column)
    for name in TASKS.names():
        cls = TASKS.get(name)
        options = ", ".join(f"{k}={f.default!r}" for k, f in cls.Options.model_fields.items()) or "-"
        table.add_row(name, cls.description, options)
    console.print(table)


def main() -> None:
    try:
        app()
    except LmtuneError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted: re-run the same command to resume from the last checkpoint")
        sys.exit(130)


if __name__ == "__main__":
    main()
