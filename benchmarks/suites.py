"""Benchmark suites beyond SST-2 classification: NER (CoNLL-2003), SFT (SmolLM2) and freeze epochs.

Each runner trains one variant in the calling (worker) process and returns the same result
record as the classification runners in run.py: runtime, samples, real/padded tokens, the
suite's quality metric, peak RSS and parameter counts. The baselines are written the way
the Hugging Face course and peft examples write them; lmtune runs with its defaults.
"""

from __future__ import annotations

import json
import random
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

DATA_SEED = SEED = 0  # SEED is set per repeat by run.py's worker
NER_BATCH, NER_MAX_LENGTH = 16, 128
SFT_BATCH, SFT_MAX_LENGTH = 4, 512
LORA_R, LORA_ALPHA = 8, 16


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- data ----------------------------------------------------------------------------------------
def read_conll(path: Path) -> list[tuple[list[str], list[str]]]:
    sentences, words, tags = [], [], []
    for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if words:
                sentences.append((words, tags))
            words, tags = [], []
            continue
        words.append(parts[0])
        tags.append(parts[-1])
    return sentences


def write_conll(path: Path, sentences: list[tuple[list[str], list[str]]]) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for words, tags in sentences:
            fh.writelines(f"{w} {t}\n" for w, t in zip(words, tags, strict=True))
            fh.write("\n")
    return path


def prepare_ner(data_dir: Path, work: Path, n_train: int, n_test: int = 500) -> dict[str, Path]:
    train = read_conll(data_dir / "conll2003" / "train.txt")
    random.Random(DATA_SEED).shuffle(train)
    test = read_conll(data_dir / "conll2003" / "test.txt")[:n_test]
    return {
        "train": write_conll(work / "ner_train.conll", train[:n_train]),
        "test": write_conll(work / "ner_test.conll", test),
    }


def prepare_sft(data_dir: Path, work: Path, n_train: int, n_test: int = 40) -> dict[str, Path]:
    records = json.loads((data_dir / "instructions" / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    random.Random(DATA_SEED).shuffle(records)
    files = {}
    for name, rows in (("train", records[:n_train]), ("test", records[n_train : n_train + n_test])):
        files[name] = work / f"sft_{name}.json"
        files[name].write_text(json.dumps(rows), encoding="utf-8")
    return files


# ---- NER -----------------------------------------------------------------------------------------
NER_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def _minilm() -> str:
    from lmtune.models import resolve_model

    return resolve_model("all-MiniLM-L6-v2").path


def _ner_model(method: str, targets: Any = ("query", "value")) -> Any:
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(
        _minilm(),
        num_labels=len(NER_LABELS),
        id2label=dict(enumerate(NER_LABELS)),
        label2id={t: i for i, t in enumerate(NER_LABELS)},
    )
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            task_type="TOKEN_CLS",
            r=LORA_R,
            lora_alpha=LORA_ALPHA,
            lora_dropout=0.1,
            # peft's "all-linear" would also wrap the classifier, which TOKEN_CLS already trains in
            # full (modules_to_save): peft refuses the pair, so every block's linear layers by name.
            target_modules=["query", "key", "value", "dense"] if targets == "all-linear" else list(targets),
        )
        model = get_peft_model(model, config)
    return model


def _align(tokenizer: Any, sentences: list[tuple[list[str], list[str]]], padding: Any) -> dict[str, list]:
    """The course recipe: first sub-token of a word carries its tag, the rest -100."""
    enc = tokenizer(
        [w for w, _ in sentences],
        is_split_into_words=True,
        truncation=True,
        max_length=NER_MAX_LENGTH,
        padding=padding,
    )
    labels = []
    for i, (_, tags) in enumerate(sentences):
        previous, row = None, []
        for word in enc.word_ids(i):
            row.append(-100 if word is None or word == previous else NER_LABELS.index(tags[word]))
            previous = word
        labels.append(row)
    enc["labels"] = labels
    return dict(enc)


def ner_f1(model: Any, tokenizer: Any, test: Path) -> float:
    """Entity F1 (seqeval) on the test sentences, the same code for every variant."""
    import torch
    from seqeval.metrics import f1_score

    sentences = read_conll(test)
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i][0]))
    gold, pred = [None] * len(sentences), [None] * len(sentences)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), 64):
            idx = order[start : start + 64]
            enc = tokenizer(
                [sentences[i][0] for i in idx],
                is_split_into_words=True,
                truncation=True,
                max_length=NER_MAX_LENGTH,
                padding=True,
                return_tensors="pt",
            )
            ids = model(**enc).logits.argmax(-1).tolist()
            for row, i in enumerate(idx):
                words, tags = sentences[i]
                predicted = ["O"] * len(words)
                previous = None
                for position, word in enumerate(enc.word_ids(row)):
                    if word is not None and word != previous:
                        predicted[word] = id2label[ids[row][position]]
                    previous = word
                gold[i], pred[i] = tags, predicted
    return float(f1_score(gold, pred))


