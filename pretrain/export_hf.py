"""Exports a pretraining checkpoint as a Hugging Face `BertForPreTraining` folder.

    python -m pretrain.export_hf --workdir=PRETRAIN_DIR --output=HF_DIR [--step=N]

HF_DIR then loads in PyTorch with no remote code: `BertForPreTraining.from_pretrained(HF_DIR)`,
`AutoTokenizer.from_pretrained(HF_DIR)` (same ids as ours), `pipeline("fill-mask", model=HF_DIR)`.
Needs the `hf` extra (safetensors, tokenizers); see pretrain/hf/interchange.py for the layout.
"""

from absl import app, flags, logging

from pretrain import command
from pretrain.hf import interchange as hf_interchange

_WORKDIR = flags.DEFINE_string("workdir", None, "Pretraining workdir (checkpoints + tokenizer).")
_OUTPUT = flags.DEFINE_string("output", None, "Folder to write the Hugging Face model into.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the newest).")
flags.mark_flags_as_required(["workdir", "output"])


def _export() -> None:
    exported = hf_interchange.export_workdir(_WORKDIR.value, _OUTPUT.value, _STEP.value)
    print(
        f"Exported step {exported.step} of {_WORKDIR.value} ({exported.num_params:,} parameters) "
        f"to {_OUTPUT.value}: {', '.join(exported.files)}"
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        command.fail(f"unexpected arguments {argv[1:]}.")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax's INFO lines would bury the summary.
    command.run_user_errors_as_one_line(_export)


if __name__ == "__main__":
    app.run(main, flags_parser=command.parse_flags)
