"""The train step compiles once: new batch values, logging, eval and checkpoints never recompile.

Compilations are counted from `jax.log_compiles`, which logs "Compiling jit(NAME) ..." for every
XLA compilation, ahead-of-time ones included.
"""

import logging

import jax
import ml_collections
import pytest

from configs import smoke
from pretrain.tasks.pretraining import PretrainingTask
from pretrain.training import loop, sharding
from tests.cli_utils import MODEL_COMPILE
from tests.test_steps import pretraining_steps, put, synthetic_batch


def _compiles(caplog) -> dict[str, int]:
    """Compilations per jitted function name, from the captured log records."""
    counts: dict[str, int] = {}
    for record in caplog.records:
        if match := MODEL_COMPILE.search(record.getMessage()):
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return counts


def test_jitted_step_compiles_once_across_batches(caplog):
    mesh = sharding.create_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}))
    jitted, _ = pretraining_steps(mesh, num_hidden_layers=1, attention_impl="xla")
    state = jitted.init()
    with caplog.at_level(logging.WARNING), jax.log_compiles(True):
        for step in range(4):  # Different tokens, lengths, masks and labels every step.
            state, metrics = jitted.train_step(state, put(synthetic_batch(step), mesh))
            float(metrics["loss"])  # The host reads metrics, as at a logging step.
    assert _compiles(caplog).get("train_step") == 1


@pytest.mark.slow
def test_loop_compiles_train_and_eval_steps_once(
    caplog, tmp_path, pipeline_corpus, pipeline_tokenizer
):
    config = smoke.get_config()
    config.data.train_files = config.data.eval_files = str(pipeline_corpus[0])
    config.data.tokenizer_model = pipeline_tokenizer.model_path
    config.data.max_seq_length, config.data.max_predictions_per_seq = 32, 5
    config.model.num_hidden_layers, config.model.hidden_size = 1, 32
    config.model.intermediate_size = 64
    config.global_batch_size, config.eval_batch_size, config.max_eval_batches = 16, 16, 2
    # Steps that log, evaluate and checkpoint, and steps that do none of it.
    config.num_train_steps, config.log_every_steps = 7, 2
    config.optimizer.warmup_steps = 2
    config.eval_every_steps = config.checkpoint_every_steps = 3
    with caplog.at_level(logging.WARNING), jax.log_compiles(True):
        loop.train(config, str(tmp_path), PretrainingTask)
    compiles = _compiles(caplog)
    assert compiles.get("train_step") == 1, compiles
    assert compiles.get("eval_step") == 1, compiles  # Three evaluations, one compilation.
    assert (tmp_path / "checkpoints" / "7").exists()


def _train_step_hlo(lr: float, seed: int) -> str:
    from configs import finetune_classify
    from pretrain.models.config import EncoderConfig
    from pretrain.tasks.classification import ClassificationTask
    from pretrain.training import steps
    from pretrain.training.optimizer import make_optimizer

    c = finetune_classify.get_config()
    c.unlock()
    c.optimizer.learning_rate, c.seed, c.num_train_steps = lr, seed, 10
    model = EncoderConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=32)  # fmt: skip
    task = ClassificationTask.for_model(c, model, ["a", "b"])
    tx, schedule = make_optimizer(c.optimizer, c.num_train_steps, 1)
    mesh = sharding.create_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}))
    jitted = steps.build_steps(task, tx, schedule, mesh, tuple(c.mesh.logical_axis_rules),
                               grad_accum_steps=1, seed=seed)  # fmt: skip
    return jitted.train_step.lower(jitted.abstract_state, {
        "input_ids": jax.ShapeDtypeStruct((16, 8), "int32"),
        "input_mask": jax.ShapeDtypeStruct((16, 8), "int32"),
        "segment_ids": jax.ShapeDtypeStruct((16, 8), "int32"),
        "label": jax.ShapeDtypeStruct((16,), "int32"),
        "example_weight": jax.ShapeDtypeStruct((16,), "float32"),
    }).as_text()  # fmt: skip


def test_learning_rate_and_seed_are_not_constants_of_the_train_step():
    """A learning-rate sweep compiles once: the peak rate and the dropout key are state."""
    reference = _train_step_hlo(1e-3, 0)
    assert _train_step_hlo(5e-5, 0) == reference
    assert _train_step_hlo(1e-3, 7) == reference
