"""Adding a method is one class and one registry line: a toy method defined in this file alone
goes through train, predict, multi-task, the merge refusal and the server.

The toy method trains only the LayerNorm parameters and the task head ("LN tuning"). It
declares what it can do (a fixed trainable set, a multi-task member) and, by leaving
`mergeable` out, what it cannot: the consumers must refuse that with a clear error rather than
assume it, and must never need its name.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
from fastapi.testclient import TestClient
from torch import nn

import lmtune
from lmtune.config import RunConfig
from lmtune.errors import LmtuneError
from lmtune.methods import METHODS
from lmtune.methods.base import Method, MethodContext, freeze_all, unfreeze_head
from tests.conftest import fast_config
from tests.tasks.test_multi_task import mt_config, mt_files  # noqa: F401 (fixture)

TOY = "toy-layernorm"
TEXTS = ["the film was superb", "our meal was dreadful"]


class ToyLayerNormMethod(Method):
    name: ClassVar[str] = TOY
    description: ClassVar[str] = "Train the LayerNorm parameters and the task head only."
    capabilities: ClassVar[frozenset[str]] = frozenset({"fixed-trainable-set", "multi-task"})
    default_learning_rate: ClassVar[float] = 5e-3

    def apply(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        freeze_all(model)
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.requires_grad_(True)
        unfreeze_head(model, ctx.task.head_names)
        return model


@pytest.fixture
def toy_method():
    METHODS.register(TOY, ToyLayerNormMethod)
    yield ToyLayerNormMethod
    METHODS.unregister(TOY)


def _trainable_names(model: nn.Module) -> set[str]:
    return {name for name, param in model.named_parameters() if param.requires_grad}


def test_a_toy_method_trains_predicts_reloads_and_serves(toy_method, tiny_bert, sentiment_files, tmp_path):
    out = tmp_path / "run"
    cfg = RunConfig.from_dict(fast_config(tiny_bert, sentiment_files, out, method=TOY))
    run = lmtune.train(cfg)
    trained = _trainable_names(run.model)
    assert trained and all("LayerNorm" in n or "classifier" in n or "pooler" in n for n in trained)
    assert run.metrics["train"]["trainable_params"] < run.metrics["train"]["total_params"] / 10
    assert run.config.train.learning_rate == ToyLayerNormMethod.default_learning_rate

    reloaded = lmtune.load_run(out, device="cpu")
    assert reloaded.predict(TEXTS) == run.predict(TEXTS)

    from lmtune.serving.app import create_app

    with TestClient(create_app(out)) as client:
        info = client.get("/info").json()
        assert info["adapters"]["default"]["method"] == TOY
        rows = client.post("/predict", json={"texts": TEXTS}).json()["predictions"]
    for got, want in zip(rows, run.predict(TEXTS), strict=True):
        assert got["label"] == want["label"]
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-4)


def test_an_undeclared_capability_is_refused_by_name(toy_method, tiny_bert, sentiment_files, tmp_path):
    from lmtune.compress.export import ExportOptions, export_run
    from lmtune.compress.merge import check_mergeable

    with pytest.raises(LmtuneError, match=rf"method '{TOY}' cannot be used for merging.*'mergeable'"):
        check_mergeable(TOY)
    out = tmp_path / "run"
    lmtune.train(RunConfig.from_dict(fast_config(tiny_bert, sentiment_files, out, method=TOY)))
    with pytest.raises(LmtuneError, match=rf"method '{TOY}'.*--no-merge"):
        export_run(out, tmp_path / "export", ExportOptions(merge=True))
    assert not (tmp_path / "export" / "merged").exists()


def test_a_toy_method_trains_a_multi_task_model(toy_method, tiny_bert, mt_files, tmp_path):  # noqa: F811
    out = tmp_path / "mt"
    run = lmtune.train(RunConfig.from_dict(mt_config(tiny_bert, mt_files, out, method={"name": TOY})))
    trained = _trainable_names(run.model)
    assert any("LayerNorm" in n for n in trained) and any("classifier" in n for n in trained)
    assert {"sentiment", "entities"} <= set(run.metrics["test"])
    reloaded = lmtune.load_run(out, device="cpu")
    texts = [TEXTS[0], "Anna lives in Paris"]
    assert reloaded.predict(texts) == run.predict(texts)


def test_declaring_an_unknown_capability_fails_when_the_class_is_defined():
    with pytest.raises(TypeError, match="unknown method capabilities"):

        class _Typo(Method):  # pragma: no cover - the class statement itself must fail
            name: ClassVar[str] = "typo"
            capabilities: ClassVar[frozenset[str]] = frozenset({"mergable"})


def test_a_method_without_fixed_trainable_set_is_refused_in_several_processes(toy_method, monkeypatch):
    from lmtune.training import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(ToyLayerNormMethod, "capabilities", frozenset({"multi-task"}))
    cfg = RunConfig.from_dict({"model": "m", "method": TOY})
    with pytest.raises(LmtuneError, match=rf"method '{TOY}' cannot be used for training in 2 processes"):
        distributed.check_supported(cfg)


def test_registered_names_come_back_out(toy_method):
    assert TOY in METHODS.names()
    assert Path(__file__).stem in METHODS.classes()[TOY].__module__
