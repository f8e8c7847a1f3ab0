"""Trains a sentencepiece tokenizer with the special tokens the model needs.

    python -m data_pipeline.tokenizer --input=GLOB[,GLOB...] --vocab_size=N --output_prefix=PREFIX

writes PREFIX.model and PREFIX.vocab (see `data_pipeline/vocab/unigram.py` for the layout).
"""

from collections.abc import Sequence

from absl import app, flags

from data_pipeline import documents
from data_pipeline.errors import UserError
from data_pipeline.vocab import unigram


def _define_flags() -> None:
    """CLI flags; defined only when run as a script so importing this module adds none."""
    flags.DEFINE_string("input", None, "Comma-separated globs of BERT text files, or tfds:NAME.")
    flags.DEFINE_integer("vocab_size", None, "Pieces in the model, special tokens included.")
    flags.DEFINE_string("output_prefix", None, "Writes PREFIX.model and PREFIX.vocab.")
    flags.DEFINE_bool("lower_case", True, "Fold case inside the model (uncased BERT).")
    flags.DEFINE_integer("input_sentence_size", 5_000_000, "Sentences sampled for training.")
    flags.DEFINE_float("character_coverage", 0.9995, "Fraction of characters pieces cover.")
    flags.DEFINE_integer("seed", 0, "Seeds the trainer's sentence sampling.")
    flags.mark_flags_as_required(["input", "vocab_size", "output_prefix"])


def main(argv: Sequence[str]) -> None:
    cli = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    inputs = [cli.input] if documents.is_tfds_spec(cli.input) else cli.input.split(",")
    try:
        path = unigram.train_tokenizer(
            [spec for spec in inputs if spec.strip()],
            cli.vocab_size,
            cli.output_prefix,
            cli.lower_case,
            character_coverage=cli.character_coverage,
            input_sentence_size=cli.input_sentence_size,
            seed=cli.seed,
        )
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {path} and {cli.output_prefix}.vocab")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
