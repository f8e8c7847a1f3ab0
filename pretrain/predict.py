"""Runs a fine-tuned model on new, unlabelled input.

    python -m pretrain.predict --workdir=FT_DIR --input=FILE --output=OUT.jsonl [--step=N]

Input: one text (or text_a<TAB>text_b) per line for classification; one sentence per line, words
split at white space, for tagging; SQuAD JSON (answers not needed) for QA. Output: one JSON
object per example, in input order: `label` and `probability` (regression: `score`); `entities`
({"type", "start", "end", "text"}, character offsets in the line) and `tags`; `id`, `answer`,
`start`, `end` (character offsets in the context; null for no answer). Batched through the jitted
eval step of fine-tuning, on any mesh (--mesh).
"""

from absl import flags

from pretrain import command
from pretrain.inference import session as session_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "A `pretrain.finetune` workdir.")
_INPUT = flags.DEFINE_string("input", None, "Unlabelled input in the task's format.")
_OUTPUT = flags.DEFINE_string("output", None, "JSON lines file to write.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: best, else newest).")
_MESH = flags.DEFINE_string("mesh", "-1,1,1", "Devices along data,fsdp,tensor (-1: the rest).")
flags.mark_flags_as_required(["workdir", "input", "output"])


def _predict() -> None:
    session = session_lib.open_session(_WORKDIR.value, _STEP.value, _MESH.value)
    count = session_lib.run_prediction(session, _INPUT.value, _OUTPUT.value)
    print(f"Wrote {count} predictions (step {session.step}) to {_OUTPUT.value}")


if __name__ == "__main__":
    command.run(_predict, distributed=True)
