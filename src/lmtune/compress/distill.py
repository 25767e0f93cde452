"""`lmtune distill`: train a student on a finished run's soft labels (knowledge distillation).

Loss (Hinton et al. 2015): `alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))
+ (1 - alpha) * hard-label loss`. `alpha` is the weight of the teacher's soft labels; the
`T^2` keeps the soft gradients on the scale of the hard ones as T grows. Multi-label
classification uses the sigmoid form (binary cross-entropy against the teacher's
probabilities at T); token classification averages the KL over labelled tokens only.

The teacher runs inside `compute_loss`, one batch at a time under `no_grad`, so its
probabilities are never stored for the whole data set. The student is any method on any
model that shares the teacher's tokenizer (the batch's token ids feed both). The result is a
normal run directory made by `lmtune.run.train` (so eval/predict/serve/export work on it);
its metrics.json also records the teacher's test metrics.

`student_layers` builds a shallower student from a packaged encoder by keeping its bottom N
layers (DistilBERT-style initialisation). Only one encoder is packaged, so this is the
practical way to get a smaller student offline. The truncated base model is written once to
`$LMTUNE_CACHE/students/` (adapter runs load their base from there, as SmolLM2 runs load
theirs from the cache).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmtune.errors import LmtuneError
from lmtune.training.trainer import LmtuneTrainer

IGNORE_INDEX = -100


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    *,
    multi_label: bool = False,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft-label loss at temperature T, scaled by T^2; token logits are masked by `labels`."""
    t = temperature
    s, te = student_logits.float() / t, teacher_logits.float() / t
    if multi_label:
        return F.binary_cross_entropy_with_logits(s, torch.sigmoid(te)) * t * t
    if s.dim() == 3:  # token classification: (batch, tokens, classes)
        mask = (labels != IGNORE_INDEX) if labels is not None else torch.ones(s.shape[:2], dtype=torch.bool)
        s, te = s[mask.to(s.device)], te[mask.to(te.device)]
        if s.numel() == 0:
            return student_logits.sum() * 0.0
    kl = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(te, dim=-1), reduction="batchmean", log_target=True)
    return kl * t * t


class DistillationTrainer(LmtuneTrainer):
    """Trainer whose loss mixes the teacher's soft labels with the gold labels."""

    # Our loss is a per-batch mean (not normalised by `num_items_in_batch`), so Trainer must
    # still divide it by the gradient-accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args: Any,
        teacher: torch.nn.Module,
        temperature: float,
        alpha: float,
        multi_label: bool,
        **kw: Any,
    ) -> None:
        super().__init__(*args, **kw)
        self.teacher = teacher.eval()
        for param in self.teacher.parameters():
            param.requires_grad_(False)
        self.temperature = temperature
        self.alpha = alpha
        self.multi_label = multi_label

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        outputs = model(**inputs)
        hard = outputs.loss
        features = {k: v for k, v in inputs.items() if k != "labels"}
        device = outputs.logits.device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        with torch.no_grad():
            teacher_logits = self.teacher(**features).logits
        soft = distillation_loss(
            outputs.logits,
            teacher_logits,
            self.temperature,
            multi_label=self.multi_label,
            labels=inputs.get("labels"),
        )
        loss = self.alpha * soft + (1 - self.alpha) * hard if hard is not None else soft
        return (loss, outputs) if return_outputs else loss


# ---- students ---------------------------------------------------------------------------------
def truncated_student(model_path: str, name: str, layers: int) -> str:
    """A copy of `model_path` keeping its bottom `layers` transformer layers (cached)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from lmtune.io import atomic_dir
    from lmtune.models import cache_dir

    config = AutoConfig.from_pretrained(model_path)
    depth = getattr(config, "num_hidden_layers", None)
    if depth is None:
        raise LmtuneError(f"--student-layers: {name} has no num_hidden_layers", hint="drop --student-layers")
    if not 1 <= layers <= depth:
        raise LmtuneError(
            f"--student-layers {layers}: {name} has {depth} layers", hint=f"choose 1 to {depth}"
        )
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")
    target = cache_dir() / "students" / f"{slug}-{layers}layers"
    if not (target / "config.json").exists():
        config.num_hidden_layers = layers
        # from_pretrained loads layers 0..N-1 by name and skips the rest: the bottom N layers.
        model = AutoModel.from_pretrained(model_path, config=config)
        with atomic_dir(target) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            AutoTokenizer.from_pretrained(model_path).save_pretrained(tmp)
    return str(target)


def student_config(
    teacher: Any,
    student: str,
    method: str,
    output_dir: str,
    overrides: list[str],
    student_layers: int | None = None,
) -> Any:
    """The teacher's resolved config with the student model/method (same data, same label order)."""
    from lmtune.config import RunConfig, apply_overrides
    from lmtune.models import resolve_model

    raw = teacher.config.to_dict()
    model_name = student
    if student_layers is not None:
        model_name = truncated_student(resolve_model(student).path, student, student_layers)
    raw["model"] = {"name": model_name}
    raw["method"] = {"name": method}
    raw["output_dir"] = output_dir
    # The teacher's learning rate was resolved for the teacher's method; the student's applies.
    raw["train"]["learning_rate"] = None
    return RunConfig.from_dict(apply_overrides(raw, overrides), source="distill")


def _check_tokenizers(teacher_tokenizer: Any, student_path: str) -> None:
    from transformers import AutoTokenizer

    student_tokenizer = AutoTokenizer.from_pretrained(student_path)
    if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        raise LmtuneError(
            f"student {student_path} uses another tokenizer than the teacher",
            hint="distillation feeds the same token ids to both: pick a student of the teacher's family",
        )


def distill(
    teacher_dir: str | Path,
    student: str,
    *,
    output_dir: str,
    method: str = "lora",
    temperature: float = 2.0,
    alpha: float = 0.5,
    student_layers: int | None = None,
    overrides: list[str] | None = None,
    overwrite: bool = False,
) -> Any:
    """Train `student` on the run in `teacher_dir`; returns the student's finished `Run`."""
    from lmtune.models import resolve_model
    from lmtune.run import Run, train

    if temperature <= 0:
        raise LmtuneError(f"--temperature {temperature}: must be positive", hint="e.g. --temperature 2")
    if not 0 <= alpha <= 1:
        raise LmtuneError(f"--alpha {alpha}: must be between 0 and 1", hint="e.g. --alpha 0.5")
    teacher = Run.load(teacher_dir)
    teacher.task.require(
        "logit-distillation",
        "distillation",
        hint="distil a classification or token-classification run",
    )
    cfg = student_config(teacher, student, method, output_dir, overrides or [], student_layers)
    ref = resolve_model(cfg.model.name, cfg.model.revision, cfg.model.trust_remote_code)
    _check_tokenizers(teacher.tokenizer, ref.path)
    trainer_class = functools.partial(
        DistillationTrainer,
        teacher=teacher.model,
        temperature=temperature,
        alpha=alpha,
        multi_label=bool(getattr(teacher.task, "multi_label", False)),
    )
    run = train(cfg, overwrite=overwrite, trainer_class=trainer_class)
    record = {
        "teacher_run": str(Path(teacher_dir)),
        "teacher_model": teacher.config.model.name,
        "teacher_method": teacher.config.method.name,
        "teacher_test": teacher.metrics.get("test"),
        "temperature": temperature,
        "alpha": alpha,
        "student_layers": student_layers,
    }
    if run.metrics.get("distillation") != record:
        from lmtune.io import write_json

        run.metrics["distillation"] = record
        write_json(run.directory / "metrics.json", run.metrics)
    return run
