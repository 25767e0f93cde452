"""What tasks and methods can do, declared on their own classes and asked by their consumers.

A class declares them in its header, `class LoraMethod(PeftMethod, capabilities={"mergeable", ...})`.
A consumer (the run, multi-task, the distributed launcher, export, the server, ensembles,
distillation) never tests a task's or a method's name or class: it asks the class,
`cls.supports("mergeable")`, or refuses with `cls.require("mergeable", "export --merge")`.
Capabilities are names from the vocabularies below, so a typo in a declaration fails when the
class is defined, and an undeclared capability means "cannot": it is refused with an error that
names the class, the capability and what needed it, never assumed.

Adding a method or a task therefore touches its own file (where it declares what it can do)
and one registry line, and a consumer that gains a new question adds one vocabulary entry.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from lmtune.errors import LmtuneError

METHOD_CAPABILITIES: dict[str, str] = {
    "fixed-trainable-set": "the parameters that train are fixed before training starts "
    "(DDP and FSDP register them once, when they wrap the model)",
    "mergeable": "the trained weights fold into plain base-model weights (export --merge)",
    "peft-adapter": "saved in peft's adapter format: plain peft clients load it, and the server "
    "hot-swaps it onto one shared base model",
    "virtual-tokens": "prepends virtual tokens or key/value prefixes to every sequence "
    "(packing is turned off; the task must accept virtual tokens)",
    "multi-task": "can adapt the one encoder that the sub-tasks of a multi-task model share",
}

TASK_CAPABILITIES: dict[str, str] = {
    "streaming": "reads its training file in chunks instead of into memory (data.streaming)",
    "multi-task-member": "can be a sub-task of multi-task (a head over a shared encoder)",
    "accepts-virtual-tokens": "its outputs survive virtual tokens that prompt learning prepends "
    "(one output per sequence, or a loss peft masks)",
    "token-level": "one label per token: long inputs are split into windows, never truncated",
    "loss-counts-items": "its model's loss is a sum normalised by the batch's item count "
    "(num_items_in_batch), as transformers' causal-LM losses are",
    "labelled-logits": "training may project only the positions that carry a label onto the "
    "vocabulary (logits_to_keep)",
    "bf16-on-cpu": "precision auto means bf16 autocast on CPUs with native bf16 (AMX, AVX512-BF16)",
    "class-probabilities": "`probabilities()` gives each example's class probabilities and "
    "`scores()` turns them into metrics (ensembles)",
    "logit-distillation": "a student can match the teacher's logits position by position "
    "(the same label set per example or per token)",
    "reward-scores": "`predict` on {prompt: messages, completion: text} inputs gives each a `score`, "
    "so a finished run of it can be a GRPO reward (`task.reward: RUN_DIR`)",
    "chat-generation": "generates text from chat messages or a raw prompt (`generate_streaming`, "
    "GenerationOptions): the server's OpenAI-compatible routes serve it",
    "label-audit": "`audit_labels()` gives the training records' labels (one per record or per token), "
    "so `lmtune audit` looks for label issues by confident learning",
    "mixed-adapter-batches": "`predict` runs one model row per input through `inference_batches`, so "
    "the rows of one batch may each use a different LoRA adapter (the server mixes requests)",
    "token-attributions": "`attribution_row` gives an input as one model row and the outputs to explain "
    "in it (`lmtune explain`, POST /explain, the report's explained errors)",
    "group-metrics": "`read_labelled_columns` reads extra columns of a labelled file row for row with "
    "its records and `evaluate_rows` gives each row's gold and predicted label (`eval --group-column`)",
}


class Capable:
    """Mixin for registered classes that declare `capabilities` from a vocabulary."""

    kind: ClassVar[str] = "component"
    vocabulary: ClassVar[dict[str, str]] = {}
    name: ClassVar[str]
    capabilities: ClassVar[frozenset[str]] = frozenset()
    # Why a capability is missing, where the class can say more than "not declared"
    # (e.g. qlora: "its adapter was trained on a 4-bit base").
    refusals: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, capabilities: Iterable[str] | None = None, **kwargs: object) -> None:
        # `class LoraMethod(PeftMethod, capabilities={...})`: a subclass inherits its parent's
        # capabilities unless it names its own (here or as a `capabilities` class attribute).
        super().__init_subclass__(**kwargs)
        if capabilities is not None:
            cls.capabilities = frozenset(capabilities)
        if not cls.vocabulary:
            return
        unknown = sorted(set(cls.capabilities) - set(cls.vocabulary))
        if unknown:
            raise TypeError(
                f"{cls.__name__} declares unknown {cls.kind} capabilities {unknown}; "
                f"known: {', '.join(cls.vocabulary)}"
            )

    @classmethod
    def supports(cls, capability: str) -> bool:
        if capability not in cls.vocabulary:
            raise KeyError(f"unknown {cls.kind} capability {capability!r}")  # a bug in the consumer
        return capability in cls.capabilities

    @classmethod
    def require(cls, capability: str, needed_by: str, hint: str | None = None) -> None:
        """Raise `LmtuneError` unless the class declares `capability` (`needed_by` says for what)."""
        if cls.supports(capability):
            return
        why = cls.refusals.get(capability) or f"it does not declare '{capability}'"
        raise LmtuneError(
            f"{cls.kind} '{getattr(cls, 'name', cls.__name__)}' cannot be used for {needed_by}: {why} "
            f"({capability}: {cls.vocabulary[capability]})",
            hint=hint,
        )

    @classmethod
    def with_capability(cls, capability: str, classes: dict[str, type[Capable]]) -> list[str]:
        """The registered names whose class declares `capability` (for hints and listings)."""
        return [name for name, klass in classes.items() if klass.supports(capability)]
