"""Quantizes a fine-tuned model to int8 (post-training, Qwix PTQ).

    python -m pretrain.quantize --workdir=FT_DIR --output=Q_DIR [--activations=int8] [--step=N]

Q_DIR holds int8 kernels with float32 scales (and the float embeddings, norms and biases); it is
a workdir `pretrain.evaluate` and `pretrain.predict` take as they take FT_DIR (layout:
`pretrain/inference/quantized.py`). Uses FT_DIR's best checkpoint, else the newest, or --step;
LoRA adapters are merged first. `--activations=int8` also quantizes each matmul's input on the
fly (dynamic range).
"""

import jax
from absl import flags
from etils import epath
from flax import nnx

from pretrain import command, tasks
from pretrain.inference import quantized
from pretrain.inference import session as session_lib
from pretrain.training.errors import ConfigError

_WORKDIR = flags.DEFINE_string("workdir", None, "A `pretrain.finetune` workdir.")
_OUTPUT = flags.DEFINE_string("output", None, "New folder for the quantized model.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: best, else newest).")
_ACTIVATIONS = flags.DEFINE_enum(
    "activations", "float32", ["float32", "int8"], "Matmul inputs: as computed, or int8."
)
flags.mark_flags_as_required(["workdir", "output"])


def _quantize() -> None:
    output = quantized.check_output(_OUTPUT.value)
    if quantized.is_quantized(_WORKDIR.value):
        raise ConfigError(f"{_WORKDIR.value} is already quantized: give the fine-tuning workdir.")
    session = session_lib.open_session(_WORKDIR.value, _STEP.value, mesh="1,1,1")
    source = session.task
    params = source.export_params(jax.device_get(nnx.to_pure_dict(session.params)))
    config = session.config
    config.peft.method = "none"  # Adapters are merged into the kernels.
    task = tasks.finetuning_task(config.task).for_model(
        config, source.model_config, source.export_labels() or []
    )
    model = task.make_model(nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    activations = _ACTIVATIONS.value == "int8"
    qmodel = quantized.quantize(model, activations)
    qparams = jax.device_get(nnx.to_pure_dict(nnx.state(qmodel)))
    root = epath.Path(_WORKDIR.value)
    quantized.write(output, root, session.step, config, qparams, activations)
    print(f"Wrote the int8 model of {root} (step {session.step}) to {output}")


if __name__ == "__main__":
    command.run(_quantize)
