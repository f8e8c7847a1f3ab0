"""The ModernBERT encoder: parity with transformers' `ModernBert*` classes, sliding windows and
packed rows against independent references."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pretrain.hf import convert as hf_convert
from pretrain.models import attention, heads, modernbert
from pretrain.models.config import EncoderConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Three layers: 0 global, 1 and 2 local with a window of 4 either side (local_attention=8), so
# rows of 24 tokens have keys outside the window.
HF_TINY = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=40,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=64,
    global_attn_every_n_layers=3,
    local_attention=8,
    global_rope_theta=160_000.0,
    local_rope_theta=10_000.0,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    cls_token_id=1,
    sep_token_id=2,
)
B, S = 3, 24
TOLERANCE = 1e-4  # float32 max abs logit difference.


def hf_model(cls=None, **overrides):
    """A tiny HF ModernBERT in eval mode, every parameter moved off its init (tied stay tied)."""
    torch.manual_seed(0)
    config = transformers.ModernBertConfig(**{**HF_TINY, **overrides})
    config._attn_implementation = "eager"
    model = (cls or transformers.ModernBertForMaskedLM)(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def numpy_state_dict(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def our_config(hf, **overrides) -> EncoderConfig:
    kwargs = hf_convert.config_from_hf(hf.config.to_dict())
    return EncoderConfig(**{**kwargs, "dtype": jnp.float32, **overrides})


def load(model: nnx.Module, params: dict) -> None:
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)


def make_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = np.array([S, 19, 7])
    mask = (np.arange(S)[None] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(3, HF_TINY["vocab_size"], size=(B, S)).astype(np.int32) * mask
    return dict(input_ids=ids, input_mask=mask, lengths=lengths)


def hf_outputs(model, x):
    with torch.no_grad():
        return model(
            input_ids=torch.from_numpy(x["input_ids"]).long(),
            attention_mask=torch.from_numpy(x["input_mask"]).long(),
        ).logits.numpy()


def all_positions() -> np.ndarray:
    return np.broadcast_to(np.arange(S, dtype=np.int32), (B, S))


def assert_close_on_real_tokens(got, expected, lengths) -> None:
    for row, n in enumerate(lengths):
        diff = float(np.abs(got[row, :n] - expected[row, :n]).max())
        assert diff <= TOLERANCE, (row, diff)
    assert np.abs(expected).mean() > 0.1  # The comparison is not between tiny numbers.


@pytest.mark.parametrize("impl", ["einsum", "xla"])
def test_import_matches_hf_masked_lm_logits(impl):
    hf = hf_model()
    cfg = our_config(hf, attention_impl=impl)
    ours = heads.PreTrainingModel(cfg, with_nsp=False, rngs=nnx.Rngs(params=0))
    load(ours, hf_convert.from_hf_state_dict(numpy_state_dict(hf), cfg, head="masked_lm"))
    x = make_inputs()
    mlm, nsp = ours(
        x["input_ids"], x["input_mask"], np.zeros_like(x["input_mask"]), all_positions(),
        deterministic=True,
    )  # fmt: skip
    assert nsp is None
    assert_close_on_real_tokens(np.asarray(mlm), hf_outputs(hf, x), x["lengths"])


def test_export_loads_strictly_into_hf_with_same_logits():
    cfg = our_config(hf_model())
    ours = heads.PreTrainingModel(cfg, with_nsp=False, rngs=nnx.Rngs(params=1))
    params = nnx.to_pure_dict(nnx.state(ours, nnx.Param))
    rng = np.random.default_rng(2)
    params = jax.tree.map(lambda p: np.float32(p + 0.3 * rng.normal(size=p.shape)), params)
    load(ours, params)

    state_dict = hf_convert.to_hf_state_dict(params, cfg)
    special = {k: v for k, v in HF_TINY.items() if k.endswith("token_id")}
    hf_config = transformers.ModernBertConfig(
        **{**hf_convert.config_to_hf(cfg, "masked_lm"), **special}
    )
    hf_config._attn_implementation = "eager"
    hf = transformers.ModernBertForMaskedLM(hf_config).eval()
    hf.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state_dict.items()}, strict=True)
    assert hf.decoder.weight is hf.model.embeddings.tok_embeddings.weight
    x = make_inputs(seed=1)
    mlm, _ = ours(
        x["input_ids"], x["input_mask"], np.zeros_like(x["input_mask"]), all_positions(),
        deterministic=True,
    )  # fmt: skip
    assert_close_on_real_tokens(np.asarray(mlm), hf_outputs(hf, x), x["lengths"])


@pytest.mark.parametrize(
    "cls, head",
    [
        ("ModernBertForMaskedLM", "masked_lm"),
        ("ModernBertForSequenceClassification", "classification"),
        ("ModernBertForTokenClassification", "token"),
        ("ModernBertForQuestionAnswering", "qa"),
    ],
)
def test_round_trip_preserves_every_tensor(cls, head):
    hf = hf_model(getattr(transformers, cls), num_labels=2 if head == "qa" else 3)
    state_dict = numpy_state_dict(hf)
    cfg = our_config(hf)
    params = hf_convert.from_hf_state_dict(state_dict, cfg, head=head)
    back = hf_convert.to_hf_state_dict(params, cfg, head=head)
    assert back.keys() == state_dict.keys()
    for name, value in state_dict.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_sequence_classifier_matches_hf(pooling):
    hf = hf_model(
        transformers.ModernBertForSequenceClassification, num_labels=3, classifier_pooling=pooling
    )
    cfg = our_config(hf)
    assert cfg.classifier_pooling == pooling
    params = hf_convert.from_hf_state_dict(numpy_state_dict(hf), cfg, head="classification")
    ours = heads.SequenceClassifier(cfg, 3, dropout_rate=0.0, rngs=nnx.Rngs(params=0))
    load(ours, params)
    x = make_inputs(seed=3)
    got = ours(x["input_ids"], x["input_mask"], np.zeros_like(x["input_mask"]), deterministic=True)
    expected = hf_outputs(hf, x)
    assert np.abs(np.asarray(got) - expected).max() <= TOLERANCE
    assert np.abs(expected).mean() > 0.1


def reference_attention(q, k, v, mask, documents, window):
    """Numpy attention, one query at a time, over the keys the rules allow."""
    out = np.zeros_like(q)
    b, s, n, d = q.shape
    for row in range(b):
        for i in range(s):
            keys = [
                j for j in range(s)
                if mask[row, j] and documents[row, j] == documents[row, i]
                and (window is None or abs(i - j) <= window)
            ]  # fmt: skip
            if not keys:
                continue
            scores = np.einsum("nd,knd->nk", q[row, i], k[row, keys]) / np.sqrt(d)
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            out[row, i] = np.einsum("nk,knd->nd", probs, v[row, keys])
    return out


@pytest.mark.parametrize("impl", ["einsum", "xla"])
@pytest.mark.parametrize("window", [None, 3])
def test_attention_with_windows_and_documents_matches_reference(impl, window):
    rng = np.random.default_rng(0)
    b, s, n, d = 2, 12, 2, 8
    q, k, v = (rng.normal(size=(b, s, n, d)).astype(np.float32) for _ in range(3))
    mask = np.ones((b, s), np.int32)
    mask[1, 9:] = 0
    documents = np.array([[1] * 5 + [2] * 4 + [3] * 3, [1] * 3 + [2] * 6 + [0] * 3], np.int32)
    cfg = EncoderConfig(
        vocab_size=10, hidden_size=16, num_hidden_layers=1, num_attention_heads=n,
        intermediate_size=16, dtype=jnp.float32, attention_impl=impl,
    )  # fmt: skip
    got = attention.attend(
        cfg, q, k, v, attention.AttentionMask(jnp.asarray(mask), jnp.asarray(documents)),
        nnx.Dropout(0.0), deterministic=True, rngs=None, window=window,
    )  # fmt: skip
    expected = reference_attention(q, k, v, mask, documents, window)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(got)[real], expected[real], atol=1e-5)


def test_packed_row_equals_its_documents_in_rows_of_their_own():
    """Two documents packed in one row (document ids, positions restarting) give the hidden
    states each gets alone: attention, windows and rotary positions never cross the boundary."""
    cfg = dataclasses.replace(our_config(hf_model()), attention_impl="xla")
    encoder = heads.make_encoder(cfg, nnx.Rngs(params=0))
    rng = np.random.default_rng(4)
    first, second = rng.integers(3, 97, 14), rng.integers(3, 97, 10)
    packed = np.concatenate([first, second])[None].astype(np.int32)  # [1, 24]
    documents = np.array([[1] * 14 + [2] * 10], np.int32)
    positions = np.array([[*range(14), *range(10)]], np.int32)
    together = encoder(
        packed, np.ones_like(packed), np.zeros_like(packed), document_ids=documents,
        positions=positions, deterministic=True, rngs=None,
    )  # fmt: skip
    for doc, (start, stop) in zip((first, second), ((0, 14), (14, 24))):
        ids = np.zeros((1, S), np.int32)
        ids[0, : len(doc)] = doc
        mask = (ids > 0).astype(np.int32)
        alone = encoder(ids, mask, np.zeros_like(ids), deterministic=True, rngs=None)
        np.testing.assert_allclose(
            np.asarray(together)[0, start:stop], np.asarray(alone)[0, : len(doc)], atol=1e-5
        )


def test_local_layers_see_only_their_window():
    """Changing one token moves a local layer's output only within its window."""
    cfg = dataclasses.replace(
        our_config(hf_model()), num_hidden_layers=2, global_attn_every_n_layers=2
    )
    encoder = heads.make_encoder(cfg, nnx.Rngs(params=0))
    # Layer 0 is global: skip it to look at layer 1 (local) alone.
    ids = np.random.default_rng(5).integers(3, 97, (1, S)).astype(np.int32)
    x = encoder.embeddings(jnp.asarray(ids), deterministic=True, rngs=None).astype(jnp.float32)
    aux = {
        "mask": attention.AttentionMask(jnp.ones((1, S), jnp.int32)),
        "rope_global": None,
        "rope_local": modernbert.rotary_tables(
            jnp.arange(S)[None], cfg.head_dim, cfg.local_rope_theta
        ),
    }
    local = encoder.layers[1]
    base = np.asarray(local(x, aux, deterministic=True, rngs=None))
    changed = x.at[0, 12].add(jnp.asarray(np.random.default_rng(6).normal(size=cfg.hidden_size)))
    moved = np.abs(np.asarray(local(changed, aux, deterministic=True, rngs=None)) - base).max(-1)
    half = cfg.local_attention // 2
    assert np.all(moved[0, np.abs(np.arange(S) - 12) > half] == 0)
    assert np.all(moved[0, np.abs(np.arange(S) - 12) <= half] > 0)


@pytest.mark.parametrize(
    "cls, head, outputs",
    [("ModernBertForTokenClassification", "token", 5), ("ModernBertForQuestionAnswering", "qa", 2)],
)
def test_token_and_qa_heads_match_hf(cls, head, outputs):
    hf = hf_model(getattr(transformers, cls), num_labels=outputs)
    cfg = our_config(hf)
    ours = heads.TokenClassifier(cfg, outputs, dropout_rate=0.0, rngs=nnx.Rngs(params=0))
    load(ours, hf_convert.from_hf_state_dict(numpy_state_dict(hf), cfg, head=head))
    x = make_inputs(seed=4)
    with torch.no_grad():
        out = hf(
            input_ids=torch.from_numpy(x["input_ids"]).long(),
            attention_mask=torch.from_numpy(x["input_mask"]).long(),
        )
    expected = (
        out.logits.numpy() if head == "token"
        else np.stack([out.start_logits.numpy(), out.end_logits.numpy()], axis=-1)
    )  # fmt: skip
    got = ours(x["input_ids"], x["input_mask"], np.zeros_like(x["input_mask"]), deterministic=True)
    assert_close_on_real_tokens(np.asarray(got), expected, x["lengths"])
