"""GGUF export of a merged Llama-family decoder (the file llama.cpp and Ollama run), and its check.

The file is written with the `gguf` package's writer, constants and tensor-name map (the ones
llama.cpp's own converter uses), not with a vendored converter script: llama.cpp's metadata
keys for the architecture, the byte-level BPE vocabulary with its merges and control tokens,
the chat template, and the weights in f16 or q8_0 (norms stay f32). As llama.cpp expects, the
query and key projections are permuted into its rotary layout. The file is then read back by a
second, independent reader, transformers' GGUF loader (`from_pretrained(dir, gguf_file=...)`),
whose logits are compared with the merged model's: that is the export's parity check.

`ollama_modelfile` writes an Ollama Modelfile (FROM, TEMPLATE, SYSTEM, stop, parameters) for
chat templates in the ChatML layout (SmolLM2, Qwen and lmtune's default template); other
templates are refused with what to write by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmtune.errors import LmtuneError

FILE_TYPES = ("f16", "q8_0")
# transformers architecture -> gguf MODEL_ARCH name; the Llama layout (RMSNorm, rotary, gated MLP).
ARCHITECTURES = {"LlamaForCausalLM": "LLAMA"}
CONTROL, NORMAL, UNUSED = 3, 1, 5  # llama.cpp's token types


def check_file_type(file_type: str) -> None:
    if file_type not in FILE_TYPES:
        raise LmtuneError(f"--gguf {file_type!r}: choose one of {', '.join(FILE_TYPES)}")


def check_supported(config: Any) -> None:
    """Refuse, before anything is written, a model this exporter cannot write faithfully."""
    architecture = (getattr(config, "architectures", None) or ["?"])[0]
    if architecture not in ARCHITECTURES:
        raise LmtuneError(
            f"GGUF export supports {', '.join(ARCHITECTURES)}; this model is {architecture}",
            hint="export --merge and convert the merged/ directory with llama.cpp's convert_hf_to_gguf.py",
        )
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise LmtuneError(f"GGUF export: rope scaling '{rope.get('rope_type')}' is not written yet")


def _rope_theta(config: Any) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    return float(rope.get("rope_theta") or getattr(config, "rope_theta", 10000.0))


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's rotary layout of a query/key projection (as its converter's `permute`)."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _vocabulary(tokenizer: Any, size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens in the byte alphabet, their llama.cpp types, merges), padded to the model's rows."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model = backend["model"]
    if model.get("type") != "BPE":
        raise LmtuneError(f"GGUF export writes byte-level BPE vocabularies; this one is {model.get('type')}")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    special = {t["id"] for t in backend.get("added_tokens", []) if t.get("special")}
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    types = [CONTROL if i in special else NORMAL for i in range(len(tokens))]
    if len(tokens) > size:
        raise LmtuneError(f"the tokenizer has {len(tokens)} tokens, more than the model's {size} embeddings")
    tokens += [f"[PAD{i}]" for i in range(len(tokens), size)]
    types += [UNUSED] * (size - len(types))
    return tokens, types, merges


def _add_metadata(writer: Any, config: Any, name: str, file_type: int) -> None:
    heads = config.num_attention_heads
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.num_key_value_heads or heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_rope_dimension_count(getattr(config, "head_dim", None) or config.hidden_size // heads)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_type)


def _add_tokenizer(writer: Any, tokenizer: Any, size: int) -> None:
    tokens, types, merges = _vocabulary(tokenizer, size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for kind in ("bos", "eos", "pad", "unk"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None:
            getattr(
                writer,
                {"pad": "add_pad_token_id", "unk": "add_unk_token_id"}.get(kind, f"add_{kind}_token_id"),
            )(int(token_id))
    adds_bos = len(tokenizer("a")["input_ids"]) > len(tokenizer("a", add_special_tokens=False)["input_ids"])
    writer.add_add_bos_token(adds_bos)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _tensor(name: str, value: torch.Tensor, config: Any, quant: Any) -> tuple[np.ndarray, Any]:
    """The array written for one weight and its GGML type (None: numpy's own dtype)."""
    import gguf

    data = value.detach().float().cpu().numpy()
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    if name.endswith("self_attn.q_proj.weight"):
        data = _permute(data, heads)
    elif name.endswith("self_attn.k_proj.weight"):
        data = _permute(data, kv_heads)
    if data.ndim == 1:
        return data.astype(np.float32), None
    if quant == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32 == 0:
        return gguf.quants.quantize(data, quant), quant
    return data.astype(np.float16), None


def write_gguf(model: Any, tokenizer: Any, path: Path, file_type: str) -> Path:
    """Write `model` (a merged transformers decoder) and `tokenizer` as one GGUF file at `path`."""
    import gguf

    check_file_type(file_type)
    config = model.config
    check_supported(config)
    arch = getattr(gguf.MODEL_ARCH, ARCHITECTURES[config.architectures[0]])
    quant = gguf.GGMLQuantizationType.Q8_0 if file_type == "q8_0" else gguf.GGMLQuantizationType.F16
    ftype = gguf.LlamaFileType.MOSTLY_Q8_0 if file_type == "q8_0" else gguf.LlamaFileType.MOSTLY_F16
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    writer = gguf.GGUFWriter(str(partial), gguf.MODEL_ARCH_NAMES[arch])
    _add_metadata(writer, config, getattr(config, "_name_or_path", "") or "lmtune", int(ftype))
    _add_tokenizer(writer, tokenizer, config.vocab_size)
    state = model.state_dict()
    for key, value in state.items():
        if key == "lm_head.weight" and config.tie_word_embeddings:
            continue  # tied: llama.cpp reads the output projection from token_embd
        target = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise LmtuneError(f"GGUF export: no llama.cpp name for tensor {key}")
        data, raw = _tensor(key, value, config, quant)
        writer.add_tensor(target, data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(path)  # a killed export leaves no half-written .gguf behind
    return path


def load_gguf(path: Path) -> Any:
    """The GGUF file read back by transformers' own GGUF loader (weights de-quantised to fp32)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()


@torch.no_grad()
def logit_parity(reference: Any, candidate: Any, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Largest absolute logit difference over `batches`, and the share of positions whose
    most likely next token is the same under both models."""
    worst, same, total = 0.0, 0, 0
    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])).bool()
        a = reference(**inputs).logits.float()[mask]
        b = candidate(**inputs).logits.float()[mask]
        worst = max(worst, float((a - b).abs().max()))
        same += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += int(mask.sum())
    return {"max_abs_logit_diff": worst, "top1_agreement": same / max(total, 1)}


