"""Imports a local Hugging Face BERT or ModernBERT folder as a pretraining workdir.

    python -m pretrain.import_hf --hf_dir=HF_DIR --workdir=NEW_DIR

HF_DIR: config.json, weights (model.safetensors or pytorch_model.bin, optionally sharded), and a
WordPiece (vocab.txt or tokenizer.json) or sentencepiece tokenizer. NEW_DIR then continues
pretraining (`python -m pretrain.train --config=NEW_DIR/pretrain_config.py --workdir=NEW_DIR
--config.data.train_files=GLOB`) or initializes fine-tuning (`--config.init_from=NEW_DIR`).
See pretrain/hf/importing.py for what is written.
"""

from absl import flags

from pretrain import command
from pretrain.hf import importing

_HF_DIR = flags.DEFINE_string("hf_dir", None, "Local Hugging Face BERT or ModernBERT folder.")
_WORKDIR = flags.DEFINE_string("workdir", None, "New (or empty) workdir to create.")
flags.mark_flags_as_required(["hf_dir", "workdir"])


def _import() -> None:
    imported = importing.import_hf_dir(_HF_DIR.value, _WORKDIR.value)
    print(
        f"Imported the {imported.arch} model {_HF_DIR.value} ({imported.num_params:,} parameters, "
        f"{imported.vocab_size} tokens in {imported.tokenizer_file}) into {_WORKDIR.value}."
    )
    if imported.fresh_parts:
        print(f"Initialized anew (not in the checkpoint): {', '.join(imported.fresh_parts)}.")
    print(
        "Continue pretraining with:\n"
        f"  python -m pretrain.train --config={imported.config_file} --workdir={_WORKDIR.value} "
        "--config.data.train_files=GLOB"
    )


if __name__ == "__main__":
    command.run(_import)
