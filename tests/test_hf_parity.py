"""Parity with Hugging Face `transformers` BERT (PyTorch): import, export and round trips."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pretrain.hf import convert as hf_convert
from pretrain.models import heads
from pretrain.models.config import EncoderConfig
from pretrain.models.params import count_params

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

HF_TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
)
B, S, P = 3, 16, 5


def hf_model(cls=None, **overrides):
    """A tiny HF model in eval mode with every parameter perturbed (no zero biases, no unit LN)."""
    torch.manual_seed(0)
    config = transformers.BertConfig(**{**HF_TINY, **overrides})
    model = (cls or transformers.BertForPreTraining)(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # Tied decoder weight and bias are shared, so stay tied.
            p.add_(0.3 * torch.randn_like(p))
    return model


def numpy_state_dict(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def our_config(hf, **overrides) -> EncoderConfig:
    kwargs = hf_convert.config_from_hf(hf.config.to_dict())
    return EncoderConfig(**kwargs, dtype=jnp.float32, **overrides)


def load(model: nnx.Module, params: dict) -> None:
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)


def make_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = np.array([S, 11, 6])
    mask = (np.arange(S)[None] < lengths[:, None]).astype(np.int32)
    return dict(
        input_ids=rng.integers(1, HF_TINY["vocab_size"], size=(B, S)).astype(np.int32) * mask,
        input_mask=mask,
        segment_ids=((np.arange(S)[None] >= 4) * mask).astype(np.int32),
        masked_lm_positions=np.stack([rng.choice(n, P, replace=False) for n in lengths]).astype(
            np.int32
        ),
    )


def hf_logits(model, x) -> tuple[np.ndarray, np.ndarray]:
    """HF logits: MLM at the masked positions [B, P, V] and NSP [B, 2]."""
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(x["input_ids"]).long(),
            attention_mask=torch.from_numpy(x["input_mask"]).long(),
            token_type_ids=torch.from_numpy(x["segment_ids"]).long(),
        )
    mlm = out.prediction_logits.numpy()
    mlm = np.take_along_axis(mlm, x["masked_lm_positions"][..., None].astype(np.int64), axis=1)
    return mlm, out.seq_relationship_logits.numpy()


def our_logits(model, x) -> tuple[np.ndarray, np.ndarray]:
    mlm, nsp = model(
        x["input_ids"],
        x["input_mask"],
        x["segment_ids"],
        x["masked_lm_positions"],
        deterministic=True,
    )
    return np.asarray(mlm), np.asarray(nsp)


@pytest.mark.parametrize(
    "impl, act", [("einsum", "gelu"), ("xla", "gelu"), ("xla", "gelu_pytorch_tanh")]
)
def test_import_matches_hf_logits(impl, act):
    hf = hf_model(hidden_act=act)
    cfg = our_config(hf, attention_impl=impl)
    ours = heads.PreTrainingModel(cfg, rngs=nnx.Rngs(params=0))
    load(ours, hf_convert.from_hf_state_dict(numpy_state_dict(hf), cfg))
    x = make_inputs()
    expected_mlm, expected_nsp = hf_logits(hf, x)
    mlm, nsp = our_logits(ours, x)
    assert np.abs(mlm - expected_mlm).max() <= 1e-4
    assert np.abs(nsp - expected_nsp).max() <= 1e-4
    assert np.abs(expected_mlm).mean() > 0.1  # The comparison is not between tiny numbers.


def test_export_loads_strictly_into_hf_with_same_logits():
    cfg = our_config(hf_model())
    ours = heads.PreTrainingModel(cfg, rngs=nnx.Rngs(params=1))
    # Perturb every parameter so LayerNorm scales and biases are not their 1/0 init.
    params = nnx.to_pure_dict(nnx.state(ours, nnx.Param))
    rng = np.random.default_rng(2)
    params = jax.tree.map(lambda p: np.float32(p + 0.3 * rng.normal(size=p.shape)), params)
    load(ours, params)

    state_dict = hf_convert.to_hf_state_dict(params, cfg)
    hf_config = transformers.BertConfig(**hf_convert.config_to_hf(cfg, "pretraining"))
    hf = transformers.BertForPreTraining(hf_config).eval()
    hf.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state_dict.items()}, strict=True)
    assert hf.cls.predictions.decoder.weight is hf.bert.embeddings.word_embeddings.weight

    x = make_inputs(seed=1)
    for got, expected in zip(our_logits(ours, x), hf_logits(hf, x), strict=True):
        assert np.abs(got - expected).max() <= 1e-4


def test_round_trip_preserves_every_tensor():
    hf = hf_model()
    state_dict = numpy_state_dict(hf)
    cfg = our_config(hf)
    back = hf_convert.to_hf_state_dict(hf_convert.from_hf_state_dict(state_dict, cfg), cfg)
    assert back.keys() == state_dict.keys()
    for name, x in state_dict.items():
        assert back[name].dtype == np.float32
        np.testing.assert_array_equal(back[name], x, err_msg=name)


def test_old_names_and_bare_encoder_keys_are_accepted():
    hf = hf_model()
    cfg = our_config(hf)
    state_dict = numpy_state_dict(hf)
    expected = hf_convert.from_hf_state_dict(state_dict, cfg, head="none")
    old_names = {"LayerNorm.weight": "LayerNorm.gamma", "LayerNorm.bias": "LayerNorm.beta"}
    old = {}
    for name, value in state_dict.items():
        for new_suffix, old_suffix in old_names.items():
            name = name.replace(new_suffix, old_suffix)
        old[name] = value
    assert sum(k.endswith(".gamma") for k in old) == 2 * HF_TINY["num_hidden_layers"] + 2
    jax.tree.map(
        np.testing.assert_array_equal,
        hf_convert.from_hf_state_dict(old, cfg),
        hf_convert.from_hf_state_dict(state_dict, cfg),
    )
    bare = {k.removeprefix("bert."): v for k, v in state_dict.items() if k.startswith("bert.")}
    got = hf_convert.from_hf_state_dict(bare, cfg, head="none")
    assert set(got) == {"encoder"}
    jax.tree.map(np.testing.assert_array_equal, got, expected)


def test_sequence_classification_import_and_round_trip():
    hf = hf_model(transformers.BertForSequenceClassification, num_labels=3)
    cfg = our_config(hf)
    state_dict = numpy_state_dict(hf)
    params = hf_convert.from_hf_state_dict(state_dict, cfg, head="classification")
    ours = heads.SequenceClassifier(cfg, 3, dropout_rate=0.1, rngs=nnx.Rngs(params=0))
    load(ours, params)
    x = make_inputs()
    with torch.no_grad():
        expected = hf(
            input_ids=torch.from_numpy(x["input_ids"]).long(),
            attention_mask=torch.from_numpy(x["input_mask"]).long(),
            token_type_ids=torch.from_numpy(x["segment_ids"]).long(),
        ).logits.numpy()
    got = ours(x["input_ids"], x["input_mask"], x["segment_ids"], deterministic=True)
    assert np.abs(np.asarray(got) - expected).max() <= 1e-4
    back = hf_convert.to_hf_state_dict(params, cfg, head="classification")
    assert back.keys() == state_dict.keys()
    for name, value in state_dict.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_missing_and_misshaped_tensors_are_named():
    hf = hf_model()
    cfg = our_config(hf)
    state_dict = numpy_state_dict(hf)
    name = "bert.encoder.layer.1.intermediate.dense.weight"
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        hf_convert.from_hf_state_dict({k: v for k, v in state_dict.items() if k != name}, cfg)
    bad = dict(state_dict, **{name: np.zeros((36, 32), np.float32)})
    with pytest.raises(ValueError, match=r"\(36, 32\).*\(37, 32\)"):
        hf_convert.from_hf_state_dict(bad, cfg)
    untied = dict(state_dict)
    untied["cls.predictions.decoder.weight"] = state_dict["cls.predictions.decoder.weight"] + 1
    with pytest.raises(ValueError, match="untied"):
        hf_convert.from_hf_state_dict(untied, cfg)
    with pytest.raises(ValueError, match="classifier.weight"):
        hf_convert.from_hf_state_dict(state_dict, cfg, head="classification")


def test_config_round_trip_and_hf_acceptance():
    cfg = EncoderConfig(**HF_TINY, hidden_act="gelu_tanh", layer_norm_eps=1e-6)
    hf_dict = hf_convert.config_to_hf(cfg, "pretraining")
    hf_config = transformers.BertConfig(**hf_dict)
    assert hf_config.hidden_act == "gelu_new" and hf_config.layer_norm_eps == 1e-6
    kwargs = hf_convert.config_from_hf(hf_config.to_dict())
    fields = {f.name for f in dataclasses.fields(EncoderConfig)} - {"dtype", "param_dtype"}
    assert EncoderConfig(**kwargs) == cfg
    assert set(kwargs) <= fields
    with pytest.raises(ValueError, match="position_embedding_type"):
        hf_convert.config_from_hf({**hf_dict, "position_embedding_type": "relative_key"})


def test_bert_base_parameter_count_matches_hf():
    with torch.device("meta"):  # Shapes only: nothing is allocated.
        hf = transformers.BertForPreTraining(transformers.BertConfig())
    hf_count = sum(p.numel() for p in hf.parameters())  # Tied decoder counted once.
    cfg = EncoderConfig(**hf_convert.config_from_hf(hf.config.to_dict()))
    abstract = nnx.eval_shape(lambda: heads.PreTrainingModel(cfg, rngs=nnx.Rngs(params=0)))
    assert count_params(nnx.state(abstract, nnx.Param)) == hf_count == 110_106_428


@pytest.mark.parametrize(
    "cls, head, outputs",
    [("BertForTokenClassification", "token", 5), ("BertForQuestionAnswering", "qa", 2)],
)
def test_token_and_qa_heads_match_hf(cls, head, outputs):
    hf = hf_model(getattr(transformers, cls), num_labels=outputs)
    cfg = our_config(hf)
    state_dict = numpy_state_dict(hf)
    params = hf_convert.from_hf_state_dict(state_dict, cfg, head=head)
    ours = heads.TokenClassifier(cfg, outputs, dropout_rate=0.1, rngs=nnx.Rngs(params=0))
    state = nnx.state(ours, nnx.Param)
    nnx.replace_by_pure_dict(state, {**nnx.to_pure_dict(state), **params,
                                     "encoder": {**nnx.to_pure_dict(state)["encoder"],
                                                 **params["encoder"]}})  # fmt: skip
    nnx.update(ours, state)
    x = make_inputs()
    with torch.no_grad():
        out = hf(
            input_ids=torch.from_numpy(x["input_ids"]).long(),
            attention_mask=torch.from_numpy(x["input_mask"]).long(),
            token_type_ids=torch.from_numpy(x["segment_ids"]).long(),
        )
    expected = (
        out.logits.numpy() if head == "token"
        else np.stack([out.start_logits.numpy(), out.end_logits.numpy()], axis=-1)
    )  # fmt: skip
    got = np.asarray(ours(x["input_ids"], x["input_mask"], x["segment_ids"], deterministic=True))
    real = x["input_mask"].astype(bool)
    assert np.abs(got[real] - expected[real]).max() <= 1e-4
    back = hf_convert.to_hf_state_dict(params, cfg, head=head)
    assert back.keys() == state_dict.keys()  # No pooler in these classes, as HF's.