def run_ner(variant: str, suite: dict, files: dict[str, Path]) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(SEED)
    steps, lr = suite["steps"], suite["learning_rate"]
    if variant == "lmtune":
        import lmtune

        with tempfile.TemporaryDirectory() as out:
            run = lmtune.train(
                {
                    "model": "all-MiniLM-L6-v2",
                    "task": "ner",
                    # The baseline's layers (lmtune's own default adapts every linear layer).
                    "method": {
                        "name": "lora",
                        "r": LORA_R,
                        "alpha": LORA_ALPHA,
                        "target_modules": ["query", "value"],
                    },
                    "data": {
                        "train": str(files["train"]),
                        "validation": str(files["test"]),
                        "test": str(files["test"]),
                        "max_length": NER_MAX_LENGTH,
                    },
                    "train": {
                        "max_steps": steps,
                        "batch_size": NER_BATCH,
                        "learning_rate": lr,
                        "seed": SEED,
                        "report_to": ["none"],
                        "eval_strategy": "no",
                        "save_strategy": "no",
                    },
                    "output_dir": str(Path(out) / "run"),
                }
            )
            t = run.metrics["train"]
            return {
                "runtime_s": t["runtime_s"],
                "samples": steps * NER_BATCH,
                "real_tokens": t["tokens_per_second"] * t["runtime_s"],
                "padded_tokens": t["padded_tokens_per_second"] * t["runtime_s"],
                "accuracy": ner_f1(run.model, run.tokenizer, files["test"]),
                "peak_rss_mb": peak_rss_mb(),
                "params": t["total_params"],
                "trainable": t["trainable_params"],
            }
    tokenizer = AutoTokenizer.from_pretrained(_minilm())
    sentences = read_conll(files["train"])
    model = _ner_model("lora")
    params = [p for p in model.parameters() if p.requires_grad]
    counts = {"real": 0, "padded": 0}
    if variant == "tutorial":
        from transformers import get_linear_schedule_with_warmup

        enc = _align(tokenizer, sentences, "max_length")
        tensors = [torch.tensor(enc[k]) for k in ("input_ids", "attention_mask", "token_type_ids", "labels")]
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(*tensors),
            batch_size=NER_BATCH,
            shuffle=True,
            generator=torch.Generator().manual_seed(SEED),
        )
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
        schedule = get_linear_schedule_with_warmup(optimizer, int(0.06 * steps), steps)
        model.train()
        done = 0
        started = time.perf_counter()
        while done < steps:
            for ids, mask, types, labels in loader:
                model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels).loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
                counts["real"] += int(mask.sum())
                counts["padded"] += ids.numel()
                done += 1
                if done == steps:
                    break
        runtime = time.perf_counter() - started
    else:
        from datasets import Dataset
        from transformers import DataCollatorForTokenClassification, Trainer, TrainingArguments

        dataset = Dataset.from_dict(_align(tokenizer, sentences, False))
        pad = DataCollatorForTokenClassification(tokenizer)

        def collate(features: list[dict]) -> dict:
            batch = pad(features)
            counts["real"] += int(batch["attention_mask"].sum())
            counts["padded"] += batch["input_ids"].numel()
            return batch

        with tempfile.TemporaryDirectory() as out:
            args = TrainingArguments(
                output_dir=out,
                per_device_train_batch_size=NER_BATCH,
                max_steps=steps,
                learning_rate=lr,
                weight_decay=0.01,
                warmup_steps=0.06,
                report_to="none",
                save_strategy="no",
                logging_steps=1000,
                seed=SEED,
                disable_tqdm=True,
                dataloader_pin_memory=False,
            )
            trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate)
            started = time.perf_counter()
            trainer.train()
            runtime = time.perf_counter() - started
    return {
        "runtime_s": runtime,
        "samples": steps * NER_BATCH,
        "real_tokens": counts["real"],
        "padded_tokens": counts["padded"],
        "accuracy": ner_f1(model, tokenizer, files["test"]),
        "peak_rss_mb": peak_rss_mb(),
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in params),
    }


