"""Retrieval: BEIR metrics by hand, global in-batch negatives on 8 devices, bad inputs, and a
tiny run end to end (fine-tune, evaluate, embed, sentence-transformers export)."""

import json

import jax
import ml_collections
import numpy as np
import pytest

from configs import default, finetune_retrieval
from data_pipeline.tasks import beir
from pretrain.models.config import EncoderConfig
from pretrain.tasks import retrieval_metrics
from pretrain.tasks.retrieval import RetrievalTask
from pretrain.training import sharding
from pretrain.training.optimizer import make_optimizer
from pretrain.training.steps import build_steps
from tests.cli_utils import assert_one_line_error, run_in_process, run_module
from tests.test_finetune import pretrained  # noqa: F401  (a fixture)

RULES = tuple(default.get_config().mesh.logical_axis_rules)
LETTERS = list("abcdefghiklmnoprstu")


# --- metrics, against values computed by hand from pytrec_eval's / BEIR's definitions.


def test_metrics_of_one_query_by_hand():
    judged = {"a": 2, "b": 1, "c": 0, "z": 1}  # z is never retrieved.
    ranked = ["x", "b", "c", "a", "y"]
    m = retrieval_metrics.query_metrics(ranked, judged)
    dcg = 1 / np.log2(3) + 2 / np.log2(5)  # b at rank 2 (gain 1), a at rank 4 (gain 2).
    idcg = 2 + 1 / np.log2(3) + 1 / np.log2(4)  # Ideal: a, b, z.
    assert m["ndcg_at_10"] == pytest.approx(dcg / idcg)
    assert m["mrr_at_10"] == pytest.approx(1 / 2)
    assert m["recall_at_1"] == 0.0
    assert m["recall_at_10"] == pytest.approx(2 / 3)  # 3 relevant (score >= 1): a, b, z.
    assert m["map"] == pytest.approx((1 / 2 + 2 / 4) / 3)


def test_metrics_cutoffs_and_mean_over_queries():
    ranked = [f"d{i}" for i in range(120)]
    deep = retrieval_metrics.query_metrics(ranked, {"d10": 1, "d105": 1})  # Ranks 11 and 106.
    assert deep["ndcg_at_10"] == deep["mrr_at_10"] == deep["recall_at_10"] == 0.0
    assert deep["recall_at_100"] == pytest.approx(1 / 2)  # d105 is past the cutoff of 100.
    assert deep["map"] == pytest.approx((1 / 11) / 2)
    qrels = {"q1": {"d0": 1}, "q2": {"d10": 1, "d105": 1}}
    mean, per_query = retrieval_metrics.evaluate(["q1", "q2"], [ranked, ranked], qrels)
    assert per_query[0]["ndcg_at_10"] == 1.0 and mean["ndcg_at_10"] == pytest.approx(0.5)
    assert mean["recall_at_1"] == pytest.approx(0.5)


def test_search_is_exact_and_drops_the_query_itself():
    rng = np.random.default_rng(0)
    corpus = rng.normal(size=(37, 8)).astype(np.float32)  # Not a multiple of 8 devices.
    queries = rng.normal(size=(5, 8)).astype(np.float32)
    scores, idx = retrieval_metrics.search(queries, corpus, 10)
    expected = np.argsort(-(queries @ corpus.T), axis=1)[:, :10]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(
        scores, np.take_along_axis(queries @ corpus.T, expected, 1), rtol=1e-5
    )
    doc_ids = [f"d{i}" for i in range(37)]
    ranked = retrieval_metrics.rankings([f"d{idx[0, 0]}"], doc_ids, idx[:1])
    assert ranked[0] == [f"d{j}" for j in idx[0, 1:]]


# --- the loss: global negatives on 8 devices equal one device's.


def _task(**retrieval) -> RetrievalTask:
    config = finetune_retrieval.get_config()
    config.unlock()
    config.retrieval.update(retrieval)
    config.num_train_steps, config.optimizer.learning_rate = 10, 1e-2
    model_config = EncoderConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attention_impl="einsum",
    )
    return RetrievalTask(config, model_config, None)


def _batch(step: int, b: int = 16, g: int = 2, s: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)

    def ids(shape):
        lengths = rng.integers(3, s + 1, shape)
        mask = (np.arange(s) < lengths[..., None]).astype(np.int32)
        return (rng.integers(5, 50, (*shape, s)) * mask).astype(np.int32), mask

    q, qm = ids((b,))
    d, dm = ids((b, g))
    weight = (np.arange(b) < b - 2).astype(np.float32)  # Two padding rows.
    return {
        "query_input_ids": q,
        "query_input_mask": qm,
        "doc_input_ids": d,
        "doc_input_mask": dm,
        "example_weight": weight,
    }


