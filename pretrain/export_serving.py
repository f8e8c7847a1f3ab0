"""Exports a fine-tuned model for serving: its inference function as `jax.export` StableHLO.

    python -m pretrain.export_serving --workdir=FT_DIR --output=SERVE_DIR \
        [--buckets=16,32,64,128] [--batch_size=8] [--step=N]

One function per sequence-length bucket (default: 16, 32, 64, ... up to the run's
max_seq_length), each at a fixed batch of --batch_size rows, plus the parameters, tokenizer,
labels, config and a manifest (pretrain/serving/artifact.py). `python -m pretrain.serve
--model=SERVE_DIR` serves it; loading it needs JAX and the tokenizer, not the model code.
"""

from absl import flags

from pretrain import command
from pretrain.serving import artifact

_WORKDIR = flags.DEFINE_string("workdir", None, "A `pretrain.finetune` workdir.")
_OUTPUT = flags.DEFINE_string("output", None, "Folder to write the artifact into.")
_BUCKETS = flags.DEFINE_string("buckets", "", "Sequence lengths to export (default: powers of 2).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Rows per call of the exported functions.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: best, else newest).")
flags.mark_flags_as_required(["workdir", "output"])


def _export() -> None:
    info = artifact.write(
        _WORKDIR.value, _OUTPUT.value, _BUCKETS.value, _BATCH_SIZE.value, _STEP.value
    )
    print(
        f"Exported step {info['step']} of {_WORKDIR.value} ({info['task']}, buckets "
        f"{info['buckets']}, batch {info['batch_size']}) to {_OUTPUT.value}"
    )


if __name__ == "__main__":
    command.run(_export)
