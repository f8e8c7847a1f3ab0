#!/usr/bin/env bash
# Pretrains on a Cloud TPU VM slice: one process per host, the same command on every host.
#
#   export TPU_NAME=bert-pod ZONE=us-central2-b ACCELERATOR_TYPE=v4-32  # PROJECT, SPOT=1 optional
#   launch/tpu_vm.sh create      # the slice (SPOT=1: preemptible capacity; RUNTIME_VERSION)
#   launch/tpu_vm.sh install     # this checkout (its last commit) + jax[tpu] on every host
#   launch/tpu_vm.sh plan --config=configs/base.py [--config.KEY=VALUE ...]   # here, no TPU:
#                                # compiles the step for ACCELERATOR_TYPE (fits? how fast?)
#   launch/tpu_vm.sh run gs://BUCKET/run --config=configs/base.py [--config.KEY=VALUE ...]
#   launch/tpu_vm.sh logs        # follow host 0's output (~/train.log on each host)
#   launch/tpu_vm.sh stop        # SIGTERM on every host: all save the same step and exit 0
#   launch/tpu_vm.sh delete
#
# `run` needs no multi-process flags: on TPU VMs jax.distributed.initialize() finds the slice
# itself. The workdir must be on GCS, where every host reads and writes the same checkpoints
# and process 0 writes metrics.jsonl; `run` again resumes from its newest checkpoint, on a
# slice of any size.
set -euo pipefail

if [[ ! ${1:-} =~ ^(create|install|plan|run|logs|stop|delete)$ ]]; then
  sed -n '2,/^set /p' "$0" | sed '$d' >&2
  exit 2
fi
if [[ $1 == plan ]]; then # On this machine (pip install -e ".[tpu]"), before paying for hosts.
  cd "$(dirname "$0")/.."
  exec "${PYTHON:-python3}" -m pretrain.plan --topology="${ACCELERATOR_TYPE:?set ACCELERATOR_TYPE}" \
    ${NUM_SLICES:+--num_slices="$NUM_SLICES"} "${@:2}"
fi
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
tpu_vm=(gcloud compute tpus tpu-vm)
where=(--zone="$ZONE" ${PROJECT:+--project="$PROJECT"})
code_dir=bert-jax # In each host's home directory.

on_every_host() {
  "${tpu_vm[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all --command="$1"
}

case ${1:-} in
  create)
    "${tpu_vm[@]}" create "$TPU_NAME" "${where[@]}" \
      --accelerator-type="${ACCELERATOR_TYPE:?set ACCELERATOR_TYPE}" \
      --version="${RUNTIME_VERSION:-tpu-ubuntu2204-base}" ${SPOT:+--spot}
    ;;
  install)
    archive=$(mktemp --suffix=.tar.gz)
    git -C "$(dirname "$0")/.." archive --format=tar.gz -o "$archive" HEAD
    "${tpu_vm[@]}" scp "$archive" "$TPU_NAME:$code_dir.tar.gz" "${where[@]}" --worker=all
    # gcsfs: gs:// paths for epath (metrics, tokenizer); google-cloud-storage: TensorBoard.
    on_every_host "rm -rf $code_dir && mkdir $code_dir && tar -xzf $code_dir.tar.gz -C $code_dir \
      && python3 -m venv $code_dir/.venv \
      && $code_dir/.venv/bin/pip install -q -e ./$code_dir 'jax[tpu]' gcsfs google-cloud-storage"
    ;;
  run)
    workdir=${2:?usage: $0 run gs://BUCKET/DIR --config=configs/NAME.py [--config.KEY=VALUE ...]}
    if [[ $workdir != gs://* ]]; then
      echo "the workdir must be a gs:// path that every host can reach, not ${workdir}" >&2
      exit 2
    fi
    args=$(printf '%q ' --workdir="$workdir" "${@:3}")
    # setsid + nohup: training outlives this ssh session; the pid is kept for `stop`.
    on_every_host "cd $code_dir && { setsid nohup .venv/bin/python -m pretrain.train $args \
      > ~/train.log 2>&1 < /dev/null & echo \$! > ~/train.pid; }"
    ;;
  logs)
    "${tpu_vm[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=0 --command="tail -n 100 -f ~/train.log"
    ;;
  stop)
    on_every_host 'kill -TERM "$(cat ~/train.pid)"'
    ;;
  delete)
    "${tpu_vm[@]}" delete "$TPU_NAME" "${where[@]}" --quiet
    ;;
esac
