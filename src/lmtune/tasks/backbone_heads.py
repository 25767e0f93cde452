"""Token-classification and extractive-QA heads for backbones transformers has no class for.

transformers ships `Gemma3TextForSequenceClassification` but no Gemma 3 token-classification or
question-answering model, while it does have the generic heads its Llama and Qwen classes are
made of (`transformers.modeling_layers.GenericForTokenClassification` / `...QuestionAnswering`:
the backbone as `model`, then `score` or `qa_outputs`). So instead of a head of our own, the
missing class is composed from that mixin and the backbone's own `PreTrainedModel` base, once per
architecture. It saves and loads as any transformers model: the backbone's checkpoint keys
(`model.*`) load unchanged, the head is new, and a saved model reloads with plain transformers:

    from transformers.modeling_layers import GenericForTokenClassification
    from transformers.models.gemma3.modeling_gemma3 import Gemma3PreTrainedModel

    class Gemma3TextForTokenClassification(GenericForTokenClassification, Gemma3PreTrainedModel):
        pass

    model = Gemma3TextForTokenClassification.from_pretrained("runs/ner/model")  # full/freeze runs
    # LoRA runs: that class on the base model, then peft's PeftModel.from_pretrained(model, "runs/ner/model")
"""

from __future__ import annotations

from typing import Any, Literal

from lmtune.errors import LmtuneError

HeadKind = Literal["token-classification", "question-answering"]
_SUFFIX = {"token-classification": "ForTokenClassification", "question-answering": "ForQuestionAnswering"}
_COMPOSED: dict[tuple[type, str], type] = {}


def head_model_class(config: Any, kind: HeadKind) -> type | None:
    """transformers' own class for this config and head, None when the auto mapping has it (load
    through the auto class, which also handles remote code), or the composed generic class."""
    from transformers import AutoModel

    if type(config) in _auto_class(kind)._model_mapping or getattr(config, "auto_map", None):
        return None
    key = (type(config), kind)
    if key not in _COMPOSED:
        try:
            backbone = AutoModel._model_mapping[type(config)]
        except KeyError:
            raise LmtuneError(
                f"model type '{config.model_type}' has no {kind} head and no backbone class in transformers",
                hint="use an encoder such as all-MiniLM-L6-v2, or a Llama/Qwen/Gemma decoder",
            ) from None
        _COMPOSED[key] = _compose(backbone, kind)
    return _COMPOSED[key]


def _compose(backbone: type, kind: HeadKind) -> type:
    from transformers import PreTrainedModel
    from transformers.modeling_layers import GenericForQuestionAnswering, GenericForTokenClassification

    base = next(
        (c for c in backbone.__mro__ if c.__name__.endswith("PreTrainedModel") and c is not PreTrainedModel),
        None,
    )
    if base is None:
        raise LmtuneError(f"{backbone.__name__} has no PreTrainedModel base to build a {kind} head on")
    mixin = GenericForTokenClassification if kind == "token-classification" else GenericForQuestionAnswering
    name = backbone.__name__.removesuffix("Model") + _SUFFIX[kind]
    # The name ends in ForTokenClassification / ForQuestionAnswering: transformers picks the loss
    # function (and model-card wording) from it.
    return type(name, (mixin, base), {"__module__": __name__, "__doc__": f"{kind} head composed for {name}."})


def load_head_model(path: str, config: Any, kind: HeadKind, trust_remote_code: bool) -> Any:
    """The model for `kind` on `path`'s weights (pretrained backbone or a saved run model)."""
    composed = head_model_class(config, kind)
    if composed is not None:
        return composed.from_pretrained(path, config=config)
    return _auto_class(kind).from_pretrained(path, config=config, trust_remote_code=trust_remote_code)


def _auto_class(kind: HeadKind) -> Any:
    from transformers import AutoModelForQuestionAnswering, AutoModelForTokenClassification

    return {"token-classification": AutoModelForTokenClassification}.get(kind, AutoModelForQuestionAnswering)