def _train(task, mesh_shape, devices, steps=2):
    mesh = sharding.create_mesh(
        ml_collections.ConfigDict(dict(zip(sharding.MESH_AXES, mesh_shape))), devices
    )
    tx, schedule = make_optimizer(task.config.optimizer, 10, 1)
    jitted = build_steps(task, tx, schedule, mesh, RULES, grad_accum_steps=1, seed=0)
    state = jitted.init()
    rows = sharding.process_rows(mesh, RULES, 16)
    losses = []
    for step in range(steps):
        local = {k: v[rows] for k, v in _batch(step).items()}
        state, metrics = jitted.train_step(state, sharding.host_to_global(local, mesh, RULES, 16))
        losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state.params)


def test_loss_on_8_devices_equals_one_device_with_the_same_global_batch():
    """Symmetric, learned temperature, padding rows, chunked embedding: the 8 devices'
    negatives are the global batch's."""
    options = {"symmetric": True, "learn_temperature": True}
    ref_losses, ref_params = _train(_task(**options), (1, 1, 1), jax.devices()[:1])
    # In 2 chunks under remat (GradCache's memory): the same loss and gradient.
    losses, params = _train(_task(**options, embed_chunks=2), (8, 1, 1), jax.devices())
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    # Every row's negatives are the global batch's: 14 real rows x 2 passages to choose from.
    assert ref_losses[0] > np.log(2)


def test_gradient_accumulation_is_refused_with_one_clear_line(capsys):
    config = finetune_retrieval.get_config()
    config.grad_accum_steps, config.data.tokenizer_model = 2, "sp.model"
    config.data.train_file = "pairs.tsv"
    code, err = run_in_process(lambda: RetrievalTask.check_config(config), capsys)
    assert code == 2 and err[-1].startswith("error: config.grad_accum_steps=2")


# --- data: the readers, bad inputs.


def write_beir(root, num_docs: int = 40, num_queries: int = 20, seed: int = 0):
    """A BEIR folder whose queries are words of their one relevant document; and pairs.tsv of
    other queries built the same way (query, positive, a random negative)."""
    rng = np.random.default_rng(seed)
    words = ["".join(rng.choice(LETTERS, rng.integers(3, 7))) for _ in range(200)]
    docs = [" ".join(rng.choice(words, 12)) for _ in range(num_docs)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    with open(root / "corpus.jsonl", "w") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"_id": f"d{i}", "title": "", "text": d}) + "\n")

    def query(i):
        return " ".join(rng.choice(docs[i].split(), 3, replace=False))

    with open(root / "queries.jsonl", "w") as f:
        for i in range(num_queries):
            f.write(json.dumps({"_id": f"q{i}", "text": query(i)}) + "\n")
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(num_queries))
    )
    pairs = [
        f"{query(i % num_docs)}\t{docs[i % num_docs]}\t{docs[(i * 7 + 3) % num_docs]}"
        for i in range(4 * num_docs)
    ]
    (root / "pairs.tsv").write_text("\n".join(pairs) + "\n")
    return root


def test_beir_folder_is_read_as_beir_reads_it(tmp_path):
    folder = write_beir(tmp_path / "beir")
    data = beir.read_beir(str(folder))
    assert data.query_ids == [f"q{i}" for i in range(20)] and len(data.docs) == 40
    assert data.qrels["q3"] == {"d3": 1}
    pairs = beir.read_pairs(str(folder / "pairs.tsv"))
    assert len(pairs) == 160 and all(len(n) == 1 for n in pairs.negatives)


def test_qrels_naming_a_missing_document_is_one_error_line(tmp_path, capsys):
    folder = write_beir(tmp_path / "beir")
    with open(folder / "qrels" / "test.tsv", "a") as f:
        f.write("q1\tnowhere\t1\n")
    code, err = run_in_process(lambda: beir.read_beir(str(folder)), capsys)
    assert code == 2 and len(err) == 1
    assert "'nowhere'" in err[0] and "corpus.jsonl" in err[0] and err[0].startswith("error: ")


