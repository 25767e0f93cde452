"""The Launch page's form: the config schema it is generated from, and server-side validation.

The form is built from `RunConfig`'s JSON schema plus each registered task's and method's own
`Options` (flat keys beside `task.type` / `method.name`, as in YAML). What the form sends is a
config dict validated by `RunConfig.from_dict`, the code YAML files and CLI flags go through, so
the page shows the CLI's one-line messages, each next to the field it names. The board adds its
own limits: data files inside the data roots, the run inside the runs root.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from lmtune.board.roots import PathRefused, within_any
from lmtune.config import RunConfig, describe_error
from lmtune.errors import LmtuneError

DATA_FILE_KEYS = ("train", "validation", "test")
# The smallest config a form starts from (the packaged MiniLM, the built-in sentiment task's shape).
STARTING_CONFIG: dict[str, Any] = {
    "model": {"name": "all-MiniLM-L6-v2"},
    "task": {"type": "classification"},
    "method": {"name": "lora"},
    "data": {},
    "train": {"epochs": 3},
}


class FormErrors(Exception):
    """Problems with a submitted config: [{"field", "message", "hint"}] (HTTP 422)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors[0]["message"] if errors else "invalid config")
        self.errors = errors


@functools.cache
def schema() -> dict[str, Any]:
    """GET /api/schema: the config schema, each task's and method's options, a starting config.
    Cached: building it imports every task and method (about 5 s the first time)."""
    from lmtune.methods import METHODS
    from lmtune.tasks import TASKS

    def described(cls: Any, *parts: str) -> dict[str, Any]:
        entry = {"description": cls.description, "capabilities": sorted(cls.capabilities)}
        for part, attr in zip(parts, ("Options", "DataOptions"), strict=False):
            entry[part] = getattr(cls, attr).model_json_schema()
        return entry

    return {
        "config": RunConfig.model_json_schema(),
        "tasks": {name: described(cls, "options", "data_options") for name, cls in TASKS.classes().items()},
        "methods": {name: described(cls, "options") for name, cls in METHODS.classes().items()},
        "defaults": STARTING_CONFIG,
        "layout": "task options are flat keys beside task.type, method options beside method.name",
    }


def validate(raw: Any, runs_root: Path, data_roots: list[Path]) -> RunConfig:
    """The config a form submitted, validated and placed: data files must lie in a data root, the
    run goes under the runs root (`output_dir` relative to it). Raises FormErrors."""
    if not isinstance(raw, dict):
        raise FormErrors([_error(None, "the config must be an object of sections (model, task, ...)")])
    raw = copy.deepcopy(raw)
    errors = _place_files(raw, runs_root, data_roots)
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as exc:
        errors += [_pydantic_error(err) for err in exc.errors()]
        raise FormErrors(errors) from None
    except LmtuneError as exc:  # a registry lookup (unknown task or method) inside a validator
        raise FormErrors([*errors, _error(None, f"form: {exc.message}", exc.hint)]) from None
    if errors:
        raise FormErrors(errors)
    return cfg


def _place_files(raw: dict[str, Any], runs_root: Path, data_roots: list[Path]) -> list[dict[str, Any]]:
    errors = []
    data = raw.get("data")
    for key in DATA_FILE_KEYS if isinstance(data, dict) else ():
        value = data.get(key)
        if value in (None, ""):
            data.pop(key, None)
            continue
        try:
            data[key] = str(within_any(data_roots, str(value)))
        except PathRefused as exc:
            errors.append(_error(f"data.{key}", str(exc), "pick a file from the data roots or upload one"))
    output = raw.get("output_dir")
    if (
        isinstance(output, str)
        and Path(output).is_absolute()
        and Path(output).resolve().is_relative_to(runs_root)
    ):
        output = Path(output).resolve().relative_to(runs_root).as_posix()  # a rerun's config
    if output in (None, ""):
        errors.append(_error("output_dir", "output_dir: give the run a name (a folder under the runs root)"))
    elif (
        not isinstance(output, str)
        or PurePosixPath(output).is_absolute()
        or ".." in PurePosixPath(output).parts
    ):
        errors.append(_error("output_dir", f"output_dir {output!r} must be a relative folder without '..'"))
    else:
        raw["output_dir"] = str(runs_root / output)
    return errors


def _plain_relative(path: str) -> bool:
    pure = PurePosixPath(path)
    return not pure.is_absolute() and ".." not in pure.parts and "\\" not in path


def _pydantic_error(err: dict[str, Any]) -> dict[str, Any]:
    loc = [str(p) for p in err.get("loc", ())]
    problem = describe_error(err, "form")
    return _error(".".join(loc) or None, problem.message, problem.hint)


def _error(field: str | None, message: str, hint: str | None = None) -> dict[str, Any]:
    return {"field": field, "message": message, "hint": hint}
