"""The one attention parity suite: every kernel that runs on CPU against a dense reference.

Each case draws a mask (padding suffixes, packed documents of random lengths with length-1
documents and an all-padding row) and a window (none, smaller than a document, larger than one,
larger than the row); each kernel's outputs and gradients at real queries must match the
reference built here from the rule itself. A new kernel joins by adding one entry to `IMPLS`.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import modernbert_smoke
from data_pipeline.errors import ConfigError
from pretrain.models import attention
from pretrain.models.config import EncoderConfig
from pretrain.tasks.pretraining import PretrainingTask
from pretrain.training import sharding
from pretrain.training.optimizer import make_optimizer
from pretrain.training.steps import build_steps

# attention_impl -> extra config: splash at its smallest legal blocks so interpret mode is quick.
IMPLS = {
    "einsum": {},
    "xla": {},
    "splash": dict(splash_block_q=128, splash_block_kv=128),
    "pallas_gpu": {},
}
B, S, N, D = 3, 128, 2, 16
# (mask kind, window, dtype). Windows: smaller than most documents (the xla path's blocks of 8),
# larger than most (blocks of 40), beyond the row (dense).
CASES = [
    ("padding", None, jnp.float32),
    ("padding", 40, jnp.float32),
    ("documents", None, jnp.float32),
    ("documents", 3, jnp.float32),
    ("documents", 40, jnp.float32),
    ("documents", 200, jnp.float32),
    ("padding", None, jnp.bfloat16),
    ("documents", 40, jnp.bfloat16),
]
TOLERANCE = {jnp.float32: 2e-5, jnp.bfloat16: 3e-2}


def draw_mask(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(input_mask [B, S], document_ids [B, S] or None). Row 1 is all padding in every kind."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, S + 1, B)
    lengths[1] = 0
    input_mask = (np.arange(S)[None, :] < lengths[:, None]).astype(np.int32)
    if kind == "padding":
        return input_mask, None
    documents = np.zeros((B, S), np.int32)  # 0 for padding, as the loader writes.
    for row, n in enumerate(lengths):
        sizes = rng.choice([1, 1, 2, 5, 17, 60], size=S)  # Length-1 documents are common.
        ids = np.repeat(np.arange(1, S + 1), sizes)[:n]
        documents[row, :n] = ids
    return input_mask, documents


def visible(input_mask, documents, window) -> np.ndarray:
    """bool [B, S, S]: the rule, position by position: key j is real, of query i's document, and
    within the window."""
    i, j = np.arange(S)[:, None], np.arange(S)[None, :]
    ok = np.broadcast_to(input_mask[:, None, :].astype(bool), (len(input_mask), S, S))
    if documents is not None:
        ok = ok & (documents[:, :, None] == documents[:, None, :])
    if window is not None:
        ok = ok & (np.abs(i - j) <= window)[None]
    return ok


def reference(q, k, v, ok) -> jax.Array:
    """Dense float32 softmax attention over the `ok` keys: [B, S, N, D]."""
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    scores = jnp.einsum("btnd,bsnd->bnts", q, k) / np.sqrt(D)
    scores = jnp.where(ok[:, None], scores, -1e30)
    return jnp.einsum("bnts,bsnd->btnd", jax.nn.softmax(scores, axis=-1), v)


def run(impl, q, k, v, input_mask, documents, window) -> jax.Array:
    cfg = EncoderConfig(
        vocab_size=8, hidden_size=N * D, num_hidden_layers=1, num_attention_heads=N,
        intermediate_size=8, dtype=q.dtype, attention_impl=impl, **IMPLS[impl],
    )  # fmt: skip
    docs = None if documents is None else jnp.asarray(documents)
    mask = attention.AttentionMask(jnp.asarray(input_mask), docs)
    return attention.attend(
        cfg, q, k, v, mask, nnx.Dropout(0.0), deterministic=True, rngs=None, window=window
    )


def loss_and_grads(fn, q, k, v, real, cotangent):
    """sum(out * cotangent) over real queries, and its gradients with respect to q, k, v."""

    def loss(q, k, v):
        out = fn(q, k, v).astype(jnp.float32)
        return jnp.sum(out * cotangent * real[:, :, None, None])

    return jax.value_and_grad(loss, argnums=(0, 1, 2))(q, k, v)


# Interpret mode is slow: the Pallas kernels run their other cases only in the slow (still CI)
# selection. (pallas_gpu leaves windows to the xla blocks, so its quick case has none.)
QUICK = {
    "splash": {("padding", None, jnp.float32), ("documents", 40, jnp.float32)},
    "pallas_gpu": {("documents", None, jnp.float32)},
}
PARAMS = [
    pytest.param(
        impl,
        *case,
        id=f"{impl}-{case[0]}-w{case[1]}-{jnp.dtype(case[2]).name}",
        marks=[pytest.mark.slow] if impl in QUICK and case not in QUICK[impl] else [],
    )  # fmt: skip
    for impl in IMPLS
    for case in CASES
]


@pytest.mark.parametrize("impl, kind, window, dtype", PARAMS)
def test_outputs_and_gradients_match_the_reference(impl, kind, window, dtype):
    seed = CASES.index((kind, window, dtype))
    input_mask, documents = draw_mask(kind, seed)
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(B, S, N, D)), dtype) for _ in range(3))
    cotangent = jnp.asarray(rng.normal(size=(B, S, N, D)), jnp.float32)
    real = jnp.asarray(input_mask, jnp.float32)
    ok = jnp.asarray(visible(input_mask, documents, window))

    got = jax.jit(lambda q, k, v: run(impl, q, k, v, input_mask, documents, window))
    got_loss, got_grads = loss_and_grads(got, q, k, v, real, cotangent)
    want_loss, want_grads = loss_and_grads(
        lambda q, k, v: reference(q, k, v, ok), q, k, v, real, cotangent
    )

    out = np.asarray(got(q, k, v), np.float32)
    assert np.isfinite(out).all()  # Padding queries too, the all-padding row included.
    want = np.asarray(reference(q, k, v, ok))
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(out[input_mask == 1], want[input_mask == 1], atol=tol, rtol=tol)
    np.testing.assert_allclose(got_loss, want_loss, rtol=tol, atol=tol * 10)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w), atol=tol * 5, rtol=tol)


@pytest.mark.parametrize("impl", IMPLS)
def test_no_query_sees_a_key_outside_its_window_or_document(impl):
    """The jax#39576 failure: with v the identity (D = S), the output row of query i is its
    attention weights over the keys, so every excluded key can be checked for weight 0."""
    n, d = 1, S
    input_mask, documents = draw_mask("documents", seed=7)
    window = 6
    q, k = (
        jnp.asarray(np.random.default_rng(s).normal(size=(B, S, n, d)), jnp.float32) for s in (1, 2)
    )
    v = jnp.broadcast_to(jnp.eye(S, dtype=jnp.float32)[None, :, None, :], (B, S, n, d))
    cfg = EncoderConfig(
        vocab_size=8, hidden_size=n * d, num_hidden_layers=1, num_attention_heads=n,
        intermediate_size=8, attention_impl=impl, **IMPLS[impl],
    )  # fmt: skip
    mask = attention.AttentionMask(jnp.asarray(input_mask), jnp.asarray(documents))
    dropout = nnx.Dropout(0.0)
    attend = jax.jit(
        lambda *a: attention.attend(cfg, *a, dropout, deterministic=True, rngs=None, window=window)
    )
    weights = np.asarray(attend(q, k, v, mask))[:, :, 0, :]  # [B, S queries, S keys]
    ok = visible(input_mask, documents, window)
    real = input_mask == 1
    assert np.all(weights[real][~ok[real]] == 0.0)
    assert np.all(weights[real][ok[real]] > 0.0)
    np.testing.assert_allclose(weights[real].sum(-1), 1.0, atol=1e-5)


def test_splash_blocks_that_do_not_divide_the_row_are_a_config_error():
    q = jnp.zeros((1, 192, N, D))
    with pytest.raises(ConfigError, match="splash_block_q"):
        run("splash", q, q, q, np.ones((1, 192), np.int32), None, None)


def test_splash_runs_per_shard_under_a_mesh():
    """Batch over `data`, heads over `tensor` (shard_map); the same numbers as the reference."""
    mesh_cfg = ml_collections.ConfigDict(dict(data=2, fsdp=1, tensor=2))
    mesh = sharding.create_mesh(mesh_cfg, jax.devices()[:4])
    input_mask, documents = draw_mask("documents", seed=3)
    input_mask, documents = (
        np.concatenate([input_mask, input_mask[:1]]),
        np.concatenate([documents, documents[:1]]),
    )  # 4 rows: 2 per data shard.
    rng = np.random.default_rng(3)
    q, k, v = (jnp.asarray(rng.normal(size=(4, S, N, D)), jnp.float32) for _ in range(3))
    with jax.set_mesh(mesh):
        got = jax.jit(lambda q, k, v: run("splash", q, k, v, input_mask, documents, 40))(q, k, v)
        text = (
            jax.jit(lambda q: run("splash", q, q, q, input_mask, documents, 40)).lower(q).as_text()
        )
    assert "shard_map" in text or "sdy.manual_computation" in text
    want = reference(q, k, v, jnp.asarray(visible(input_mask, documents, 40)))
    real = input_mask == 1
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=2e-5)


@pytest.mark.slow
def test_modernbert_trains_on_packed_rows_with_splash_as_with_xla():
    """Smoke-sized ModernBERT (a global and a windowed layer) on packed rows with padding: two
        optimizer steps give the same losses with Splash (per shard, interpreted) as with xla; the
    second step's loss is after the first update, so the gradients agree too."""
    config = modernbert_smoke.get_config()
    config.model.update(num_attention_heads=2, splash_block_q=128, splash_block_kv=128)
    tx, schedule = make_optimizer(config.optimizer, 10)
    mesh = sharding.create_mesh(ml_collections.ConfigDict(dict(data=2, fsdp=1, tensor=2)),
                                jax.devices()[:4])  # fmt: skip
    rules = tuple(config.mesh.logical_axis_rules)
    losses = {}
    for impl in ("xla", "splash"):
        config.model.attention_impl = impl
        task = PretrainingTask(config, 64)
        jitted = build_steps(task, tx, schedule, mesh, rules, grad_accum_steps=1, seed=0)
        state = jitted.init()
        losses[impl] = []
        for step in range(2):
            batch = sharding.host_to_global(packed_batch(step), mesh, rules, 4)
            if impl == "splash" and step == 0:  # The step builder's mesh reaches the kernel.
                text = jitted.train_step.lower(state, batch).as_text()
                assert "sdy.manual_computation" in text or "shard_map" in text
            state, metrics = jitted.train_step(state, batch)
            losses[impl].append(float(metrics["loss"]))
    np.testing.assert_allclose(losses["splash"], losses["xla"], rtol=1e-4)


