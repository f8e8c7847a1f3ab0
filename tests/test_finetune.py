"""Fine-tuning end to end: CLI runs on tiny tasks, the restored encoder, resume, exact steps.

CLI runs use one CPU device (tests/cli_utils.py); in-process tests use the 8 simulated devices of
tests/conftest.py where the mesh matters.
"""

import json
import shutil

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import default, finetune_classify
from data_pipeline.tasks import classification as classification_data
from data_pipeline.vocab import unigram as tokenizer_lib
from pretrain.models.config import EncoderConfig
from pretrain.models.params import named_leaves
from pretrain.tasks.classification import ClassificationTask
from pretrain.tasks.finetuning import resolve_model_config
from pretrain.training import sharding
from pretrain.training.optimizer import make_optimizer, scale_by_layerwise_lr_decay
from pretrain.training.steps import build_steps
from pretrain.training.workdir import checkpoints_dir, latest_checkpoint
from tests.cli_utils import read_metrics, run_module, tiny_overrides, write_corpus

KEYWORD = "zebra"
RULES = tuple(default.get_config().mesh.logical_axis_rules)


def write_keyword_task(path, num_examples: int, seed: int) -> None:
    """'yes' iff the sentence contains KEYWORD; the other words are random letter strings."""
    rng = np.random.default_rng(seed)
    vocab = [
        "".join(rng.choice(list("abcdefghiklmnoprstu"), rng.integers(2, 6))) for _ in range(60)
    ]
    lines = []
    for i in range(num_examples):
        words = list(np.random.default_rng([seed, i]).choice(vocab, rng.integers(3, 9)))
        label = "yes" if i % 2 else "no"
        if label == "yes":
            words[rng.integers(len(words))] = KEYWORD
        lines.append(f"{label}\t{' '.join(words)}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def keyword_task(tmp_path_factory):
    """(train.tsv, eval.tsv, an 80-piece tokenizer trained on their text)."""
    root = tmp_path_factory.mktemp("keyword")
    write_keyword_task(root / "train.tsv", 400, seed=0)
    write_keyword_task(root / "eval.tsv", 200, seed=1)
    text = root / "text.txt"
    rows = (root / "train.tsv").read_text().splitlines()
    text.write_text("\n".join(row.split("\t")[1] for row in rows) + "\n")
    model = tokenizer_lib.train_tokenizer([str(text)], 80, str(root / "sp"))
    return root / "train.tsv", root / "eval.tsv", model


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A pretraining workdir from 6 steps of a tiny model (1 layer, hidden 32) via the CLI."""
    workdir = tmp_path_factory.mktemp("pretrained")
    flags = tiny_overrides(tmp_path_factory.mktemp("corpus"))
    run_module("pretrain.train", ["--config=configs/smoke.py", f"--workdir={workdir}", *flags])
    return workdir


TINY_MODEL = {
    "model.num_hidden_layers": 1,
    "model.hidden_size": 32,
    "model.num_attention_heads": 2,
    "model.intermediate_size": 64,
    "model.max_position_embeddings": 32,
}


def finetune_flags(workdir, train, evals, **overrides) -> list[str]:
    values = {
        "data.train_file": train,
        "data.eval_file": evals,
        "data.max_seq_length": 32,  # Every example fits: the keyword is never cut off.
        "global_batch_size": 16,
        "eval_batch_size": 32,
        "num_train_steps": 60,
        "log_every_steps": 20,
        "eval_every_steps": 30,
        "checkpoint_every_steps": 30,
        "dtype": "float32",
        "optimizer.learning_rate": 3e-3,
    }
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    flags = [f"--config.{k}={v}" for k, v in values.items()]
    return ["--config=configs/finetune_classify.py", f"--workdir={workdir}", *flags]


def read_rows(workdir) -> tuple[dict, dict]:
    train, evals = {}, {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        (evals if "eval_loss" in row else train)[row["step"]] = row
    return train, evals


@pytest.fixture(scope="module")
def keyword_run(keyword_task, tmp_path_factory):
    """A 60-step random-init CLI run on the keyword task: (workdir, its command-line flags)."""
    train, evals, tokenizer = keyword_task
    workdir = tmp_path_factory.mktemp("keyword_run") / "ft"
    flags = finetune_flags(workdir, train, evals, **TINY_MODEL, data__tokenizer_model=tokenizer)
    run_module("pretrain.finetune", flags)
    return workdir, flags


@pytest.mark.slow
def test_keyword_task_reaches_95_percent_through_the_cli(keyword_task, keyword_run):
    _, evals, _ = keyword_task
    workdir, _ = keyword_run
    train_rows, eval_rows = read_rows(workdir)
    assert sorted(eval_rows) == [30, 60] and {1, 20, 40, 60} <= set(train_rows)
    final = eval_rows[60]
    assert {"eval_loss", "eval_accuracy", "eval_macro_f1", "eval_f1", "eval_mcc"} <= set(final)
    assert final["eval_accuracy"] >= 0.95
    assert json.loads((workdir / "labels.json").read_text())["labels"] == ["no", "yes"]
    # predictions.tsv: every eval example with its text, gold label, and the best checkpoint's
    # prediction and probability; it agrees with that checkpoint's eval row.
    best_step = max(eval_rows, key=lambda s: (eval_rows[s]["eval_accuracy"], -s))
    assert [p.name for p in (workdir / "best").iterdir() if p.name.isdigit()] == [str(best_step)]
    rows = [line.split("\t") for line in (workdir / "predictions.tsv").read_text().splitlines()]
    assert rows[0] == ["index", "prediction", "probability", "label", "text"] and len(rows) == 201
    gold = [line.split("\t") for line in evals.read_text().splitlines()]
    assert [r[3] for r in rows[1:]] == [g[0] for g in gold]
    assert [r[4] for r in rows[1:]] == [g[1] for g in gold]
    assert all(0.5 <= float(r[2]) <= 1.0 for r in rows[1:])  # The predicted class's, of two.
    accuracy = np.mean([r[1] == r[3] for r in rows[1:]])
    assert accuracy == pytest.approx(eval_rows[best_step]["eval_accuracy"])
    assert sorted(int(p.name) for p in checkpoints_dir(workdir).iterdir()) == [30, 60]


@pytest.mark.slow
def test_resumed_run_matches_the_uninterrupted_one(keyword_run, tmp_path):
    """A copy of the run cut back to its step-30 checkpoint, restarted, retraces steps 31-60."""
    straight, flags = keyword_run
    resumed = tmp_path / "ft"
    shutil.copytree(
        straight, resumed, ignore=shutil.ignore_patterns("60", "predictions*", "*.lock")
    )
    rows = (straight / "metrics.jsonl").read_text().splitlines()
    kept = [row for row in rows if json.loads(row)["step"] <= 30]
    (resumed / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    proc = run_module(
        "pretrain.finetune",
        [f"--workdir={resumed}" if f.startswith("--workdir") else f for f in flags],
    )
    assert "Resumed" in proc.stderr
    expected_train, expected_eval = read_rows(straight)
    got_train, got_eval = read_rows(resumed)
    for step in (40, 60):
        assert got_train[step]["loss"] == expected_train[step]["loss"], step
    assert got_eval[60] == expected_eval[60]
    assert (resumed / "predictions.tsv").read_text() == (straight / "predictions.tsv").read_text()


def _flat(tree) -> dict[str, np.ndarray]:
    """{'encoder/embeddings/...': array} with nnx's 'value' level dropped."""
    return {name: np.asarray(leaf) for name, leaf in named_leaves(tree).items()}


def _steps(task, config, mesh, grad_accum_steps=1):
    tx, schedule = make_optimizer(
        config.optimizer, config.num_train_steps, task.model_config.num_hidden_layers
    )
    return build_steps(task, tx, schedule, mesh, RULES, grad_accum_steps=grad_accum_steps, seed=0)


@pytest.mark.slow
def test_init_from_restores_the_encoder_into_the_mesh_and_drops_the_heads(
    pretrained, keyword_task, tmp_path
):
    step, saved_config = latest_checkpoint(pretrained)
    train, evals, _ = keyword_task
    config = finetune_classify.get_config()
    config.init_from = str(pretrained)
    config.data.max_seq_length = 32
    config.data.train_file, config.data.eval_file = str(train), str(evals)
    vocab_size = tokenizer_lib.SentencePieceTokenizer(
        str(pretrained / "tokenizer.model")
    ).vocab_size
    model_config = resolve_model_config(config, vocab_size, saved_config)
    assert (model_config.num_hidden_layers, model_config.hidden_size) == (1, 32)  # From the ckpt.

    mesh = sharding.create_mesh(ml_collections.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2}))
    task = ClassificationTask.build(config, tmp_path)
    jitted = _steps(task, config, mesh)
    state = jitted.init(task.initial_params(jitted.abstract_state.params))

    on_disk = ocp.PyTreeCheckpointer().restore(checkpoints_dir(pretrained) / str(step) / "state")
    assert {"mlm_head", "nsp_head"} <= set(on_disk["params"])  # What pretraining saved...
    assert set(state.params.keys()) == {"encoder", "classifier"}  # ...what fine-tuning keeps.
    expected = _flat(on_disk["params"]["encoder"])
    got = _flat(jax.device_get(state.params["encoder"]))
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    query = state.params["encoder"]["layers"][0]["attention"]["query"]["kernel"]
    assert tuple(query.get_value().sharding.spec) == ("fsdp", "tensor", None)
    assert state.params["classifier"]["kernel"].get_value().shape == (32, 2)
    # Fresh optimizer moments: nothing of pretraining's Adam state is carried over.
    assert all(float(np.abs(x).max()) == 0 for x in jax.tree.leaves(state.opt_state) if x.ndim)


