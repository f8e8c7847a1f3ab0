"""Benchmarks the train step and the input pipeline of a pretraining config; prints one JSON line.

    python -m pretrain.benchmark --config=configs/<name>.py [--config.KEY=VALUE ...] \
        [--workdir=DIR]

The last line of stdout is a JSON object with `tokens_per_sec` (train step alone, batch on the
devices, median over `benchmark.timed_steps` after `benchmark.warmup_steps`), `step_time_s`,
`compile_time_s`, `input_tokens_per_sec` (`loader.batch` alone, from `data.train_files`), `mfu`
(null where the device peak is unknown, e.g. CPUs, unless `benchmark.peak_flops_per_device` is
set), `peak_memory_bytes` (see `peak_memory_source`), `devices`, and more; see
docs/performance.md. The tokenizer and instance cache go to `--workdir` (default: a temporary
directory, removed at exit).
"""

import json
import tempfile

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from pretrain import command
from pretrain.perf import timing

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Pretraining config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Tokenizer and instance cache (default: a temporary directory)."
)
flags.mark_flags_as_required(["config"])


def _benchmark() -> None:
    if _WORKDIR.value:
        result = timing.run(_CONFIG.value, _WORKDIR.value)
    else:
        with tempfile.TemporaryDirectory(prefix="bert_benchmark_") as tmp:
            result = timing.run(_CONFIG.value, tmp)
    if jax.process_index() == 0:
        print(json.dumps(result), flush=True)


def main(argv: list[str]) -> None:
    command.start(argv, takes_config=True)
    logging.set_verbosity(logging.WARNING)  # Keep stdout for the result line, even at -v.
    command.initialize_distributed()
    command.run_user_errors_as_one_line(_benchmark)


if __name__ == "__main__":
    app.run(main, flags_parser=command.parse_flags)
