"""Embeds new text with a workdir's encoder: one unit vector per input line.

    python -m pretrain.embed --workdir=DIR --input=FILE --output=OUT.npy|OUT.jsonl \
        [--step=N] [--mesh=-1,1,1] [--max_seq_length=N]

DIR is a retrieval workdir (`configs/finetune_retrieval.py`: its pooling, best checkpoint) or a
pretraining / imported Hugging Face workdir (its newest checkpoint, mean pooling: zero-shot).
FILE holds one text per line. OUT.npy is float32 [lines, hidden]; OUT.jsonl has one
`{"embedding": [...]}` per line, in input order. Batched through the retrieval task's jitted
eval step, on any mesh.
"""

from absl import flags

from pretrain import command
from pretrain.inference import embedding

_WORKDIR = flags.DEFINE_string("workdir", None, "Retrieval, pretraining or imported workdir.")
_INPUT = flags.DEFINE_string("input", None, "Text file, one text per line.")
_OUTPUT = flags.DEFINE_string("output", None, "OUT.npy or OUT.jsonl to write.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: best, else newest).")
_MESH = flags.DEFINE_string("mesh", "-1,1,1", "Devices along data,fsdp,tensor (-1: the rest).")
_MAX_SEQ_LENGTH = flags.DEFINE_integer("max_seq_length", 0, "Tokens per text (0: the run's).")
flags.mark_flags_as_required(["workdir", "input", "output"])


def _embed() -> None:
    session = embedding.open_embedder(
        _WORKDIR.value, _STEP.value, _MESH.value, _MAX_SEQ_LENGTH.value
    )
    vectors = embedding.embed_texts(session, _INPUT.value)
    embedding.write_embeddings(vectors, _OUTPUT.value)
    print(
        f"Wrote {len(vectors)} embeddings of size {vectors.shape[1]} (step {session.step}) "
        f"to {_OUTPUT.value}"
    )


if __name__ == "__main__":
    command.run(_embed, distributed=True)
