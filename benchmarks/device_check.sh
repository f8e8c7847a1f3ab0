#!/usr/bin/env bash
# The device check: what this codebase's step does on an accelerator, in under 8 minutes.
#
#   bash benchmarks/device_check.sh [--dry_run] [--out DIR] [--no_install]
#
# On a GPU machine: installs the project with JAX's CUDA extra (skipped with --no_install, or
# when JAX already sees a GPU), sets the XLA flags that matter on GPUs, then runs
# benchmarks/device_check.py: the device, pretrain.benchmark for BERT-base and ModernBERT-base
# (bfloat16, sequence 128 and 512, attention xla / cudnn, remat none / dots, the largest batch
# that fits), every attention path x mask kind (benchmarks/attention_paths.py), and a one-minute
# pretraining run of configs/mini.py. Every result is one JSON line on stdout and in
# DIR/results.jsonl (default DIR: a fresh temporary folder, named on stderr at
# the end; a relative DIR is taken from where the script is called). --dry_run: the same
# sequence on the CPU with tiny shapes, in about two minutes (CI runs it). docs/performance.md
# says what each line means.
set -uo pipefail
dry_run=0
install=1
out=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry_run) dry_run=1 ;;
    --no_install) install=0 ;;
    --out) out="$2"; shift ;;
    --out=*) out="${1#--out=}" ;;
    *) echo "error: unknown argument $1 (use --dry_run, --out DIR, --no_install)" >&2; exit 2 ;;
  esac
  shift
done
# Outputs never land in the checkout unasked: the caller's folder, else a fresh temporary one.
if [[ -z $out ]]; then
  out=$(mktemp -d "${TMPDIR:-/tmp}/device_check.XXXXXX") || exit 1
fi
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 1
cd "$(dirname "$0")/.."
args=(--out "$out")
if [[ $dry_run == 1 ]]; then
  export JAX_PLATFORMS=cpu
  args+=(--dry_run)
else
  has_gpu=$(python -c 'import jax; print(any(d.platform == "gpu" for d in jax.devices()))' \
    2>/dev/null || echo False)
  if [[ $install == 1 && $has_gpu != True ]]; then
    python -m pip install -q -e ".[cuda]" || echo '{"check": "install", "status": "error"}'
  fi
  # Overlap collectives with compute (multi-GPU), and let XLA take most of the memory.
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
  export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
fi
exec python benchmarks/device_check.py "${args[@]}"
