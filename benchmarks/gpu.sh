#!/usr/bin/env bash
# GPU benchmark: lmtune vs Trainer+peft LoRA/QLoRA SFT tokens/s and peak GPU memory (Liger, flash
# attention, packing, 8-bit/paged AdamW) and MiniLM classification samples/s, on one CUDA GPU, in
# under 8 minutes. The measuring is benchmarks/gpu.py; this wrapper sets up the machine and
# prints what it has. Writes benchmarks/GPU.md and benchmarks/GPU.json (and copies them, with the
# log's tail, into $OUT when that is set, as on the device tool's machine).
#
#   bash benchmarks/gpu.sh --prepare   # here, with PyPI: wheels the GPU machine lacks, into .whl/
#   bash benchmarks/gpu.sh             # there: installs .whl/ (if present) into /tmp, then measures
#   bash benchmarks/gpu.sh --dry-run   # anywhere: the same logic on CPU, tiny shapes, 2 steps
#
# The device tool's H200 machine has python3 with CUDA torch, transformers, peft and accelerate,
# but no registry access and none of lmtune's pydantic, datasets, bitsandbytes or liger-kernel;
# its transformers (5.17) is older than lmtune's pin (5.23). --prepare downloads those wheels
# for Python 3.12 / x86-64 (bitsandbytes without its libraries for other CUDA versions: about
# 22 MB in all, under the tool's 64 MiB); carry `.whl` in the run. flash-attn ships no wheel on
# PyPI, so its variant reports "skipped" unless the machine has it.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
WHEELS=(
    transformers==5.23.0 peft==0.21.2 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
    typing-inspection==0.4.5 typing-extensions==4.16.0 sniffio==1.3.1 datasets==5.2.0 dill==0.4.1
    multiprocess==0.70.19 bitsandbytes==0.50.2 liger-kernel==0.8.5
)

if [[ "${1:-}" == "--prepare" ]]; then
    dir=${WHEEL_DIR:-.whl}
    if [[ "$dir" == .whl ]]; then  # keep the wheels out of git
        exclude=$(git rev-parse --git-path info/exclude)
        grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
    fi
    rm -rf "$dir" && mkdir -p "$dir"
    platforms=()
    for p in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
        platforms+=(--platform "${p}_x86_64")
    done
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d "$dir" "${WHEELS[@]}"
    "$PY" benchmarks/gpu.py --slim-wheel "$dir"/bitsandbytes-*.whl
    du -sh "$dir"
    echo "now run: bash benchmarks/gpu.sh   (device tool: carry [\".whl\"])"
    exit 0
fi

started=$SECONDS
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "nvidia-smi: not available"
if [[ -d .whl ]] && compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/lmtune-gpu-site .whl/*.whl
    export PYTHONPATH=/tmp/lmtune-gpu-site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
    echo "installed .whl/ into /tmp/lmtune-gpu-site ($((SECONDS - started)) s)"
else
    export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
    echo "no .whl/: using this Python's own packages (bash benchmarks/gpu.sh --prepare fetches them)"
fi
export PYTHONUNBUFFERED=1
"$PY" - <<'EOF'
import importlib.metadata as md, platform, sys
import torch
print(f"python {platform.python_version()} ({sys.executable}); torch {torch.__version__}, "
      f"CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()}")
for name in ("lmtune", "transformers", "peft", "accelerate", "datasets", "pydantic", "pyarrow",
             "bitsandbytes", "liger-kernel", "flash-attn", "triton"):
    try:
        print(f"  {name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name}: not installed" + ("" if name != "lmtune" else " (imported from src/)"))
EOF

out=benchmarks/GPU.md
[[ " $* " == *" --dry-run "* ]] && out=/tmp/lmtune-gpu-dry-run/GPU.md  # never over the committed table
set +e
timeout 450 "$PY" benchmarks/gpu.py --out "$out" "$@" 2>&1 | tee /tmp/lmtune-gpu.log
rc=${PIPESTATUS[0]}
set -e
echo "gpu.sh: exit $rc after $((SECONDS - started)) s"
if [[ -n "${OUT:-}" ]]; then
    cp "$out" "${out%.md}.json" "$OUT"/ 2>/dev/null || echo "no table was written"
    tail -c 2000000 /tmp/lmtune-gpu.log >"$OUT"/gpu.log
fi
exit "$rc"
