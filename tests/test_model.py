"""pretrain/models (BERT encoder, heads): shapes, dtypes, parameters, masks and dropout."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import default
from pretrain.models import heads
from pretrain.models.config import EncoderConfig
from pretrain.models.params import count_params

TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
)
B, S, P = 2, 12, 4
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
LOGICAL_NAMES = {"vocab", "embed", "heads", "kv", "mlp", "norm", "classes", None}


def tiny_config(**overrides) -> EncoderConfig:
    return EncoderConfig(**{**TINY, **overrides})


def make_batch(seed: int = 0, lengths=(12, 7)) -> dict[str, jax.Array]:
    """Random ids with sequence b padded after lengths[b]; masked positions inside the real part."""
    rng = np.random.default_rng(seed)
    input_mask = (np.arange(S)[None, :] < np.array(lengths)[:, None]).astype(np.int32)
    input_ids = rng.integers(5, TINY["vocab_size"], size=(B, S)).astype(np.int32) * input_mask
    segment_ids = ((np.arange(S)[None, :] >= 4) * input_mask).astype(np.int32)
    positions = np.stack([rng.choice(n, size=P, replace=False) for n in lengths]).astype(np.int32)
    return dict(
        input_ids=jnp.asarray(input_ids),
        input_mask=jnp.asarray(input_mask),
        segment_ids=jnp.asarray(segment_ids),
        masked_lm_positions=jnp.asarray(positions),
    )


def run(model, batch, **kwargs):
    return model(
        batch["input_ids"],
        batch["input_mask"],
        batch["segment_ids"],
        batch["masked_lm_positions"],
        **kwargs,
    )


def test_shapes_and_float32_outputs_with_bf16_compute():
    model = heads.PreTrainingModel(tiny_config(dtype="bfloat16"), rngs=nnx.Rngs(params=0))
    mlm, nsp = run(model, make_batch(), deterministic=True)
    assert mlm.shape == (B, P, TINY["vocab_size"]) and mlm.dtype == jnp.float32
    assert nsp.shape == (B, 2) and nsp.dtype == jnp.float32
    assert np.all(np.isfinite(mlm)) and np.all(np.isfinite(nsp))
    params = nnx.state(model, nnx.Param)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}


def test_bert_base_parameter_count():
    cfg = EncoderConfig(vocab_size=30522)  # Defaults are BERT-base.
    abstract = nnx.eval_shape(lambda: heads.PreTrainingModel(cfg, rngs=nnx.Rngs(params=0)))
    h, i, v, layers = 768, 3072, 30522, 12
    embeddings = (v + 512 + 2) * h + 2 * h
    layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 2 * (2 * h)
    pooler = h * h + h
    on_top = (h * h + h) + 2 * h + v + (2 * h + 2)  # MLM transform, its LN, decoder bias, NSP.
    expected = embeddings + layers * layer + pooler + on_top
    assert expected == 110_106_428  # HF BertForPreTraining (tied decoder counted once).
    assert count_params(nnx.state(abstract, nnx.Param)) == expected


def test_every_parameter_has_logical_axes_of_its_rank():
    model = heads.PreTrainingModel(tiny_config(), rngs=nnx.Rngs(params=0))
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert len(flat) == 5 + 16 * TINY["num_hidden_layers"] + 2 + 7
    for path, var in flat:
        axes = var.get_metadata().get("out_sharding")
        assert axes is not None, path
        assert len(axes) == var[...].ndim, path
        assert set(axes) <= LOGICAL_NAMES, path
    by_path = {"/".join(map(str, p)): v.get_metadata()["out_sharding"] for p, v in flat}
    assert by_path["encoder/embeddings/word_embeddings/embedding"] == ("vocab", "embed")
    assert by_path["encoder/layers/0/attention/query/kernel"] == ("embed", "heads", "kv")
    assert by_path["encoder/layers/1/attention/output/kernel"] == ("heads", "kv", "embed")
    assert by_path["encoder/layers/1/attention/output/bias"] == ("embed",)
    assert by_path["encoder/layers/1/mlp_in/kernel"] == ("embed", "mlp")
    assert by_path["encoder/layers/1/mlp_in/bias"] == ("mlp",)
    assert by_path["encoder/layers/1/mlp_norm/scale"] == ("norm",)
    assert by_path["mlm_head/bias"] == ("vocab",)


def test_initialization_statistics():
    model = heads.PreTrainingModel(tiny_config(), rngs=nnx.Rngs(params=0))
    table = np.asarray(model.encoder.embeddings.word_embeddings.embedding[...])
    assert abs(table.std() - 0.02 * 0.88) < 0.002  # Truncation at 2 std shrinks std by ~0.88.
    assert np.abs(table).max() <= 0.04 + 1e-6
    layer = model.encoder.layers[0]
    np.testing.assert_array_equal(layer.attention_norm.scale[...], np.ones(32))
    np.testing.assert_array_equal(layer.mlp_in.bias[...], np.zeros(37))


@pytest.mark.parametrize("impl", ["xla", "einsum"])
def test_padding_does_not_change_real_positions(impl):
    model = heads.PreTrainingModel(tiny_config(attention_impl=impl), rngs=nnx.Rngs(params=0))
    batch = make_batch()
    padded = batch["input_mask"] == 0
    changed = dict(batch)
    changed["input_ids"] = jnp.where(padded, 42, batch["input_ids"])
    changed["segment_ids"] = jnp.where(padded, 1, batch["segment_ids"])
    mlm, nsp = run(model, batch, deterministic=True)
    mlm2, nsp2 = run(model, changed, deterministic=True)
    np.testing.assert_allclose(mlm, mlm2, atol=1e-5)
    np.testing.assert_allclose(nsp, nsp2, atol=1e-5)
    # Sanity check that the comparison can fail: a real token changes the outputs.
    changed["input_ids"] = batch["input_ids"].at[1, 1].set(4)  # ids are >= 5
    assert np.abs(run(model, changed, deterministic=True)[0][1] - mlm[1]).max() > 1e-4


@pytest.mark.parametrize("impl", ["xla", "einsum"])
def test_fully_padded_row_stays_finite(impl):
    model = heads.PreTrainingModel(tiny_config(attention_impl=impl), rngs=nnx.Rngs(params=0))
    batch = make_batch()
    batch["input_mask"] = batch["input_mask"].at[1].set(0)  # An eval padding row.
    mlm, nsp = run(model, batch, deterministic=True)
    assert np.all(np.isfinite(mlm)) and np.all(np.isfinite(nsp))


def test_dropout_is_deterministic_per_key_and_off_when_deterministic():
    model = heads.PreTrainingModel(tiny_config(), rngs=nnx.Rngs(params=0))
    batch = make_batch()
    a = run(model, batch, deterministic=True)
    b = run(model, batch, deterministic=True, rngs=nnx.Rngs(dropout=1))
    np.testing.assert_array_equal(a[0], b[0])
    c = run(model, batch, deterministic=False, rngs=nnx.Rngs(dropout=1))
    d = run(model, batch, deterministic=False, rngs=nnx.Rngs(dropout=1))
    e = run(model, batch, deterministic=False, rngs=nnx.Rngs(dropout=2))
    np.testing.assert_array_equal(c[0], d[0])
    assert not np.allclose(a[0], c[0], atol=1e-3)
    assert not np.allclose(c[0], e[0], atol=1e-3)
    with pytest.raises(ValueError, match="rngs"):
        run(model, batch, deterministic=False)


def test_attention_dropout_is_applied_on_the_xla_path():
    # Only attention dropout on: 'xla' must fall back to the einsum path and drop probabilities.
    cfg = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5)
    batch = make_batch()
    outs = {}
    for impl in ("xla", "einsum"):
        model = heads.PreTrainingModel(tiny_config(attention_impl=impl, **cfg), rngs=nnx.Rngs(0))
        outs[impl] = run(model, batch, deterministic=False, rngs=nnx.Rngs(dropout=3))[0]
        clean = run(model, batch, deterministic=True)[0]
        assert not np.allclose(outs[impl], clean, atol=1e-3)
    np.testing.assert_allclose(outs["xla"], outs["einsum"], atol=1e-5)


def test_mlm_logits_equal_full_sequence_projection():
    model = heads.PreTrainingModel(tiny_config(), rngs=nnx.Rngs(params=0))
    batch = make_batch()
    mlm, _ = run(model, batch, deterministic=True)
    seq = model.encoder(
        batch["input_ids"], batch["input_mask"], batch["segment_ids"], deterministic=True, rngs=None
    )
    # The MLM head written out in numpy, applied to every position, then indexed.
    p = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    head, bias = p["mlm_head"]["head"], p["mlm_head"]["bias"]
    x = np.asarray(seq, np.float64) @ head["transform"]["kernel"] + head["transform"]["bias"]
    x = np.asarray(jax.nn.gelu(x, approximate=False))
    x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-12)
    x = x * head["layer_norm"]["scale"] + head["layer_norm"]["bias"]
    full = x @ np.asarray(p["encoder"]["embeddings"]["word_embeddings"]["embedding"]).T + bias
    expected = np.take_along_axis(full, np.asarray(batch["masked_lm_positions"])[..., None], 1)
    np.testing.assert_allclose(mlm, expected, atol=1e-4)


def test_attention_implementations_agree():
    batch = make_batch()
    outs = []
    for impl in ("xla", "einsum"):
        model = heads.PreTrainingModel(tiny_config(attention_impl=impl), rngs=nnx.Rngs(0))
        outs.append(run(model, batch, deterministic=True))
    np.testing.assert_allclose(outs[0][0], outs[1][0], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(outs[0][1], outs[1][1], atol=1e-5, rtol=1e-5)


def test_remat_keeps_outputs_and_gradients():
    batch = make_batch()

    # Unoptimized XLA: compiling a backward pass with dropout takes seconds otherwise on CPU.
    @functools.partial(jax.jit, static_argnums=0, compiler_options=FAST_COMPILE)
    def loss_and_grads(graphdef, params):
        def loss_fn(params):
            model = nnx.merge(graphdef, params)
            mlm, nsp = run(model, batch, deterministic=False, rngs=nnx.Rngs(dropout=7))
            return jnp.mean(mlm**2) + jnp.mean(nsp**2)

        return jax.value_and_grad(loss_fn)(params)

    results = {}
    for policy in ("none", "full", "dots"):
        model = heads.PreTrainingModel(tiny_config(remat_policy=policy), rngs=nnx.Rngs(0))
        results[policy] = loss_and_grads(*nnx.split(model, nnx.Param))
    loss, grads = results["none"]
    assert np.abs(np.asarray(jax.tree.leaves(grads)[0])).max() > 0
    for policy in ("full", "dots"):
        np.testing.assert_allclose(results[policy][0], loss, rtol=1e-6)
        for a, b in zip(jax.tree.leaves(results[policy][1]), jax.tree.leaves(grads), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)


def test_sequence_classifier_shares_the_encoder_tree():
    cfg = tiny_config(dtype="bfloat16")
    clf = heads.SequenceClassifier(cfg, 3, dropout_rate=0.1, rngs=nnx.Rngs(params=0))
    pre = heads.PreTrainingModel(cfg, rngs=nnx.Rngs(params=0))
    batch = make_batch()
    logits = clf(batch["input_ids"], batch["input_mask"], batch["segment_ids"], deterministic=True)
    assert logits.shape == (B, 3) and logits.dtype == jnp.float32
    shapes = lambda m: jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(m.encoder, nnx.Param)))
    assert shapes(clf) == shapes(pre)


def test_from_config_reads_default_model_fields():
    cfg = EncoderConfig.from_config(default.get_config().model, vocab_size=8000, dtype="bfloat16")
    assert cfg.vocab_size == 8000 and cfg.hidden_size == 768 and cfg.num_hidden_layers == 12
    assert cfg.dtype == jnp.bfloat16 and cfg.param_dtype == jnp.float32
    assert cfg.attention_impl == "xla" and cfg.layer_norm_eps == 1e-12


@pytest.mark.parametrize(
    "overrides, key",
    [
        (dict(num_attention_heads=5), "num_attention_heads"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(hidden_act="relu"), "hidden_act"),
        (dict(attention_impl="flash"), "attention_impl"),
        (dict(remat_policy="some"), "remat_policy"),
        (dict(attention_impl="cudnn"), "attention_probs_dropout_prob"),
        (dict(dtype="int8"), "dtype"),
        (dict(dtype="bf16"), "dtype"),
    ],
)
def test_invalid_config_names_the_key(overrides, key):
    with pytest.raises(ValueError, match=key):
        tiny_config(**overrides)


def test_sequence_longer_than_positions_is_rejected():
    model = heads.PreTrainingModel(tiny_config(max_position_embeddings=8), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        run(model, make_batch(), deterministic=True)
