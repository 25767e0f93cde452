"""GPU training throughput and memory: lmtune vs Hugging Face Trainer + peft on one CUDA device.

    python benchmarks/gpu.py --out benchmarks/GPU.md      # on a CUDA machine (benchmarks/gpu.sh wraps it)
    python benchmarks/gpu.py --dry-run --out /tmp/GPU.md  # the same logic on CPU: tiny shapes, 2 steps

Variants: SmolLM2-135M-shaped LoRA SFT (lmtune with and without packing; Trainer+peft with
SDPA, with flash_attention_2, with Liger kernels), QLoRA (4-bit NF4 base) and 8-bit/paged
AdamW for both tools, and MiniLM-L6-shaped LoRA sequence classification. Each variant runs
in its own subprocess (its peak memory is its own, a crash loses only that row) for a fixed
number of steps; the first steps are warm-up and not timed. A variant whose package
(bitsandbytes, liger-kernel, flash-attn) is missing is listed as skipped, with the reason.

Models: the packaged SmolLM2-135M-Instruct / all-MiniLM-L6-v2 weights where installed, else
the same architectures built from their configs with random weights (tokens/s and memory do
not depend on the weights); the table says which. Data: synthetic word sequences that a
WordLevel tokenizer of the model's vocabulary size maps to one token per word, with
alpaca-like prompt/answer lengths for SFT and SST-2-like sentence lengths for classification,
so both tools see exactly the same token sequences. Writes a markdown table (--out) and the
same figures as JSON beside it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as cpu_bench  # benchmarks/run.py: classification LoRA settings, CSV reader
import suites  # benchmarks/suites.py: SFT encoding (chat template, answer-only labels), LoRA rank

# Shapes: the packaged models' own (SmolLM2-135M-Instruct, all-MiniLM-L6-v2), and tiny ones for --dry-run.
DECODER = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
}
ENCODER = {
    "hidden_size": 384,
    "intermediate_size": 1536,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "vocab_size": 30522,
    "max_position_embeddings": 512,
}
TINY_DECODER = DECODER | {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 512,
}
TINY_ENCODER = ENCODER | {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "vocab_size": 512,
}
# Steps, batch and lengths: (warm-up steps, timed steps, batch, max_length).
FULL = {"sft": (5, 60, 8, 512), "cls": (5, 100, 32, 128)}
DRY = {"sft": (1, 1, 2, 64), "cls": (1, 1, 4, 32)}
SFT_LR, CLS_LR, SFT_DROPOUT = 2e-4, 1e-3, 0.05
DECODER_SPECIALS = ["<unk>", "<s>", "<|im_end|>", "<|im_start|>", "<pad>", "user", "assistant", "system"]
ENCODER_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
OPTIONAL = {"bitsandbytes": "bitsandbytes", "liger_kernel": "liger-kernel", "flash_attn": "flash-attn"}


@dataclass(frozen=True)
class Variant:
    name: str
    tool: str  # lmtune | trainer+peft
    task: str  # sft | cls
    label: str
    method: str = "lora"  # lora | qlora
    packing: bool = True  # lmtune SFT: task.packing (auto is on for Llama)
    attention: str = "sdpa"  # Trainer: attn_implementation
    liger: bool = False  # Trainer: use_liger_kernel
    optimizer: str = ""  # lmtune train.optimizer / Trainer optim; empty: each tool's default AdamW
    needs: tuple[str, ...] = ()  # "cuda" and the OPTIONAL packages it imports
    baseline: str = ""  # the variant its tokens/s is compared with


VARIANTS = (
    Variant("lmtune-lora", "lmtune", "sft", "LoRA SFT (packing: auto = on)", baseline="trainer-lora"),
    Variant("trainer-lora", "trainer+peft", "sft", "LoRA SFT (sdpa)"),
    Variant("lmtune-cls", "lmtune", "cls", "MiniLM LoRA classification", baseline="trainer-cls"),
    Variant("trainer-cls", "trainer+peft", "cls", "MiniLM LoRA classification"),
    Variant(
        "lmtune-lora-nopack",
        "lmtune",
        "sft",
        "LoRA SFT (packing off: length-grouped batches)",
        packing=False,
        baseline="trainer-lora",
    ),
    Variant(
        "lmtune-qlora",
        "lmtune",
        "sft",
        "QLoRA SFT (NF4, all linear layers)",
        method="qlora",
        needs=("cuda", "bitsandbytes"),
        baseline="trainer-qlora",
    ),
    Variant(
        "trainer-qlora",
        "trainer+peft",
        "sft",
        "QLoRA SFT (NF4, all linear layers)",
        method="qlora",
        needs=("cuda", "bitsandbytes"),
    ),
    Variant(
        "trainer-lora-liger",
        "trainer+peft",
        "sft",
        "LoRA SFT + Liger kernels",
        liger=True,
        needs=("cuda", "liger_kernel"),
        baseline="trainer-lora",
    ),
    Variant(
        "lmtune-lora-adamw8bit",
        "lmtune",
        "sft",
        "LoRA SFT, 8-bit AdamW (adamw_8bit)",
        optimizer="adamw_8bit",
        needs=("cuda", "bitsandbytes"),
        baseline="trainer-lora-paged8bit",
    ),
    Variant(
        "trainer-lora-paged8bit",
        "trainer+peft",
        "sft",
        "LoRA SFT, paged 8-bit AdamW",
        optimizer="paged_adamw_8bit",
        needs=("cuda", "bitsandbytes"),
        baseline="trainer-lora",
    ),
    Variant(
        "trainer-lora-flash",
        "trainer+peft",
        "sft",
        "LoRA SFT (flash_attention_2)",
        attention="flash_attention_2",
        needs=("cuda", "flash_attn"),
        baseline="trainer-lora",
    ),
)
BY_NAME = {v.name: v for v in VARIANTS}
NOT_OFFERED = (
    "lmtune has no Liger option: it computes the LM head and loss only at labelled positions "
    "(and chunks the loss for large vocabularies) instead; Liger is measured on Trainer+peft only.",
    "lmtune offers adamw_8bit (bitsandbytes) but no paged optimizer; Trainer+peft runs paged_adamw_8bit.",
    "lmtune has no setting for the attention kernel: it trains through SDPA (its own route for packed "
    "rows); flash_attention_2 is measured on Trainer+peft only, when flash-attn is installed.",
)


# ---- synthetic tokenizer, models and data (parent process) --------------------------------------
def synthetic_tokenizer(vocab_size: int, kind: str) -> Any:
    """A WordLevel tokenizer: word `w<i>` is token i, so a text of n words is n tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = DECODER_SPECIALS if kind == "decoder" else ENCODER_SPECIALS
    vocab = {token: i for i, token in enumerate(specials)}
    vocab.update({f"w{i}": i for i in range(len(specials), vocab_size)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token=specials[0 if kind == "decoder" else 1]))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind == "decoder":
        from lmtune.tasks.causal_lm import DEFAULT_CHAT_TEMPLATE

        fast = PreTrainedTokenizerFast(
            tokenizer_object=backend,
            unk_token="<unk>",
            bos_token="<s>",
            eos_token="<|im_end|>",
            pad_token="<pad>",
            additional_special_tokens=["<|im_start|>"],
        )
        fast.chat_template = DEFAULT_CHAT_TEMPLATE  # ChatML; what lmtune gives a template-less tokenizer
        return fast
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def packaged_dir(kind: str) -> str | None:
    """The packaged model's directory when its package is installed (None: build from a config)."""
    from lmtune.models import PACKAGED_MODELS, resolve_model

    name = "SmolLM2-135M-Instruct" if kind == "decoder" else "all-MiniLM-L6-v2"
    model = next(m for m in PACKAGED_MODELS if m.name == name)
    return resolve_model(name).path if model.installed() else None