def _swap_tokenizer(pretrained, tmp_path):
    """A copy of the pretraining workdir whose tokenizer has 200 pieces instead of 300."""
    copy = tmp_path / "other_vocab"
    shutil.copytree(pretrained, copy)
    corpus = write_corpus(tmp_path / "corpus.txt", seed=5)
    tokenizer_lib.train_tokenizer([str(corpus)], 200, str(copy / "tokenizer"))
    return copy


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, message",
    [
        ("size", "config.model.hidden_size=64 but the checkpoint"),
        ("vocab", "word_embeddings/embedding has shape"),
        ("missing", "does not exist"),
    ],
)
def test_mismatched_checkpoint_fails_with_one_clear_line(
    pretrained, keyword_task, tmp_path, case, message
):
    train, evals, _ = keyword_task
    init_from, extra = pretrained, {}
    if case == "size":
        extra = {"model.hidden_size": 64}
    elif case == "vocab":
        init_from = _swap_tokenizer(pretrained, tmp_path)
    else:
        init_from = tmp_path / "nowhere"
    flags = finetune_flags(tmp_path / "ft", train, evals, init_from=init_from, **extra)
    proc = run_module("pretrain.finetune", flags, check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_regression_task_reports_correlations(keyword_task, tmp_path):
    _, _, tokenizer = keyword_task
    rng = np.random.default_rng(0)
    for name, n in (("train", 64), ("eval", 24)):
        counts = rng.integers(0, 4, n)
        lines = [f"{c / 3:.3f}\t{' '.join([KEYWORD] * c + ['abc'] * (5 - c))}" for c in counts]
        (tmp_path / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    workdir = tmp_path / "ft"
    flags = finetune_flags(
        workdir, tmp_path / "train.tsv", tmp_path / "eval.tsv", **TINY_MODEL, task="regression",
        data__tokenizer_model=tokenizer, num_train_steps=40, eval_every_steps=40,
    )  # fmt: skip
    run_module("pretrain.finetune", flags)
    _, eval_rows = read_rows(workdir)
    assert set(eval_rows[40]) == {"step", "eval_loss", "eval_pearson", "eval_spearman"}
    assert eval_rows[40]["eval_pearson"] > 0.8  # The score is the keyword count: easy to learn.
    lines = (workdir / "predictions.tsv").read_text().splitlines()[1:]
    assert len(lines) == 24 and all(np.isfinite(float(line.split("\t")[1])) for line in lines)
    assert not json.loads((workdir / "labels.json").read_text())["labels"]


def _synthetic_batch(step: int, batch_size: int = 16, seq: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    lengths = rng.integers(4, seq + 1, batch_size)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
    return {
        "input_ids": (rng.integers(5, 50, (batch_size, seq)) * mask).astype(np.int32),
        "input_mask": mask,
        "segment_ids": np.zeros((batch_size, seq), np.int32),
        "label": rng.integers(0, 3, batch_size).astype(np.int32),
        "example_weight": (np.arange(batch_size) < batch_size - 3).astype(np.float32),
    }


def _train(mesh_shape, devices, grad_accum_steps, steps=2):
    model_config = EncoderConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, attention_impl="einsum",
    )  # fmt: skip
    config = finetune_classify.get_config()
    config.num_train_steps, config.optimizer.learning_rate = 10, 1e-2
    config.optimizer.layerwise_lr_decay = 0.8
    config.classifier_dropout = 0.0
    mesh_config = ml_collections.ConfigDict(dict(zip(sharding.MESH_AXES, mesh_shape)))
    mesh = sharding.create_mesh(mesh_config, devices)
    dataset = classification_data.ClassificationData(None, None, ["a", "b", "c"], None)
    task = ClassificationTask(config, model_config, None, dataset)
    jitted = _steps(task, config, mesh, grad_accum_steps)
    state = jitted.init()
    rows = sharding.process_rows(mesh, RULES, 16)
    losses = []
    for step in range(steps):
        local = {k: v[rows] for k, v in _synthetic_batch(step).items()}
        state, metrics = jitted.train_step(state, sharding.host_to_global(local, mesh, RULES, 16))
        losses.append(float(metrics["loss"]))
    return losses, _flat(jax.device_get(state.params))


def test_accumulated_sharded_steps_equal_one_big_batch_on_one_device():
    """Padding rows (weight 0) included: the loss divides by the whole batch's weight once."""
    ref_losses, ref_params = _train((1, 1, 1), jax.devices()[:1], grad_accum_steps=1)
    losses, params = _train((2, 2, 2), jax.devices(), grad_accum_steps=2)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for name, value in ref_params.items():
        np.testing.assert_allclose(params[name], value, atol=1e-5, err_msg=name)


def test_layerwise_lr_decay_scales_each_depth():
    # 2 layers: embeddings decay^3, layer 0 decay^2, layer 1 decay^1, pooler and head decay^0.
    ones = {
        "encoder": {
            "embeddings": {"word_embeddings": {"embedding": np.ones(2)}},
            "layers": {
                0: {"mlp_in": {"kernel": np.ones(2)}},
                1: {"mlp_in": {"kernel": np.ones(2)}},
            },
            "pooler": {"kernel": np.ones(2)},
        },
        "classifier": {"kernel": np.ones(2)},
    }
    tx = scale_by_layerwise_lr_decay(0.5, num_layers=2)
    scaled, _ = tx.update(ones, tx.init(ones))
    got = {name: float(v[0]) for name, v in _flat(scaled).items()}
    assert got == {
        "encoder/embeddings/word_embeddings/embedding": 0.125,
        "encoder/layers/0/mlp_in/kernel": 0.25,
        "encoder/layers/1/mlp_in/kernel": 0.5,
        "encoder/pooler/kernel": 1.0,
        "classifier/kernel": 1.0,
    }


def dictionary_source_task(path: str, per_class: int, seed: int) -> list[str]:
    """`devil|jargon<TAB>sentence` rows from a sample-corpus file, headwords stripped.

    data/sample files hold the Devil's Dictionary entries, then the Jargon File's, each sorted
    by headword (data/sample/README.md): the source changes where the order wraps from the end
    of the alphabet back to its start.
    """
    from data_pipeline import documents

    docs = documents.read_documents(path)
    heads = [doc[0].split(":", 1)[0].lower() for doc in docs]
    boundary = max(
        i for i in range(1, len(docs)) if heads[i] < heads[i - 1] and heads[i - 1][0] in "wxyz"
    )
    by_label = {"devil": [], "jargon": []}
    for i, doc in enumerate(docs):
        for sentence in [doc[0].split(":", 1)[-1], *doc[1:]]:
            if len(sentence.split()) >= 4:
                by_label["devil" if i < boundary else "jargon"].append(sentence.strip())
    rng = np.random.default_rng(seed)
    rows = [
        f"{label}\t{sentences[j]}"
        for label, sentences in by_label.items()
        for j in rng.permutation(len(sentences))[:per_class]
    ]
    return [rows[j] for j in rng.permutation(len(rows))]


@pytest.mark.slow
def test_pretrain_then_finetune_on_the_sample_corpus(tmp_path):
    """The whole chain on real text: tokenizer, pretraining, fine-tuning from it.

    Pretraining: 250 steps of a small BERT on data/sample/train.txt. Fine-tuning: which
    dictionary a sentence comes from, 200 labelled sentences of that file, 200 steps; eval:
    sentences of data/sample/eval.txt (held out of pretraining). It must learn the task well
    above the majority class (fine-tuning from random init is `keyword_run`'s).

    Pretraining is not asserted to beat random init here (tests/test_quality.py asserts it for
    the modern recipe on a larger corpus): a CI-sized BERT stays on the unigram plateau of masked
    LM (eval MLM accuracy ~0.13 even after 3000 steps; Hugging Face's PyTorch BERT stalls the
    same way on a copy task), and such an encoder transfers nothing. docs/finetuning.md has the
    measurements and the commands for a run long enough to show the gain.
    """
    for name, source, per_class in (("train", "train", 100), ("eval", "eval", 150)):
        rows = dictionary_source_task(f"data/sample/{source}.txt", per_class, seed=0)
        (tmp_path / f"{name}.tsv").write_text("\n".join(rows) + "\n")
    tokenizer = tokenizer_lib.train_tokenizer(
        ["data/sample/train.txt"], 1000, str(tmp_path / "sp"), input_sentence_size=3000
    )
    sizes = {
        "model.num_hidden_layers": 2,
        "model.hidden_size": 64,
        "model.num_attention_heads": 4,
        "model.intermediate_size": 256,
        "model.max_position_embeddings": 64,
    }
    pretrained = tmp_path / "pretrained"
    pretrain_flags = {
        **sizes,
        "data.tokenizer_model": tokenizer,
        "data.eval_files": "",
        "data.max_seq_length": 64,
        "data.max_predictions_per_seq": 10,
        "global_batch_size": 32,
        "num_train_steps": 250,
        "checkpoint_every_steps": 250,
        "log_every_steps": 50,
        "optimizer.learning_rate": 1e-3,
        "optimizer.warmup_steps": 25,
    }
    run_module(
        "pretrain.train",
        ["--config=configs/smoke.py", f"--workdir={pretrained}"]
        + [f"--config.{k}={v}" for k, v in pretrain_flags.items()],
    )
    pretrain_rows = read_metrics(pretrained)[0]
    assert pretrain_rows[250]["mlm_loss"] < pretrain_rows[1]["mlm_loss"] - 1.0, pretrain_rows

    workdir = tmp_path / "ft"
    flags = finetune_flags(
        workdir, tmp_path / "train.tsv", tmp_path / "eval.tsv", init_from=pretrained,
        data__max_seq_length=64, num_train_steps=200, log_every_steps=100,
        checkpoint_every_steps=200, eval_every_steps=200,
    )  # fmt: skip
    run_module("pretrain.finetune", flags)
    accuracy = read_rows(workdir)[1][200]["eval_accuracy"]
    majority = 150 / 273  # eval.txt has 123 usable Devil's Dictionary sentences, 150 Jargon kept.
    assert accuracy > majority + 0.15, accuracy