# ---- SFT -----------------------------------------------------------------------------------------
def _smollm() -> str:
    from lmtune.models import resolve_model

    return resolve_model("SmolLM2-135M-Instruct").path


def _chat(record: dict[str, str]) -> tuple[list[dict[str, str]], str]:
    prompt = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    return [{"role": "user", "content": prompt}], record["output"]


def sft_eval_loss(model: Any, tokenizer: Any, test: Path) -> float:
    """Mean cross-entropy over response tokens of the held-out examples, one at a time (no padding)."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for record in json.loads(test.read_text(encoding="utf-8")):
            ids, labels = _encode_sft(tokenizer, record)
            out = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, :-1].float()
            target = torch.tensor(labels[1:])
            total += float(torch.nn.functional.cross_entropy(out, target, ignore_index=-100, reduction="sum"))
            count += int((target != -100).sum())
    return total / max(count, 1)


def _encode_sft(tokenizer: Any, record: dict[str, str]) -> tuple[list[int], list[int]]:
    """The usual recipe: chat template, loss on the response only, truncated to the max length."""
    messages, answer = _chat(record)
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": answer}], tokenize=False
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"][:SFT_MAX_LENGTH]
    labels = [-100] * min(len(prompt_ids), len(ids)) + ids[len(prompt_ids) :]
    return ids, labels


def sft_label_share(train: Path) -> float:
    """Share of the training tokens that carry a label (the response): the positions whose vocabulary
    projection the loss needs, for the MFU count (`flops.Work.lm_head_share`)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_smollm())
    labelled = total = 0
    for record in json.loads(train.read_text(encoding="utf-8")):
        _, labels = _encode_sft(tokenizer, record)
        labelled += sum(label != -100 for label in labels)
        total += len(labels)
    return labelled / max(total, 1)