def save_model(kind: str, target: Path, tiny: bool) -> str:
    """Write a trainable model directory (weights, config, synthetic tokenizer); returns its source."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        BertConfig,
        LlamaConfig,
    )

    source = None if tiny else packaged_dir(kind)
    torch.manual_seed(0)
    if kind == "decoder":
        shape = TINY_DECODER if tiny else DECODER
        if source:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16)
        else:
            config = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=4)
            model = AutoModelForCausalLM.from_config(config)
        model = model.to(torch.bfloat16)  # as the Hub's SmolLM2 checkpoints are stored
    else:
        shape = TINY_ENCODER if tiny else ENCODER
        if source:
            model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=2)
        else:
            model = AutoModelForSequenceClassification.from_config(BertConfig(**shape, num_labels=2))
    model.save_pretrained(target)
    synthetic_tokenizer(model.config.vocab_size, kind).save_pretrained(target)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    what = "packaged weights" if source else "random weights, built from the config"
    arch = type(model).__name__
    return f"{arch} {params:.1f}M params ({what}), saved in {str(model.dtype).removeprefix('torch.')}"


def words(rng: random.Random, n: int, first: int, vocab_size: int) -> str:
    return " ".join(f"w{rng.randrange(first, vocab_size)}" for _ in range(n))


def sft_records(n: int, max_length: int, vocab_size: int, seed: int) -> list[dict[str, str]]:
    """Alpaca-like records: prompts of 8 to max_length/4 words, answers log-normal around max_length/4
    (for 512: median 128, clipped to 8-384), so some examples are truncated, as in real SFT data."""
    rng = random.Random(seed)
    first = len(DECODER_SPECIALS)
    out = []
    for _ in range(n):
        prompt = rng.randint(8, max_length // 4)
        answer = min(max(8, int(rng.lognormvariate(math.log(max_length / 4), 0.6))), 3 * max_length // 4)
        out.append(
            {
                "instruction": words(rng, prompt, first, vocab_size),
                "output": words(rng, answer, first, vocab_size),
            }
        )
    return out


def cls_rows(n: int, max_length: int, vocab_size: int, seed: int) -> list[tuple[str, int]]:
    """SST-2-like sentences: log-normal lengths with median max_length/5 words (25 for 128)."""
    rng = random.Random(seed)
    first = len(ENCODER_SPECIALS)
    out = []
    for _ in range(n):
        length = min(max(3, int(rng.lognormvariate(math.log(max_length / 5), 0.5))), max_length - 2)
        out.append((words(rng, length, first, vocab_size), rng.randint(0, 1)))
    return out


def prepare(work: Path, dry: bool) -> dict[str, Any]:
    """Models and data for every variant, written once; the workers read the returned setup."""
    import csv

    plan = DRY if dry else FULL
    setup: dict[str, Any] = {"dry_run": dry, "plan": plan, "models": {}, "files": {}}
    for kind, task in (("decoder", "sft"), ("encoder", "cls")):
        target = work / kind
        setup["models"][task] = {"path": str(target), "source": save_model(kind, target, dry)}
    vocab = {"sft": (TINY_DECODER if dry else DECODER)["vocab_size"]}
    vocab["cls"] = (TINY_ENCODER if dry else ENCODER)["vocab_size"]
    warmup, steps, batch, length = plan["sft"]
    # Enough for every step without a second epoch: a packed row holds ~2.2 examples of these lengths.
    n_train = 3 * (warmup + steps) * batch
    for split, n, seed in (("train", n_train, 0), ("eval", 16, 1)):
        path = work / f"sft_{split}.json"
        path.write_text(json.dumps(sft_records(n, length, vocab["sft"], seed)), encoding="utf-8")
        setup["files"][f"sft_{split}"] = str(path)
    warmup, steps, batch, length = plan["cls"]
    for split, n, seed in (("train", 2 * (warmup + steps) * batch, 0), ("eval", 32, 1)):
        path = work / f"cls_{split}.csv"
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows(cls_rows(n, length, vocab["cls"], seed))
        setup["files"][f"cls_{split}"] = str(path)
    return setup


# ---- timing (worker process) ----------------------------------------------------------------------
def now(cuda: bool) -> float:
    if cuda:
        import torch

        torch.cuda.synchronize()
    return time.perf_counter()


def peak_memory_gb(cuda: bool) -> float:
    """Peak GPU memory allocated since training began (CUDA), else the process's peak RSS."""
    if cuda:
        import torch

        return torch.cuda.max_memory_allocated() / 1e9
    return suites.peak_rss_mb() / 1e3


