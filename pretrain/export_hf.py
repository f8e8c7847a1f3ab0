"""Exports a workdir's checkpoint as a Hugging Face folder (PyTorch, no remote code).

    python -m pretrain.export_hf --workdir=WORKDIR --output=HF_DIR [--step=N]

A pretraining workdir gives `BertForPreTraining` (BERT, NSP recipe), `BertForMaskedLM` or
`ModernBertForMaskedLM` (packed MLM); a fine-tuning workdir gives its task's class
(`*ForSequenceClassification`, `*ForTokenClassification`, `*ForQuestionAnswering`) with
`id2label`. `AutoTokenizer.from_pretrained(HF_DIR)` gives our ids. Needs the `hf` extra
(safetensors, tokenizers); see pretrain/hf/exporting.py for the layout.
"""

from absl import flags

from pretrain import command
from pretrain.hf import exporting

_WORKDIR = flags.DEFINE_string("workdir", None, "Pretraining or fine-tuning workdir.")
_OUTPUT = flags.DEFINE_string("output", None, "Folder to write the Hugging Face model into.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the newest).")
flags.mark_flags_as_required(["workdir", "output"])


def _export() -> None:
    exported = exporting.export_workdir(_WORKDIR.value, _OUTPUT.value, _STEP.value)
    print(
        f"Exported step {exported.step} of {_WORKDIR.value} ({exported.num_params:,} parameters) "
        f"as {exported.hf_class} to {_OUTPUT.value}: {', '.join(exported.files)}"
    )


if __name__ == "__main__":
    command.run(_export)
