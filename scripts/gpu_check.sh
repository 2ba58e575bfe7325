#!/usr/bin/env bash
# Every check that needs a CUDA GPU, as one prepared run: 4-6 minutes on one H100/H200, 600 s at the most (each
# part's time limit below), so that it fits one 10-minute call of a lent machine:
#   1. the GPU tests: a flash kernel runs in a training step; the one-pass Stage I loss in bf16 on GPU;
#   2. benchmarks/gpu_mfu.py: MFU of an ouro-1.4b step at 4K (flash, bf16, activation checkpointing, compiled);
#   3. the same step eager (no torch.compile), to see what compilation buys;
#   4. benchmarks/plan_vs_gpu.py: `ouro plan`'s peak memory for ouro-1.4b at 4K against
#      torch.cuda.max_memory_allocated of the same step on the GPU, and their ratio.
# Needs python3 with torch (CUDA), lightning, torchmetrics, tokenizers, huggingface_hub, pyyaml and pytest; it
# runs from the checkout (PYTHONPATH) without installing it. Each part has its own time limit; the outputs go to
# $OUT (default gpu_check/). Exit status 0 only when every part passed.
#
#   bash scripts/gpu_check.sh                 # from the repository root
#   OUT=/tmp/results PYTHON=.venv/bin/python bash scripts/gpu_check.sh
set -u
OUT=${OUT:-gpu_check}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
failed=0

part() {  # part NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== $name ($limit s): $*"
  timeout -k 15 "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc"
  [ "$rc" -eq 0 ] || failed=1
}

if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_check.sh: $PY sees no CUDA GPU; run it on a GPU machine (PYTHON=... names another interpreter)" >&2
  exit 2
fi
part machine 30 "$PY" -c "import torch, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'lightning', lightning.__version__, torch.cuda.get_device_name())"
part gpu_tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_distributed.py tests/test_objective.py -k gpu
part mfu 240 "$PY" benchmarks/gpu_mfu.py --steps 6
part mfu_eager 120 "$PY" benchmarks/gpu_mfu.py --no-compile --steps 3 --warmup 1
part plan_vs_gpu 60 "$PY" benchmarks/plan_vs_gpu.py --seq 4096 --batch 2
exit $failed