def packed_batch(step: int, rows: int = 4, preds: int = 40) -> dict[str, np.ndarray]:
    """Rows of packed documents (`draw_mask`'s, one row all padding) with MLM targets."""
    input_mask, documents = draw_mask("documents", seed=step)
    input_mask = np.concatenate([input_mask, input_mask[:1]])[:rows]
    documents = np.concatenate([documents, documents[:1]])[:rows]
    rng = np.random.default_rng(step)
    positions = rng.integers(0, S, (rows, preds)).astype(np.int32)
    weights = np.take_along_axis(input_mask, positions, axis=1).astype(np.float32)
    return {
        "input_ids": (rng.integers(5, 64, (rows, S)) * input_mask).astype(np.int32),
        "input_mask": input_mask,
        "segment_ids": np.zeros((rows, S), np.int32),
        "document_ids": documents,
        "masked_lm_positions": positions,
        "masked_lm_ids": rng.integers(5, 64, (rows, preds)).astype(np.int32),
        "masked_lm_weights": weights,
    }


def test_every_impl_is_a_valid_config_and_splash_blocks_are_lane_multiples():
    for impl in IMPLS:
        assert EncoderConfig(attention_impl=impl, **IMPLS[impl]).attention_impl == impl
    with pytest.raises(ConfigError, match="multiples of 128"):
        EncoderConfig(attention_impl="splash", splash_block_kv=100)