def timed(base: type, warmup: int, pad_id: int, cuda: bool) -> type:
    """`base` (Trainer or LmtuneTrainer) that times its steps after `warmup` and counts what they train
    on: real tokens (not the pad token), padded tokens and examples (packed rows hold several)."""
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        start = end = peak = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if cuda:  # the training's peak, not that of loading or of lmtune's untuned-model evaluation
                torch.cuda.reset_peak_memory_stats()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == warmup:
                self.start = now(cuda)
            if state.global_step == state.max_steps:
                self.end, self.peak = now(cuda), peak_memory_gb(cuda)

    class Timed(base):
        last: Any = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.clock = StepClock()
            self.add_callback(self.clock)
            self.counts: dict[str, Any] = {"tokens": 0, "padded": 0, "samples": 0}
            type(self).last = self

        def training_step(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            if self.state.global_step >= warmup:  # counted without a device sync (tensors add up)
                ids = inputs["input_ids"]
                real = ids != pad_id
                positions = inputs.get("position_ids")
                self.counts["tokens"] += real.sum()
                self.counts["padded"] += ids.numel()
                packed = positions is not None and "attention_mask" not in inputs
                self.counts["samples"] += ((positions == 0) & real).sum() if packed else ids.shape[0]
            return super().training_step(model, inputs, *args, **kwargs)

        def figures(self) -> dict[str, Any]:
            clock = self.clock
            seconds = clock.end - clock.start
            count = {k: float(v.item() if isinstance(v, torch.Tensor) else v) for k, v in self.counts.items()}
            trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
            return {
                "tokens_per_s": count["tokens"] / seconds,
                "padded_tokens_per_s": count["padded"] / seconds,
                "samples_per_s": count["samples"] / seconds,
                "peak_memory_gb": clock.peak,
                "timed_steps": self.state.max_steps - warmup,
                "timed_s": seconds,
                "trainable_params": trainable,
            }

    return Timed


# ---- the variants (worker process) ------------------------------------------------------------------
def lmtune_config(v: Variant, setup: dict[str, Any], out: Path, cuda: bool) -> dict[str, Any]:
    warmup, steps, batch, length = setup["plan"][v.task]
    files = setup["files"]
    sft = v.task == "sft"
    if sft:
        targets = "all-linear" if v.method == "qlora" else ["q_proj", "v_proj"]
        method = {"r": suites.LORA_R, "alpha": suites.LORA_ALPHA, "dropout": SFT_DROPOUT}
        task = {
            "type": "causal-lm",
            "packing": "auto" if v.packing else False,
            "generation_eval_samples": 0,
            "sample_generations": 0,
        }
    else:
        targets = cpu_bench.LORA["targets"]
        method = {
            "r": cpu_bench.LORA["r"],
            "alpha": cpu_bench.LORA["alpha"],
            "dropout": cpu_bench.LORA["dropout"],
        }
        task = {"type": "classification"}
    train = {
        "max_steps": warmup + steps,
        "batch_size": batch,
        "learning_rate": SFT_LR if sft else CLS_LR,
        "seed": 0,
        "report_to": ["none"],
        "eval_strategy": "no",
        "save_strategy": "no",
        "logging_steps": 1000,
        "precision": "auto" if cuda else "fp32",  # auto: bf16 on the GPU, as the baseline's bf16=True
    }
    if v.optimizer:
        train["optimizer"] = v.optimizer
    return {
        "model": setup["models"][v.task]["path"],
        "task": task,
        "method": {"name": v.method, "target_modules": targets, **method},
        "data": {
            "train": files[f"{v.task}_train"],
            "validation": files[f"{v.task}_eval"],
            "test": files[f"{v.task}_eval"],
            "max_length": length,
            "cache_tokenized": False,
        },
        "train": train,
        "output_dir": str(out / "run"),
    }


def run_lmtune(v: Variant, setup: dict[str, Any], cuda: bool) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from lmtune.config import RunConfig
    from lmtune.run import train
    from lmtune.training.trainer import LmtuneTrainer

    path = setup["models"][v.task]["path"]
    pad_id = AutoTokenizer.from_pretrained(path).pad_token_id
    trainer_class = timed(LmtuneTrainer, setup["plan"][v.task][0], pad_id, cuda)
    with tempfile.TemporaryDirectory() as out:
        train(RunConfig.from_dict(lmtune_config(v, setup, Path(out), cuda)), trainer_class=trainer_class)
    return trainer_class.last.figures()


def trainer_sft_model(v: Variant, path: str, cuda: bool) -> Any:
    """The peft recipe: the model (4-bit NF4 through transformers for QLoRA), LoRA on top."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict[str, Any] = {"attn_implementation": v.attention}
    if v.method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["device_map"] = {"": 0} if cuda else None
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if v.method == "qlora":
        # Gradient checkpointing off, as in every other variant (it trades speed for memory).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    targets = "all-linear" if v.method == "qlora" else ["q_proj", "v_proj"]
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=suites.LORA_R,
        lora_alpha=suites.LORA_ALPHA,
        lora_dropout=SFT_DROPOUT,
        target_modules=targets,
    )
    return get_peft_model(model, config)


def run_trainer(v: Variant, setup: dict[str, Any], cuda: bool) -> dict[str, Any]:
    """Trainer + peft with its defaults and the same hyperparameters as lmtune's run."""
    from datasets import Dataset
    from transformers import (
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    warmup, steps, batch, length = setup["plan"][v.task]
    path, files = setup["models"][v.task]["path"], setup["files"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    if v.task == "sft":
        suites.SFT_MAX_LENGTH = length
        records = json.loads(Path(files["sft_train"]).read_text(encoding="utf-8"))
        encoded = [suites._encode_sft(tokenizer, r) for r in records]
        dataset = Dataset.from_dict(
            {"input_ids": [i for i, _ in encoded], "labels": [lab for _, lab in encoded]}
        )
        collator: Any = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
        model = trainer_sft_model(v, path, cuda)
    else:
        texts, labels = cpu_bench.read_csv(Path(files["cls_train"]))
        dataset = Dataset.from_dict({"text": texts, "label": labels}).map(
            lambda b: tokenizer(b["text"], truncation=True, max_length=length),
            batched=True,
            remove_columns=["text"],
        )
        collator = DataCollatorWithPadding(tokenizer)
        model = trainer_cls_model(path)
    extra = {"optim": v.optimizer} if v.optimizer else {}
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=batch,
            max_steps=warmup + steps,
            learning_rate=SFT_LR if v.task == "sft" else CLS_LR,
            weight_decay=0.01,
            warmup_steps=0.06,
            report_to="none",
            save_strategy="no",
            logging_steps=1000,
            seed=0,
            disable_tqdm=True,
            bf16=cuda,
            use_liger_kernel=v.liger,
            dataloader_pin_memory=cuda,
            remove_unused_columns=v.task != "sft",
            **extra,
        )
        trainer_class = timed(Trainer, warmup, tokenizer.pad_token_id, cuda)
        trainer = trainer_class(model=model, args=args, train_dataset=dataset, data_collator=collator)
        trainer.train()
    return trainer.figures()


def trainer_cls_model(path: str) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    lora = cpu_bench.LORA
    config = LoraConfig(
        task_type="SEQ_CLS",
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=lora["targets"],
    )
    return get_peft_model(model, config)


def worker(name: str, setup_file: Path) -> int:
    import torch

    setup = json.loads(setup_file.read_text(encoding="utf-8"))
    cuda = torch.cuda.is_available() and not setup["dry_run"]
    v = BY_NAME[name]
    result = (run_lmtune if v.tool == "lmtune" else run_trainer)(v, setup, cuda)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# ---- the parent: run every variant in its own process, write the table ----------------------------
def missing(v: Variant, cuda: bool) -> str | None:
    """Why variant `v` cannot run here, or None."""
    if "cuda" in v.needs and not cuda:
        return "skipped: needs CUDA"
    absent = [OPTIONAL[m] for m in v.needs if m in OPTIONAL and importlib.util.find_spec(m) is None]
    return f"skipped: {', '.join(absent)} not installed" if absent else None


def run_one(v: Variant, setup_file: Path, timeout_s: float, env: dict[str, str]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", v.name, "--setup", str(setup_file)]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"status": f"failed: over its {timeout_s:.0f} s limit"}
    wall = time.perf_counter() - started
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        lines = [x for x in proc.stderr.splitlines() if x.strip()]
        errors = [x for x in lines if re.match(r"^\w*(Error|Exception)\b", x)]
        reason = (errors or lines or [f"exit {proc.returncode}"])[-1][:240]
        return {"status": f"failed: {reason}", "wall_s": wall, "stderr_tail": proc.stderr[-4000:]}
    return {"status": "ok", "wall_s": wall, **json.loads(line.removeprefix("RESULT "))}


def environment(cuda: bool) -> dict[str, str]:
    import importlib.metadata as metadata

    import torch

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    device = torch.cuda.get_device_name() if cuda else "CPU (dry run: tiny shapes, peak memory is peak RSS)"
    if cuda:
        device += f", {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB"
    packages = ("transformers", "peft", "accelerate", "datasets", *OPTIONAL.values())
    return {
        "device": device,
        "torch": f"{torch.__version__} (CUDA {torch.version.cuda})",
        **{p: version(p) for p in packages},
    }


def ratio(result: dict[str, Any], results: dict[str, dict[str, Any]], v: Variant) -> str:
    base = results.get(v.baseline, {})
    if result.get("status") != "ok" or base.get("status") != "ok":
        return ""
    key = "samples_per_s" if v.task == "cls" else "tokens_per_s"
    return f"{result[key] / base[key]:.2f}x {v.baseline}"


def table(results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    env, setup = meta["environment"], meta["setup"]
    memory = "peak GPU mem" if meta["cuda"] else "peak RSS"
    plan = setup["plan"]
    lines = [
        f"# lmtune GPU benchmark ({meta['date']}, {env['device']})",
        "",
        "torch "
        + env["torch"]
        + ", "
        + ", ".join(f"{k} {v}" for k, v in env.items() if k not in ("device", "torch")),
        "",
        f"- SFT: {setup['models']['sft']['source']}; batch {plan['sft'][2]}, max_length {plan['sft'][3]}, "
        f"LoRA r {suites.LORA_R} alpha {suites.LORA_ALPHA} on q_proj/v_proj (QLoRA: all linear layers), "
        f"lr {SFT_LR}; synthetic alpaca-like records (prompt 8-{plan['sft'][3] // 4} tokens, answer "
        "log-normal, median a quarter of max_length), loss on the answer only.",
        f"- Classification: {setup['models']['cls']['source']}; batch {plan['cls'][2]}, max_length "
        f"{plan['cls'][3]}, LoRA r 8 on query/value; synthetic SST-2-like sentences.",
        f"- {plan['sft'][1]} timed steps after {plan['sft'][0]} warm-up steps (classification: "
        f"{plan['cls'][1]} after {plan['cls'][0]}); bf16 mixed precision on the GPU; tokens/s counts "
        "real (non-pad) tokens; peak memory: torch.cuda.max_memory_allocated from the start of training "
        "to the last step, in the variant's own process.",
        "",
        f"| variant | tool | tokens/s | samples/s | {memory} (GB) | vs | notes |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for v in VARIANTS:
        r = results.get(v.name)
        if r is None:
            continue
        if r["status"] == "ok":
            cells = f"{r['tokens_per_s']:,.0f} | {r['samples_per_s']:,.1f} | {r['peak_memory_gb']:.2f}"
            note = f"{r['timed_steps']} steps in {r['timed_s']:.2f} s; {r['trainable_params']:,} trainable"
        else:
            cells, note = "- | - | -", r["status"]
        lines.append(f"| {v.name}: {v.label} | {v.tool} | {cells} | {ratio(r, results, v)} | {note} |")
    lines += ["", *(f"- {note}" for note in NOT_OFFERED), ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        help="markdown table (JSON beside it); default benchmarks/GPU.md, dry run: a temp dir",
    )
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, 2 steps per variant")
    parser.add_argument(
        "--variants", default=",".join(BY_NAME), help="comma-separated, from: " + ", ".join(BY_NAME)
    )
    parser.add_argument(
        "--budget-s", type=float, default=360, help="start no variant after this many seconds"
    )
    parser.add_argument("--variant-timeout-s", type=float, default=120)
    parser.add_argument("--work-dir", type=Path, help="models and data (default: a temporary directory)")
    parser.add_argument("--worker", choices=list(BY_NAME), help=argparse.SUPPRESS)
    parser.add_argument("--setup", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--slim-wheel", type=Path, help="drop a bitsandbytes wheel's libraries for other CUDAs"
    )
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.setup)
    if args.slim_wheel:
        print(f"{args.slim_wheel}: {slim_wheel(args.slim_wheel) / 1e6:.1f} MB removed")
        return 0
    unknown = [n for n in args.variants.split(",") if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(BY_NAME)}")
    return benchmark(args)


def benchmark(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    env = dict(os.environ)
    if args.dry_run:
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("no CUDA device: this benchmark needs one (or --dry-run, which checks its logic on CPU)")
        return 2
    out = args.out or (
        Path(tempfile.gettempdir()) / "lmtune-gpu-dry-run" / "GPU.md"
        if args.dry_run
        else Path("benchmarks/GPU.md")
    )
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="lmtune-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        setup = prepare(work, args.dry_run)
        setup_file = work / "setup.json"
        setup_file.write_text(json.dumps(setup), encoding="utf-8")
        meta = {
            "cuda": cuda,
            "date": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
            "environment": environment(cuda),
            "setup": setup,
        }
        print(f"prepared models and data in {time.perf_counter() - started:.0f} s: {work}", flush=True)
        results = run_all(args, setup_file, meta, out, started, env)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(table(results, meta))
    print(f"written: {out} and {out.with_suffix('.json')}")
    return 0


def run_all(
    args: argparse.Namespace,
    setup_file: Path,
    meta: dict[str, Any],
    out: Path,
    started: float,
    env: dict[str, str],
) -> dict[str, dict[str, Any]]:
    """Each variant in its own process, in order, within the time budget; the table after each."""
    results: dict[str, dict[str, Any]] = {}
    for name in args.variants.split(","):
        v = BY_NAME[name]
        elapsed = time.perf_counter() - started
        reason = missing(v, meta["cuda"])
        if reason is None and elapsed > args.budget_s:
            reason = f"skipped: time budget ({args.budget_s:.0f} s) spent"
        timeout = min(args.variant_timeout_s, max(args.budget_s + 60 - elapsed, 30))
        results[name] = {"status": reason} if reason else run_one(v, setup_file, timeout, env)
        r = results[name]
        ok = r["status"] == "ok"
        shown = f"{r['tokens_per_s']:,.0f} tokens/s, {r['peak_memory_gb']:.2f} GB" if ok else r["status"]
        print(f"[{time.perf_counter() - started:5.0f} s] {name}: {shown}", flush=True)
        if r.get("stderr_tail"):
            print(r["stderr_tail"], file=sys.stderr, flush=True)
        write(out, results, meta)  # after every variant: a run stopped at its limit keeps its rows
    return results


def write(out: Path, results: dict[str, dict[str, Any]], meta: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table(results, meta), encoding="utf-8")
    variants = {v.name: asdict(v) for v in VARIANTS if v.name in results}
    kept = {n: {k: x for k, x in r.items() if k != "stderr_tail"} for n, r in results.items()}
    payload = {**meta, "variants": variants, "results": kept}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2), encoding="utf-8")


def slim_wheel(path: Path, keep: str = r"libbitsandbytes_(cpu|cuda13\d)\.so$") -> int:
    """Rewrite a bitsandbytes wheel without its libraries for other CUDA/ROCm versions (the GPU
    machine's torch is built for CUDA 13), so that it fits the device tool's 64 MiB; returns the
    bytes removed. RECORD loses the removed files' lines, so pip installs the rest as usual."""
    before = path.stat().st_size
    slim = path.with_suffix(".slim")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
        dropped = {
            n for n in src.namelist() if re.search(r"libbitsandbytes_\w+\.so$", n) and not re.search(keep, n)
        }
        for item in src.infolist():
            if item.filename in dropped:
                continue
            data = src.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                kept = [ln for ln in data.decode().splitlines() if ln.split(",")[0] not in dropped]
                data = ("\n".join(kept) + "\n").encode()
            dst.writestr(item, data)
    slim.replace(path)
    return before - path.stat().st_size


if __name__ == "__main__":
    raise SystemExit(main())