# ---- Ollama -----------------------------------------------------------------------------------------
CHATML_TEMPLATE = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)


def _default_system(tokenizer: Any) -> str | None:
    """The system prompt the chat template adds to a conversation without one (SmolLM2 does)."""
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    start = "<|im_start|>system\n"
    if not rendered.startswith(start):
        return None
    return rendered[len(start) : rendered.index("<|im_end|>")]


def ollama_modelfile(tokenizer: Any, gguf_name: str, directory: Path) -> Path:
    """An Ollama Modelfile beside nothing else: FROM the GGUF file (a relative path), the chat
    template in Ollama's Go template syntax, the template's default system prompt, stop token."""
    template = tokenizer.chat_template or ""
    if "<|im_start|>" not in template or tokenizer.eos_token != "<|im_end|>":
        raise LmtuneError(
            "--ollama writes Modelfiles for ChatML chat templates (<|im_start|> ... <|im_end|>); this "
            "model's template is another",
            hint="write the TEMPLATE of the Modelfile by hand (see Ollama's docs) and use --gguf alone",
        )
    lines = [f"FROM ../gguf/{gguf_name}", f'TEMPLATE """{CHATML_TEMPLATE}"""']
    system = _default_system(tokenizer)
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += ['PARAMETER stop "<|im_end|>"', "PARAMETER temperature 0.2"]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "Modelfile"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
