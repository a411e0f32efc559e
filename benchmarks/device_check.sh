#!/usr/bin/env bash
# One short GPU check (<= 8 minutes on one GPU), run on a machine with CUDA and the project installed with a CUDA
# build of torch (docs/cluster.md):
#   bash benchmarks/device_check.sh [OUT_DIR]
# 1. the CUDA tests (tests/test_cuda.py: parity with transformers at fp32 without TF32, bf16 autocast, beam search
#    tokens, checkpoints moving between GPU and CPU);
# 2. the speed comparison with transformers in bf16 on the GPU (benchmarks/bench_model.py --device cuda);
# 3. a 200-step real-data cell (WikiSplit, the real MiniLM BERT, bert2bert) through the launcher, bf16 auto;
# 4. the rehearsal of the paper's longest shapes (grids/summarization.yaml: 12L and 24L at 512+128 and 512+64) at the
#    plan's micro-batch: measured step time, MFU and memory beside the plan, recorded for the next --dry-run;
# then one summary table. Each step is bounded in time; a failed step is reported and the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-${OUT:-outputs/device_check}}
mkdir -p "$OUT"
summary=()
step() {  # name, seconds, command...
  local name=$1 limit=$2; shift 2
  local started=$SECONDS
  if timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; then status=ok; else status="FAILED (rc $?)"; fi
  summary+=("| $name | $status | $((SECONDS - started)) s | $OUT/$name.log |")
}

$PY - <<'PY' | tee "$OUT/machine.txt"
import torch
assert torch.cuda.is_available(), "no CUDA device: this script is for a GPU machine"
p = torch.cuda.get_device_properties(0)
print(f"gpu: {p.name} x{torch.cuda.device_count()}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, "
      f"cuda {torch.version.cuda}, bf16 {torch.cuda.is_bf16_supported()}")
PY
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1

step cuda_tests 180 "$PY" -m pytest -q tests/test_cuda.py -rs
step bench_bf16 240 "$PY" benchmarks/bench_model.py --device cuda --rounds 2 --steps 5 --beam-batches 2
step real_cell 240 "$PY" -m experiments.launch grids/mini_wikisplit.yaml --executor debug \
  --only 'wikisplit/bert2bert/seed1/xattn=self_attention' --set train.steps=200 --set train.batch_size=64 \
  --set "output_root=$OUT/cells" --set mlflow.experiment=device-check
BERTGEN_MEASURED_RATES="$OUT/measured_rates.json" step rehearse 240 "$PY" -m experiments.launch.rehearse grids/summarization.yaml --device cuda --steps 3

echo
echo "| step | status | time | log |"
echo "|---|---|---:|---|"
printf '%s\n' "${summary[@]}"
grep -h "^|" "$OUT/bench_bf16.log" 2>/dev/null | head -20
grep -h "FINISHED\|FAILED" "$OUT/real_cell.log" 2>/dev/null | tail -3
grep -v "^\[" "$OUT/rehearse.log" 2>/dev/null | tail -25
