"""Learning-rate schedule values and the weight-decay mask, against hand-computed expectations."""

import importlib
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import default
from data_pipeline.errors import ConfigError
from pretrain.training import validation
from pretrain.training.optimizer import learning_rate_schedule, make_optimizer, weight_decay_mask


def _opt_config(**overrides):
    c = default.get_config().optimizer
    c.unlock()
    c.update(overrides)
    return c


def test_linear_warmup_then_linear_decay():
    sched = learning_rate_schedule(_opt_config(learning_rate=1e-3, warmup_steps=10), 110)
    assert float(sched(0)) == pytest.approx(0.0)
    assert float(sched(5)) == pytest.approx(5e-4)
    assert float(sched(10)) == pytest.approx(1e-3)
    assert float(sched(60)) == pytest.approx(5e-4)  # Halfway through the 100 decay steps.
    assert float(sched(110)) == pytest.approx(0.0, abs=1e-12)


def test_polynomial_decay_power():
    sched = learning_rate_schedule(
        _opt_config(learning_rate=1.0, warmup_steps=0, decay="polynomial", decay_power=2.0), 100
    )
    assert float(sched(50)) == pytest.approx(0.25)


def test_warmup_stable_decay_is_a_trapezoid():
    """10 warmup steps, the peak until the last 20% (step 80 of 100), then linear to 0."""
    sched = learning_rate_schedule(
        _opt_config(learning_rate=1e-3, warmup_steps=10, decay="wsd", decay_fraction=0.2), 100
    )
    expected = [min(s / 10, 1.0, (100 - s) / 20) * 1e-3 for s in range(101)]
    np.testing.assert_allclose([float(sched(s)) for s in range(101)], expected, atol=1e-9)


def test_unknown_decay_is_a_clear_error():
    with pytest.raises(ValueError, match="config.optimizer.decay"):
        learning_rate_schedule(_opt_config(decay="cosine"), 10)


class _Tiny(nnx.Module):
    def __init__(self):
        rngs = nnx.Rngs(0)
        self.dense = nnx.Linear(3, 4, rngs=rngs)
        self.norm = nnx.LayerNorm(4, rngs=rngs)
        self.embed = nnx.Embed(5, 4, rngs=rngs)


def test_weight_decay_mask_skips_biases_and_layer_norm():
    params = nnx.state(_Tiny(), nnx.Param)
    mask = nnx.to_pure_dict(weight_decay_mask(params))
    assert mask == {
        "dense": {"kernel": True, "bias": False},
        "norm": {"scale": False, "bias": False},
        "embed": {"embedding": True},
    }


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_decoupled_weight_decay_only_on_masked_leaves(name):
    # With zero gradients Adam's update is 0, so only weight decay moves parameters.
    params = nnx.state(_Tiny(), nnx.Param)
    tx, _ = make_optimizer(
        _opt_config(
            name=name, learning_rate=0.1, warmup_steps=0, decay="constant", weight_decay=0.5
        ),
        10,
    )
    zeros = jax_zeros_like(params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    new = nnx.to_pure_dict(optax.apply_updates(params, updates))
    old = nnx.to_pure_dict(params)
    np.testing.assert_array_equal(new["dense"]["bias"], old["dense"]["bias"])
    np.testing.assert_array_equal(new["norm"]["scale"], old["norm"]["scale"])
    assert not np.allclose(new["dense"]["kernel"], old["dense"]["kernel"])
    if name == "adamw":  # p <- p - lr * wd * p
        np.testing.assert_allclose(new["dense"]["kernel"], old["dense"]["kernel"] * 0.95, rtol=1e-6)


def jax_zeros_like(tree):
    return jax.tree.map(jnp.zeros_like, tree)


def test_gradients_are_clipped_to_global_norm_before_adam():
    params = {"kernel": jnp.ones((2,))}
    tx, _ = make_optimizer(
        _opt_config(name="adamw", learning_rate=1.0, warmup_steps=0, decay="constant"), 10
    )
    _, state = tx.update({"kernel": jnp.array([3.0, 4.0])}, tx.init(params), params)
    # Adam's first moment after one step is (1 - b1) * g, with g clipped from norm 5 to norm 1.
    mu = optax.tree_utils.tree_get(state, "mu")
    np.testing.assert_allclose(mu["kernel"], [0.1 * 0.6, 0.1 * 0.8], rtol=1e-5)


def _stock(spec: str, num_train_steps: int):
    """The stock config `configs/NAME.py[:ARG]`, shortened to `num_train_steps`."""
    name, _, arg = spec.partition(":")
    module = importlib.import_module(f"configs.{name}")
    config = module.get_config(arg) if arg else module.get_config()
    config.num_train_steps = num_train_steps
    return config


def test_a_shortened_run_warms_up_over_all_its_steps():
    config = _stock("smoke", 30)  # warmup_steps=60, peak 2e-3.
    tx, lr = make_optimizer(config.optimizer, config.num_train_steps)
    state = tx.init({"kernel": jnp.ones((2,))})
    expected = [2e-3 * s / 30 for s in range(31)]
    np.testing.assert_allclose([float(lr(s)) for s in range(31)], expected, rtol=1e-5)
    np.testing.assert_allclose(
        [float(lr.applied(state, s)) for s in range(31)], expected, rtol=1e-5
    )


def test_an_unshortened_schedule_keeps_its_warmup():
    config = _stock("smoke", 600)
    _, lr = make_optimizer(config.optimizer, config.num_train_steps)
    steps = np.arange(0, 601, 10)
    expected = 2e-3 * np.minimum(steps / 60, (600 - steps) / 540)
    np.testing.assert_allclose([float(lr(s)) for s in steps], expected, rtol=1e-5, atol=1e-12)


STOCK_CONFIGS = [
    *(f"bert:{size}" for size in ("tiny", "mini", "small", "medium", "base", "large")),
    *("smoke", "modernbert:base", "modernbert:large", "modernbert_smoke", "modernbert_cpu"),
    *("finetune_classify", "finetune_tokens", "finetune_qa", "glue"),
]


@pytest.mark.parametrize("spec", STOCK_CONFIGS)
def test_every_stock_config_runs_30_steps(spec):
    config = _stock(spec, 30)
    if "init_from" in config:  # A fine-tuning config (pretraining ones have a task key too).
        config.init_from = "PRETRAIN_DIR"
        validation.check_finetuning(config, tasks=(config.task,))
    else:
        config.data.train_files = config.data.train_files or "corpus.txt"
        validation.check_pretraining(config)
    _, lr = make_optimizer(config.optimizer, 30)
    rates = np.array([float(lr(s)) for s in range(31)])
    assert rates[0] == 0.0 and np.all(rates[1:-1] > 0) and np.all(rates <= lr.peak * (1 + 1e-6))


def test_validation_warns_once_about_a_clipped_warmup(caplog):
    with caplog.at_level(logging.WARNING):
        validation.check_pretraining(_stock("smoke", 30))
    assert [r.getMessage() for r in caplog.records] == [
        "config.optimizer.warmup_steps=60 exceeds config.num_train_steps=30; "
        "warming up over all 30 steps."
    ]


def test_validation_still_rejects_a_negative_warmup():
    config = _stock("smoke", 30)
    config.optimizer.warmup_steps = -5
    with pytest.raises(ConfigError, match=r"warmup_steps must be >= 0, got -5"):
        validation.check_pretraining(config)
