"""The jitted train step: exact gradient accumulation and identical losses on 1 and 8 devices."""

import jax
import ml_collections
import numpy as np
import pytest

from configs import default
from pretrain.tasks.pretraining import PretrainingTask
from pretrain.training import sharding
from pretrain.training.optimizer import make_optimizer
from pretrain.training.steps import build_steps

RULES = tuple(default.get_config().mesh.logical_axis_rules)
VOCAB = 64
TINY_MODEL = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=32,
    attention_impl="einsum",
)


def pretraining_steps(mesh, *, dropout: bool = False, grad_accum_steps: int = 1, **model):
    """The pretraining task's jitted steps for a tiny model (float32) on `mesh`."""
    config = default.get_config()
    config.model.update({**TINY_MODEL, **model})
    if not dropout:
        config.model.hidden_dropout_prob = config.model.attention_probs_dropout_prob = 0.0
    config.dtype = "float32"
    tx, schedule = _optimizer()
    task = PretrainingTask(config, VOCAB)
    jitted = build_steps(task, tx, schedule, mesh, RULES, grad_accum_steps=grad_accum_steps, seed=0)
    return jitted, schedule


def put(batch, mesh, batch_size: int = 16):
    """This process's rows of a global numpy batch, as global arrays on `mesh`."""
    rows = sharding.process_rows(mesh, RULES, batch_size)
    local = {k: np.asarray(v)[rows] for k, v in batch.items()}
    return sharding.host_to_global(local, mesh, RULES, batch_size)


def synthetic_batch(step: int, batch_size: int = 16, seq: int = 16, preds: int = 4) -> dict:
    """A random but valid pretraining batch with padding, a function of `step` only."""
    rng = np.random.default_rng(step)
    lengths = rng.integers(6, seq + 1, batch_size)
    input_mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int32)
    n_preds = rng.integers(1, preds + 1, batch_size)
    positions = np.stack([rng.choice(np.arange(1, n - 1), preds) for n in lengths]).astype(np.int32)
    weights = (np.arange(preds)[None, :] < n_preds[:, None]).astype(np.float32)
    return {
        "input_ids": (rng.integers(5, 64, (batch_size, seq)) * input_mask).astype(np.int32),
        "input_mask": input_mask,
        "segment_ids": ((np.arange(seq)[None, :] > lengths[:, None] // 2) * input_mask).astype(
            np.int32
        ),
        "masked_lm_positions": positions * weights.astype(np.int32),
        "masked_lm_ids": rng.integers(5, 64, (batch_size, preds)).astype(np.int32),
        "masked_lm_weights": weights,
        "next_sentence_labels": rng.integers(0, 2, batch_size).astype(np.int32),
        "next_sentence_weights": np.ones(batch_size, np.float32),
    }


def _optimizer():
    c = default.get_config().optimizer
    c.learning_rate, c.warmup_steps = 1e-2, 2
    return make_optimizer(c, 10)


def _run(mesh_shape, devices, num_steps, grad_accum_steps=1, dropout=False):
    mesh_cfg = ml_collections.ConfigDict(dict(zip(sharding.MESH_AXES, mesh_shape)))
    mesh = sharding.create_mesh(mesh_cfg, devices)
    jitted, _ = pretraining_steps(mesh, dropout=dropout, grad_accum_steps=grad_accum_steps)
    state = jitted.init()
    losses = []
    for step in range(num_steps):
        state, metrics = jitted.train_step(state, put(synthetic_batch(step), mesh))
        losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state.params)


def _max_param_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


STEPS = 3


@pytest.fixture(scope="module")
def one_device_run():
    return _run((1, 1, 1), jax.devices()[:1], STEPS)


def test_accumulated_microbatches_equal_one_big_batch(one_device_run):
    big_losses, big_params = one_device_run
    acc_losses, acc_params = _run((1, 1, 1), jax.devices()[:1], STEPS, grad_accum_steps=4)
    np.testing.assert_allclose(acc_losses, big_losses, rtol=1e-6)
    assert _max_param_diff(acc_params, big_params) < 1e-6


# data=4 x tensor=2; data x fsdp x tensor; FSDP alone; pure data parallel.
@pytest.mark.parametrize("mesh_shape", [(4, 1, 2), (2, 2, 2), (1, 8, 1), (8, 1, 1)])
def test_eight_devices_match_one_device(mesh_shape, one_device_run):
    ref_losses, ref_params = one_device_run
    losses, params = _run(mesh_shape, jax.devices(), STEPS)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert _max_param_diff(params, ref_params) < 1e-5


def test_dropout_is_a_function_of_seed_and_step_not_the_mesh(one_device_run):
    ref, _ = _run((1, 1, 1), jax.devices()[:1], 1, dropout=True)
    sharded, _ = _run((4, 1, 2), jax.devices(), 1, dropout=True)
    np.testing.assert_allclose(sharded, ref, rtol=1e-5)
    no_dropout, _ = one_device_run
    assert ref[0] != pytest.approx(no_dropout[0], rel=1e-6)


def test_parameters_are_sharded_as_the_rules_say():
    mesh_cfg = ml_collections.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2})
    mesh = sharding.create_mesh(mesh_cfg)
    jitted, _ = pretraining_steps(mesh)
    state = jitted.init()
    layer = state.params["encoder"]["layers"][0]
    specs = {
        path: leaf.sharding.spec for path, leaf in jax.tree_util.tree_flatten_with_path(layer)[0]
    }
    by_name = {"/".join(str(getattr(k, "key", k)) for k in p): s for p, s in specs.items()}
    query = next(v for k, v in by_name.items() if "query" in k and "kernel" in k)
    assert tuple(query) == ("fsdp", "tensor", None)
    # Adam moments shard like their parameters (FSDP shards optimizer state too).
    mu = jax.tree.leaves(state.opt_state)
    assert any(
        getattr(x, "sharding", None) is not None and "fsdp" in str(x.sharding.spec) for x in mu
    )


def test_a_skipped_step_leaves_no_trace_and_holds_the_schedule_back():
    """[b0, NaN batch, b2] ends exactly where [b0, b2] does, and logs the rate it applied."""
    one = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1})
    mesh = sharding.create_mesh(one, jax.devices()[:1])
    # Warmup 2 steps, then linear decay: every step's rate differs.
    jitted, schedule = pretraining_steps(mesh)
    nan_batch = synthetic_batch(1)
    nan_batch["masked_lm_weights"] = nan_batch["masked_lm_weights"] * np.nan

    def run(batches):
        state, rates = jitted.init(), []
        for batch in batches:
            state, metrics = jitted.train_step(state, put(batch, mesh))
            rates.append(float(metrics["learning_rate"]))
        return jax.device_get(state), rates

    skipped, skipped_rates = run([synthetic_batch(0), nan_batch, synthetic_batch(2)])
    clean, clean_rates = run([synthetic_batch(0), synthetic_batch(2)])
    assert int(skipped.bad_steps) == 1 and int(skipped.first_bad_step) == 1
    assert _max_param_diff(skipped.params, clean.params) == 0.0
    assert skipped_rates[2] == clean_rates[1] == pytest.approx(float(schedule(1)))
    assert float(schedule(1)) != pytest.approx(float(schedule(2)))
