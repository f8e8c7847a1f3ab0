"""LoRA fine-tuning: the frozen encoder, the adapters' numbers, checkpoints without the base,
merged export, and a tiny task through the CLI."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from pretrain.hf import exporting
from pretrain.inference.session import open_session
from pretrain.models import heads, lora
from pretrain.models.config import EncoderConfig
from pretrain.models.params import named_leaves
from pretrain.training.workdir import checkpoints_dir
from tests.cli_utils import run_module
from tests.test_finetune import (  # noqa: F401 - keyword_task and pretrained are fixtures.
    finetune_flags,
    keyword_task,
    pretrained,
    read_rows,
)

CFG = EncoderConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=24, dtype=jnp.float32)  # fmt: skip
TARGETS = ["query", "key", "value", "output", "mlp_in", "mlp_out"]


def _model(alpha: float = 4.0, rank: int = 3, adapters: bool = True, seed: int = 0):
    model = heads.SequenceClassifier(CFG, 3, dropout_rate=0.0, rngs=nnx.Rngs(params=seed))
    if adapters:
        lora.attach(model.encoder, "bert", TARGETS, rank=rank, alpha=alpha, dropout=0.0,
                    dtype=jnp.float32, rngs=nnx.Rngs(params=seed + 1))  # fmt: skip
        # Move every B off its zero init so the adapters change the output.
        state = nnx.state(model, nnx.LoRAParam)
        noisy = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(7), x.shape),
                             state)  # fmt: skip
        nnx.update(model, noisy)
    return model


def _inputs():
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 50, (3, 10)).astype(np.int32)
    mask = np.ones_like(ids)
    return ids, mask, np.zeros_like(ids)


def _forward(model):
    """The encoder's output [B, S, H] (the classifier's logits are tiny at init)."""
    return np.asarray(model.encoder(*_inputs(), deterministic=True, rngs=None))


def test_trainable_count_is_the_hand_count():
    params = nnx.to_pure_dict(nnx.state(_model(), nnx.Param))
    h, i, r, layers, classes = 16, 24, 3, 2, 3
    per_layer = 4 * r * (h + h) + r * (h + i) + r * (i + h)  # q k v o, mlp in, mlp out
    head = h * classes + classes
    assert lora.trainable_count(params) == layers * per_layer + head


def test_alpha_0_is_the_frozen_model():
    base = _forward(_model(adapters=False))
    assert np.array_equal(_forward(_model(alpha=0.0)), base)
    assert np.abs(_forward(_model(alpha=4.0)) - base).max() > 0.05  # The adapters do act.


def test_merged_kernels_give_the_unmerged_forward():
    model = _model()
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    merged = lora.merge(params, alpha=4.0, rank=3)
    assert "lora" not in json.dumps(jax.tree.map(lambda x: 0, merged))
    plain = _model(adapters=False)
    state = nnx.state(plain, nnx.Param)
    nnx.replace_by_pure_dict(state, merged)
    nnx.update(plain, state)
    assert np.abs(_forward(plain) - _forward(model)).max() <= 1e-5


@pytest.fixture(scope="module")
def lora_run(keyword_task, pretrained, tmp_path_factory):
    train, evals, _ = keyword_task
    workdir = tmp_path_factory.mktemp("lora") / "ft"
    flags = finetune_flags(workdir, train, evals, init_from=pretrained, peft__method="lora",
                           peft__rank=16, peft__alpha=32.0, num_train_steps=800,
                           eval_every_steps=400, checkpoint_every_steps=400,
                           optimizer__learning_rate=1e-2)  # fmt: skip
    out = run_module("pretrain.finetune", flags)
    return workdir, out


@pytest.mark.slow
def test_lora_reaches_95_percent_and_leaves_the_encoder_untouched(lora_run, pretrained):
    workdir, _ = lora_run
    _, evals = read_rows(workdir)
    assert evals[800]["eval_accuracy"] >= 0.95, evals
    # The checkpoint holds adapters and head only, and names its base.
    path = checkpoints_dir(workdir) / "800" / "state"
    saved = named_leaves(ocp.PyTreeCheckpointHandler().metadata(path).tree)
    params = [name for name in saved if name.startswith("params/")]
    assert params and all("/lora/" in n or not n.startswith("params/encoder") for n in params)
    record = json.loads((checkpoints_dir(workdir) / "800" / "config" / "metadata").read_text())
    assert record["peft_base"] == {"init_from": str(pretrained), "step": 6}
    # Adam's two moments for the trainable parameters only.
    moments = sum(
        int(np.prod(m.shape)) for n, m in saved.items() if n.startswith("opt_state/") and m.shape
    )  # Not the step counters.
    trained = sum(int(np.prod(m.shape)) for n, m in saved.items() if n.startswith("params/"))
    assert moments == 2 * trained

    session = open_session(str(workdir))
    tuned = nnx.to_pure_dict(session.params)
    base = exporting.restore_pretraining(str(pretrained)).params
    for name, value in named_leaves(lora.without_adapters(tuned["encoder"])).items():
        expected = named_leaves(base["encoder"])[name]
        np.testing.assert_array_equal(np.asarray(value), expected, err_msg=name)


@pytest.mark.slow
def test_merged_export_and_predict_agree(lora_run, keyword_task, tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    workdir, _ = lora_run
    _, evals, _ = keyword_task
    texts = [line.split("\t")[1] for line in evals.read_text().splitlines()][:40]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    run_module("pretrain.predict", [f"--workdir={workdir}", f"--input={tmp_path / 'in.txt'}",
                                    f"--output={tmp_path / 'out.jsonl'}"])  # fmt: skip
    ours = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    run_module("pretrain.export_hf", [f"--workdir={workdir}", f"--output={tmp_path / 'hf'}"])
    pipe = transformers.pipeline("text-classification", model=str(tmp_path / "hf"))
    theirs = pipe(texts, truncation=True)
    assert [t["label"] for t in theirs] == [o["label"] for o in ours]
    np.testing.assert_allclose([t["score"] for t in theirs], [o["probability"] for o in ours],
                               atol=1e-4)  # fmt: skip