@pytest.mark.parametrize("row", ["\tsome passage", "a query\t ", "a query\tpassage\t"])
def test_pairs_row_with_an_empty_side_is_one_error_line(tmp_path, capsys, row):
    path = tmp_path / "pairs.tsv"
    path.write_text(f"fine query\tfine passage\n{row}\n")
    code, err = run_in_process(lambda: beir.read_pairs(str(path)), capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {path}, line 2: the ")


# --- end to end: fine-tune, evaluate, embed, export (one tiny run).

EVAL_KEYS = {f"eval_{m}" for m in retrieval_metrics.METRICS}


@pytest.fixture(scope="module")
def retrieval_run(pretrained, tmp_path_factory):  # noqa: F811
    """(workdir, BEIR folder) of 20 contrastive steps from the tiny pretrained encoder, on 2
    devices."""
    root = write_beir(tmp_path_factory.mktemp("retrieval") / "beir")
    workdir = root.parent / "ft"
    values = {
        "init_from": pretrained,
        "data.train_file": root / "pairs.tsv",
        "data.eval_file": root,
        "data.max_seq_length": 32,
        "data.max_query_length": 12,
        "global_batch_size": 16,
        "eval_batch_size": 32,
        "num_train_steps": 20,
        "log_every_steps": 10,
        "eval_every_steps": 10,
        "checkpoint_every_steps": 10,
        "dtype": "float32",
        "optimizer.learning_rate": 1e-3,
    }
    flags = [f"--config.{k}={v}" for k, v in values.items()]
    run_module(
        "pretrain.finetune",
        ["--config=configs/finetune_retrieval.py", f"--workdir={workdir}", *flags],
        devices=2,
    )
    return workdir, root


@pytest.mark.slow
def test_finetune_evaluate_embed_and_export_a_retrieval_model(retrieval_run, pretrained, tmp_path):  # noqa: F811
    workdir, folder = retrieval_run
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_ndcg_at_10" in r]
    assert [r["step"] for r in evals] == [10, 20]
    assert all(EVAL_KEYS <= set(r) and 0 <= r["eval_ndcg_at_10"] <= 1 for r in evals)
    assert any((workdir / "best").iterdir())

    proc = run_module("pretrain.evaluate", [f"--workdir={workdir}", f"--eval_file={folder}"])
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(row) == EVAL_KEYS
    best = max(r["eval_ndcg_at_10"] for r in evals)
    assert row["eval_ndcg_at_10"] == pytest.approx(best, abs=1e-4)  # The best checkpoint.
    assert "worst queries" in (workdir / "eval_beir" / "report.md").read_text()

    # Embeddings here (8 devices) and from the exported sentence-transformers folder.
    from pretrain.hf import exporting
    from pretrain.inference import embedding

    texts = tmp_path / "texts.txt"
    texts.write_text("a short query\n" + beir.read_beir(str(folder)).docs[0] + "\n\nlast one\n")
    ours = embedding.embed_texts(embedding.open_embedder(str(workdir)), str(texts))
    assert ours.shape == (4, 32)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, rtol=1e-5)
    exporting.export_workdir(str(workdir), str(tmp_path / "st"))
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tmp_path / "st"), device="cpu", local_files_only=True)
    theirs = model.encode(texts.read_text().splitlines(), convert_to_numpy=True)
    np.testing.assert_allclose(theirs, ours, atol=1e-4)

    # Zero-shot: a pretraining workdir's encoder, mean pooled, through the command line.
    out = tmp_path / "zero_shot.jsonl"
    run_module("pretrain.embed", [f"--workdir={pretrained}", f"--input={texts}", f"--output={out}"])
    lines = [json.loads(x)["embedding"] for x in out.read_text().splitlines()]
    assert len(lines) == 4 and len(lines[0]) == 32


@pytest.mark.slow
def test_finetune_with_a_qrels_line_naming_a_missing_document_exits_2(pretrained, tmp_path):  # noqa: F811
    folder = write_beir(tmp_path / "beir", num_docs=10, num_queries=4)
    with open(folder / "qrels" / "test.tsv", "a") as f:
        f.write("q1\tnowhere\t1\n")
    proc = run_module(
        "pretrain.finetune",
        [
            "--config=configs/finetune_retrieval.py",
            f"--workdir={tmp_path / 'ft'}",
            f"--config.init_from={pretrained}",
            f"--config.data.train_file={folder / 'pairs.tsv'}",
            f"--config.data.eval_file={folder}",
            "--config.data.max_seq_length=32",
        ],
        check=False,
    )
    assert_one_line_error(proc, "'nowhere'", "corpus.jsonl")
