"""Compression and export of finished runs: merge, int8, pruning, distillation, ONNX.

`lmtune export` (compress/export.py) writes variants and a comparison table;
`lmtune distill` (compress/distill.py) trains a smaller student on a run's soft labels.
The loaders here read the variants that plain transformers cannot.
"""

from lmtune.compress.prune import load_head_pruned
from lmtune.compress.quantize import load_int8

__all__ = ["load_head_pruned", "load_int8"]
