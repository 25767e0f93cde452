"""Secure by default: safetensors for weights, torch.load only with weights_only=True, no remote code
unless the config asks for it.

Trainer checkpoints hold torch pickles (optimizer.pt, scheduler.pt, rng_state.pth): they are
internal to resuming, removed after a successful run, and transformers loads every one of them
with `torch.load(..., weights_only=True)` (checked below against the installed transformers).
The finished model/ directory holds no pickle at all.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import torch
from transformers.trainer_pt_utils import safe_globals

import lmtune
from lmtune.config import RunConfig
from tests.conftest import fast_config

SRC = Path(lmtune.__file__).parent
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


def _calls(tree: ast.AST, attr: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr
    ]


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_pickle(data: bytes) -> bool:
    # Pickle protocol 2+ starts with 0x80 <protocol>; torch's zip format starts with a zip header.
    return (len(data) > 1 and data[0] == 0x80 and 2 <= data[1] <= 5) or data[:4] == b"PK\x03\x04"


def _unsafe_torch_loads(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad = []
    for call in _calls(tree, "load"):
        owner = call.func.value
        if isinstance(owner, ast.Name) and owner.id == "torch":
            flag = _keyword(call, "weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                bad.append(f"{path}:{call.lineno}")
    return bad


def test_every_torch_load_in_lmtune_uses_weights_only():
    bad = [hit for path in SRC.rglob("*.py") for hit in _unsafe_torch_loads(path)]
    assert not bad, f"torch.load without weights_only=True: {bad}"


def test_lmtune_never_unpickles():
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not {"pickle", "dill", "cloudpickle", "joblib"} & set(names), f"{path}:{node.lineno}"


def test_trainer_loads_its_checkpoint_pickles_with_weights_only():
    """The transformers version installed loads optimizer/scheduler/scaler/RNG states safely."""
    import transformers.trainer

    source = Path(inspect.getsourcefile(transformers.trainer))
    assert not _unsafe_torch_loads(source)
    assert len([c for c in _calls(ast.parse(source.read_text()), "load")]) >= 5  # the scan sees them


def test_remote_code_is_never_switched_on_in_code():
    """No from_pretrained call passes a literal True; omitted means transformers' default, False."""
    hits = []
    for path in SRC.rglob("*.py"):
        for call in _calls(ast.parse(path.read_text(encoding="utf-8")), "from_pretrained"):
            flag = _keyword(call, "trust_remote_code")
            if isinstance(flag, ast.Constant) and flag.value is not False:
                hits.append(f"{path.relative_to(SRC)}:{call.lineno}")
            hits += [
                f"{path.relative_to(SRC)}:{call.lineno} (**kwargs)" for k in call.keywords if k.arg is None
            ]
    assert not hits, hits
    from transformers import AutoConfig

    default = inspect.signature(AutoConfig.from_pretrained).parameters.get("trust_remote_code")
    assert default is None or default.default in (False, None)


@pytest.mark.parametrize("trust", [False, True])
def test_trust_remote_code_reaches_from_pretrained(tiny_bert, sentiment_files, tmp_path, monkeypatch, trust):
    import transformers

    from lmtune.run import _load_tokenizer
    from lmtune.tasks import get_task_class

    seen: list[tuple[str, object]] = []
    for cls_name in ("AutoConfig", "AutoTokenizer", "AutoModelForSequenceClassification"):
        cls = getattr(transformers, cls_name)
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _name=cls_name, _original=original, **kwargs):
            seen.append((_name, kwargs.get("trust_remote_code", "absent")))
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    raw = fast_config(tiny_bert, sentiment_files, tmp_path / "run")
    if trust:
        raw["model"] = {"name": tiny_bert, "trust_remote_code": True}
    cfg = RunConfig.from_dict(raw)
    assert cfg.model.trust_remote_code is trust
    task = get_task_class("classification")(cfg)
    task.prepare_data()
    task.build_model(tiny_bert, fresh_head=True)
    _load_tokenizer(tiny_bert, cfg)
    names = {name for name, _ in seen}
    assert {"AutoConfig", "AutoTokenizer", "AutoModelForSequenceClassification"} <= names
    assert all(value is trust for _, value in seen), seen


@pytest.mark.slow
def test_a_finished_run_holds_no_pickled_weights(tiny_bert, sentiment_files, tmp_path):
    out = tmp_path / "run"
    train = {"epochs": 1, "keep_checkpoints": True}
    for method in ("lora", "full"):
        cfg = RunConfig.from_dict(
            fast_config(tiny_bert, sentiment_files, out / method, method=method, train=train)
        )
        lmtune.train(cfg)
        model_dir = out / method / "model"
        assert list(model_dir.glob("*.safetensors")), "weights are safetensors"
        for path in model_dir.rglob("*"):
            if path.is_file():
                assert path.suffix not in PICKLE_SUFFIXES, path
                assert not _is_pickle(path.read_bytes()[:4]), f"pickle data in {path}"
        # Checkpoint pickles exist only for resuming, and load under weights_only=True.
        checkpoints = list((out / method).glob("checkpoint-*"))
        assert checkpoints
        for path in checkpoints[0].iterdir():
            if path.name == "training_args.bin":
                # Trainer writes its arguments with torch.save but never loads them (a weights_only
                # load would refuse the TrainingArguments class, so resuming would fail if it did).
                continue
            if path.suffix in PICKLE_SUFFIXES:
                # As Trainer does: weights_only, plus numpy's array/dtype reconstructors for the
                # numpy RNG state in rng_state.pth (data constructors, not arbitrary callables).
                with safe_globals():
                    torch.load(path, map_location="cpu", weights_only=True)
            elif path.is_file():
                assert not _is_pickle(path.read_bytes()[:4]), path
