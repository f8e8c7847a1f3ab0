#!/usr/bin/env bash
# Runs one multi-process job on this machine: N processes of `python -m pretrain.train` joined
# through a coordinator on 127.0.0.1, as the hosts of a pod would be. What the tests use.
#
#   launch/local.sh N --config=configs/smoke.py --workdir=DIR [--config.KEY=VALUE ...]
#
# Every process gets the same arguments plus --coordinator_address/--num_processes/--process_id.
# Environment:
#   LOCAL_DEVICES  simulate this many CPU devices per process (sets JAX_PLATFORMS=cpu and
#                  XLA_FLAGS); unset: each process uses what JAX finds.
#   PORT           coordinator port (default: a free one).
#   LOG_DIR        write process I's output to LOG_DIR/process_I.log and its pid to
#                  LOG_DIR/process_I.pid (default: all output to this terminal).
#   PYTHON         interpreter (default: python).
# Exits 0 when every process does. When one fails, the others are killed (they would wait in a
# collective for it) and its exit status is returned. SIGTERM/SIGINT go to every process: each
# saves a checkpoint of the same step and exits 0.
set -uo pipefail
if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 501)); then
  echo "local.sh needs bash >= 5.1 (for wait -n -p); this is ${BASH_VERSION}" >&2
  exit 2
fi

if [[ $# -lt 1 || ! $1 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NUM_PROCESSES [pretrain.train flags...]" >&2
  exit 2
fi
num_processes=$1
shift
python=${PYTHON:-python}
port=${PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
if [[ -n ${LOCAL_DEVICES:-} ]]; then
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${LOCAL_DEVICES}"
fi
[[ -n ${LOG_DIR:-} ]] && mkdir -p "$LOG_DIR"

pids=()
for ((i = 0; i < num_processes; i++)); do
  args=(-m pretrain.train "$@" --coordinator_address="127.0.0.1:${port}"
    --num_processes="$num_processes" --process_id="$i")
  if [[ -n ${LOG_DIR:-} ]]; then
    "$python" "${args[@]}" >"${LOG_DIR}/process_${i}.log" 2>&1 &
    echo $! >"${LOG_DIR}/process_${i}.pid"
  else
    "$python" "${args[@]}" &
  fi
  pids+=($!)
done

# A signal to this script is a preemption of the whole job: pass it on to every process.
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM INT

status=0
running=("${pids[@]}")
while ((${#running[@]} > 0)); do
  done_pid=
  wait -n -p done_pid "${running[@]}"
  code=$?
  if [[ -z ${done_pid:-} ]]; then
    ((code > 128)) && continue # A trapped signal interrupted wait: keep waiting.
    break
  fi
  still=()
  for pid in "${running[@]}"; do
    [[ $pid != "$done_pid" ]] && still+=("$pid")
  done
  running=("${still[@]}")
  if ((code != 0 && status == 0)); then
    status=$code
    echo "local.sh: process ${done_pid} exited with status ${code}; stopping the others" >&2
    kill -KILL "${running[@]}" 2>/dev/null
  fi
done
exit "$status"