def run_sft(variant: str, suite: dict, files: dict[str, Path]) -> dict[str, Any]:
    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(SEED)
    steps, lr = suite["steps"], suite["learning_rate"]
    if variant in ("lmtune", "lmtune-nopack", "lmtune-fp32", "lmtune-ckpt"):
        import lmtune

        with tempfile.TemporaryDirectory() as out:
            run = lmtune.train(
                {
                    "model": "SmolLM2-135M-Instruct",
                    "task": {
                        "type": "causal-lm",
                        "sample_generations": 0,
                        # lmtune-nopack: length-grouped batches of SFT_BATCH examples instead of packed rows.
                        "packing": False if variant == "lmtune-nopack" else "auto",
                    },
                    "method": {
                        "name": "lora",
                        "r": LORA_R,
                        "alpha": LORA_ALPHA,
                        "target_modules": ["q_proj", "v_proj"],  # the baseline's
                    },
                    "data": {
                        "train": str(files["train"]),
                        "validation": str(files["test"]),
                        "test": str(files["test"]),
                        "max_length": SFT_MAX_LENGTH,
                    },
                    "train": {
                        "max_steps": steps,
                        "batch_size": SFT_BATCH,
                        "learning_rate": lr,
                        "seed": SEED,
                        "report_to": ["none"],
                        "eval_strategy": "no",
                        "save_strategy": "no",
                        # auto: bf16 autocast on a CPU with native bf16; lmtune-fp32 shows the rest.
                        "precision": "fp32" if variant == "lmtune-fp32" else "auto",
                        "gradient_checkpointing": variant == "lmtune-ckpt",
                    },
                    "output_dir": str(Path(out) / "run"),
                }
            )
            t = run.metrics["train"]
            return {
                "runtime_s": t["runtime_s"],
                # Packed rows hold several examples: count examples, not rows.
                "samples": t["examples_per_second"] * t["runtime_s"],
                "real_tokens": t["tokens_per_second"] * t["runtime_s"],
                "padded_tokens": t["padded_tokens_per_second"] * t["runtime_s"],
                "accuracy": sft_eval_loss(run.model, run.tokenizer, files["test"]),
                "peak_rss_mb": peak_rss_mb(),
                "params": t["total_params"],
                "trainable": t["trainable_params"],
            }
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(_smollm())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    encoded = [_encode_sft(tokenizer, r) for r in json.loads(files["train"].read_text(encoding="utf-8"))]
    dataset = Dataset.from_dict({"input_ids": [i for i, _ in encoded], "labels": [lab for _, lab in encoded]})
    model = AutoModelForCausalLM.from_pretrained(_smollm())
    model = get_peft_model(
        model,
        LoraConfig(
            task_type="CAUSAL_LM",
            r=LORA_R,
            lora_alpha=LORA_ALPHA,
            lora_dropout=0.05,
            target_modules=["q_proj", "v_proj"],
        ),
    )
    counts = {"real": 0, "padded": 0}
    pad = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)

    def collate(features: list[dict]) -> dict:
        batch = pad(features)
        counts["real"] += int(batch["attention_mask"].sum())
        counts["padded"] += batch["input_ids"].numel()
        return batch

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=SFT_BATCH,
            max_steps=steps,
            learning_rate=lr,
            warmup_steps=0.06,
            report_to="none",
            save_strategy="no",
            logging_steps=1000,
            seed=SEED,
            disable_tqdm=True,
            dataloader_pin_memory=False,
            remove_unused_columns=False,
        )
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate)
        started = time.perf_counter()
        trainer.train()
        runtime = time.perf_counter() - started
    return {
        "runtime_s": runtime,
        "samples": steps * SFT_BATCH,
        "real_tokens": counts["real"],
        "padded_tokens": counts["padded"],
        "accuracy": sft_eval_loss(model, tokenizer, files["test"]),
        "peak_rss_mb": peak_rss_mb(),
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


# ---- freeze: first epoch vs later epochs -------------------------------------------------------------
def run_freeze(variant: str, suite: dict, files: dict[str, Path]) -> dict[str, Any]:
    """lmtune freeze (top layer + head) for 3 epochs, activation cache on (lmtune) or off (lmtune-nocache)."""
    from transformers import TrainerCallback

    from lmtune.config import RunConfig
    from lmtune.run import train

    class EpochTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_epoch_begin(self, *args: Any, **kwargs: Any) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, *args: Any, **kwargs: Any) -> None:
            self.times.append(time.perf_counter() - self.started)

    timer = EpochTimer()
    with tempfile.TemporaryDirectory() as out:
        cfg = RunConfig.from_dict(
            {
                "model": "all-MiniLM-L6-v2",
                "method": {
                    "name": "freeze",
                    "num_trainable_layers": suite["trainable_layers"],
                    "cache_activations": variant == "lmtune",
                },
                "data": {
                    "train": str(files["train"]),
                    "validation": str(files["test"]),
                    "test": str(files["test"]),
                    "max_length": 128,
                    "max_train_samples": suite["rows"],
                },
                "train": {
                    "epochs": 3,
                    "batch_size": 16,
                    "learning_rate": suite["learning_rate"],
                    "seed": SEED,
                    "report_to": ["none"],
                    "eval_strategy": "no",
                    "save_strategy": "no",
                },
                "output_dir": str(Path(out) / "run"),
            }
        )
        run = train(cfg, callbacks=[timer])
        t = run.metrics["train"]
        return {
            "runtime_s": t["runtime_s"],
            "samples": int(suite["rows"] * 3),
            "real_tokens": t["tokens_per_second"] * t["runtime_s"],
            "padded_tokens": t["padded_tokens_per_second"] * t["runtime_s"],
            "accuracy": run.metrics["test"]["accuracy"],
            "peak_rss_mb": peak_rss_mb(),
            "params": t["total_params"],
            "trainable": t["trainable_params"],
            "epoch_times_s": timer.times,
        }
