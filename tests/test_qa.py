"""Extractive QA: SQuAD scoring by hand, windows and offsets, bad input, and a CLI run."""

import json

import ml_collections
import numpy as np
import pytest

from data_pipeline.errors import DataError
from data_pipeline.tasks import squad
from data_pipeline.vocab import unigram as tokenizer_lib
from pretrain.tasks import qa_metrics
from tests.cli_utils import run_module


def test_squad_normalization_and_scores_by_hand():
    assert qa_metrics.normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert qa_metrics.exact_match("denver broncos", "The Denver Broncos.") == 1.0
    # 2 of 3 predicted tokens right, 2 of 2 gold tokens found: P 2/3, R 1, F1 0.8.
    assert qa_metrics.f1("broncos of denver", "Denver Broncos") == pytest.approx(0.8)
    scores = qa_metrics.squad_scores(["a cat", "", "dog"], [["the cat", "cat"], [], ["bird"]])
    assert scores == {"exact_match": pytest.approx(2 / 3), "f1": pytest.approx(2 / 3)}


def _write(path, paragraphs) -> None:
    path.write_text(json.dumps({"version": "v2.0", "data": [{"paragraphs": paragraphs}]}))


def test_an_answer_off_its_offset_is_one_clear_error(tmp_path):
    path = tmp_path / "bad.json"
    qa = {"id": "q7", "question": "who?", "answers": [{"text": "Peter", "answer_start": 3}]}
    _write(path, [{"context": "Ask Peter.", "qas": [qa]}])
    with pytest.raises(DataError, match=r"question 'q7': answer 'Peter' is not the context"):
        squad.read_json(str(path))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa_tok")
    words = " ".join(f"w{i}" for i in range(40))
    (root / "text.txt").write_text(f"{words}\nkey what follows ? .\n" * 20)
    return tokenizer_lib.SentencePieceTokenizer(
        tokenizer_lib.train_tokenizer([str(root / "text.txt")], 30, str(root / "sp"))
    )


def test_answers_round_trip_through_windows_and_offsets(tokenizer):
    """Gold targets, turned into one-hot logits and decoded, give back each answer's text,
    including answers only the second or third window holds."""
    context = " ".join(f"w{i}" for i in range(40)) + " key w3 w4 w5, then w9."
    start = context.index("key w3 w4 w5") + len("key ")
    questions = [
        squad.Question("a", "what follows key ?", context, (("w3 w4 w5", start),)),
        squad.Question("b", "what ?", "w1 w2 key w7 w8.", (("w7", 10),)),
        squad.Question("c", "what ?", context, (), is_impossible=True),
    ]
    c = ml_collections.ConfigDict(dict(max_seq_length=24, doc_stride=6, max_query_length=8,
                                       max_answer_length=10))  # fmt: skip
    windows = squad.make_windows(questions, tokenizer, c)
    first = windows.example == 0
    assert first.sum() >= 3  # The long context needs several windows...
    holding = np.flatnonzero(first & (windows.start_positions > 0))
    assert len(holding) >= 1 and holding.min() > np.flatnonzero(first).min()  # ...not the 1st.
    s = windows.input_ids.shape[1]
    starts = np.full((len(windows), s), -5.0)
    ends = np.full((len(windows), s), -5.0)
    starts[np.arange(len(windows)), windows.start_positions] = 5.0
    ends[np.arange(len(windows)), windows.end_positions] = 5.0
    answers = qa_metrics.decode(windows, starts, ends, [q.context for q in questions],
                                max_answer_length=10, allow_null=True)  # fmt: skip
    assert [a.text for a in answers] == ["w3 w4 w5", "w7", ""]
    assert context[answers[0].start : answers[0].end] == "w3 w4 w5"


# --- A tiny task through the CLI: the answer is the words after the marker the question names.
MARKERS = ["alpha", "beta", "gamma"]
FILLER = ("red green blue cat dog bird tree rock sand wave sun moon star rain snow wind road "
          "ship lamp door").split()  # fmt: skip


def write_tiny_task(path, num: int, seed: int, max_words: int = 40) -> None:
    rng = np.random.default_rng(seed)
    filler = FILLER
    paragraphs = []
    for i in range(num):
        marker = str(rng.choice(MARKERS))
        words = [
            str(w) for w in rng.choice(filler, int(rng.integers(min(8, max_words - 1), max_words)))
        ]
        answer = " ".join(str(w) for w in rng.choice(filler, int(rng.integers(1, 3))))
        impossible = i % 5 == 0  # The marker is missing: no answer.
        at = int(rng.integers(0, len(words)))
        if not impossible:
            words.insert(at, f"{marker} {answer} .")
        context = " ".join(words)
        qa = {"id": f"q{i}", "question": f"what follows {marker} ?", "is_impossible": impossible,
              "answers": [] if impossible else
              [{"text": answer, "answer_start": context.index(f"{marker} {answer} .")
                + len(marker) + 1}]}  # fmt: skip
        paragraphs.append({"context": context, "qas": [qa]})
    _write(path, paragraphs)


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory):
    """A 1000-step random-init ModernBERT run on the tiny v2.0 task: (data dir, workdir)."""
    tmp_path = tmp_path_factory.mktemp("qa")
    write_tiny_task(tmp_path / "train.json", 800, seed=0)
    write_tiny_task(tmp_path / "eval.json", 100, seed=1)
    paragraphs = json.loads((tmp_path / "train.json").read_text())["data"][0]["paragraphs"]
    text = [p["context"] for p in paragraphs] + [p["qas"][0]["question"] for p in paragraphs]
    (tmp_path / "text.txt").write_text("\n".join(text) + "\n")
    model = tokenizer_lib.train_tokenizer([str(tmp_path / "text.txt")], 70, str(tmp_path / "sp"))
    workdir = tmp_path / "ft"
    flags = [
        "--config=configs/finetune_qa.py", f"--workdir={workdir}",
        f"--config.data.train_file={tmp_path / 'train.json'}",
        f"--config.data.eval_file={tmp_path / 'eval.json'}", "--config.data.version_2=True",
        f"--config.data.tokenizer_model={model}", "--config.data.max_seq_length=32",
        "--config.data.doc_stride=12", "--config.data.max_query_length=12",
        "--config.model.num_hidden_layers=2", "--config.model.hidden_size=64",
        "--config.model.num_attention_heads=2", "--config.model.intermediate_size=128",
        "--config.model.max_position_embeddings=32", "--config.dtype=float32",
        "--config.model.hidden_dropout_prob=0.0", "--config.classifier_dropout=0.0",
        "--config.model.arch=modernbert", "--config.model.attention_probs_dropout_prob=0.0",
        "--config.num_train_steps=1000", "--config.eval_every_steps=500",
        "--config.checkpoint_every_steps=500", "--config.log_every_steps=100",
        "--config.global_batch_size=32", "--config.optimizer.learning_rate=2e-3",
    ]  # fmt: skip
    run_module("pretrain.finetune", flags)
    return tmp_path, workdir


@pytest.mark.slow
def test_tiny_qa_task_reaches_em_09_through_the_cli(qa_run):
    _, workdir = qa_run
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in rows if "eval_f1" in r][-1]
    assert final["step"] == 1000 and final["eval_exact_match"] >= 0.9, final
    predictions = json.loads((workdir / "predictions.json").read_text())
    assert len(predictions) == 100 and predictions["q0"] == ""  # q0 is unanswerable.


def _best_row(workdir) -> dict:
    """The eval row of the checkpoint in WORKDIR/best (what evaluate and predict use)."""
    step = max(int(p.name) for p in (workdir / "best").iterdir() if p.name.isdigit())
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in rows if r["step"] == step and "eval_f1" in r)


@pytest.mark.slow
def test_evaluate_and_predict_give_the_eval_pass_answers(qa_run, tmp_path):
    data, workdir = qa_run
    out = run_module("pretrain.evaluate", [f"--workdir={workdir}",
                                           f"--eval_file={data / 'eval.json'}",
                                           f"--report_dir={tmp_path}"])  # fmt: skip
    row = json.loads(out.stdout.strip().splitlines()[-1])
    best = _best_row(workdir)
    assert row == pytest.approx({k: v for k, v in best.items() if k != "step"}, abs=1e-6)
    assert "| has answer |" in (tmp_path / "report.md").read_text()

    unlabelled = json.loads((data / "eval.json").read_text())
    for paragraph in unlabelled["data"][0]["paragraphs"]:
        for qa in paragraph["qas"]:
            qa.pop("answers"), qa.pop("is_impossible")
    (tmp_path / "input.json").write_text(json.dumps(unlabelled))
    run_module("pretrain.predict", [f"--workdir={workdir}", f"--input={tmp_path / 'input.json'}",
                                    f"--output={tmp_path / 'out.jsonl'}"])  # fmt: skip
    predicted = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    expected = json.loads((workdir / "predictions.json").read_text())
    assert [p["id"] for p in predicted] == list(expected)
    assert {p["id"]: p["answer"] for p in predicted} == expected
    contexts = [p["context"] for p in unlabelled["data"][0]["paragraphs"]]
    for p, context in zip(predicted, contexts):
        if p["answer"]:
            assert context[p["start"] : p["end"]] == p["answer"]
        else:
            assert p["start"] is None and p["end"] is None


def hf_answer(model, tokenizer, question: str, context: str, torch) -> str:
    """What transformers 4's question-answering pipeline did (v5 removed it): the best context
    span by start + end logit, or '' when [CLS]'s score is higher, cut from the context through
    the fast tokenizer's offsets."""
    enc = tokenizer(question, context, return_offsets_mapping=True, return_tensors="pt")
    context_tokens = [i for i, s in enumerate(enc.sequence_ids(0)) if s == 1]
    offsets = enc.pop("offset_mapping")[0].tolist()
    with torch.no_grad():
        out = model(**enc)
    start, end = out.start_logits[0].numpy(), out.end_logits[0].numpy()
    best, span = -np.inf, None
    for i in context_tokens:
        for j in context_tokens:
            if i <= j < i + 30 and start[i] + end[j] > best:
                best, span = start[i] + end[j], (offsets[i][0], offsets[j][1])
    return "" if start[0] + end[0] > best else context[span[0] : span[1]].strip()


@pytest.mark.slow
def test_exported_qa_model_gives_our_answers_in_transformers(qa_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    data, workdir = qa_run
    out = run_module("pretrain.export_hf", [f"--workdir={workdir}", f"--output={tmp_path / 'hf'}"])
    assert "ModernBertForQuestionAnswering" in out.stdout
    write_tiny_task(tmp_path / "short.json", 60, seed=2, max_words=5)  # One window each.
    run_module("pretrain.predict", [f"--workdir={workdir}", f"--input={tmp_path / 'short.json'}",
                                    f"--output={tmp_path / 'ours.jsonl'}"])  # fmt: skip
    ours = [json.loads(x) for x in (tmp_path / "ours.jsonl").read_text().splitlines()]
    tokenizer = tokenizer_lib.SentencePieceTokenizer(str(workdir / "tokenizer.model"))
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(tmp_path / "hf").eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    paragraphs = json.loads((tmp_path / "short.json").read_text())["data"][0]["paragraphs"]
    compared = 0
    for paragraph, mine in zip(paragraphs, ours):
        question, context = paragraph["qas"][0]["question"], paragraph["context"]
        if len(tokenizer.encode(question)) + len(tokenizer.encode(context)) + 3 > 32:
            continue  # Several windows: HF's stride differs from BERT's doc_stride.
        assert hf_answer(model, hf_tokenizer, question, context, torch) == mine["answer"]
        compared += 1
    assert compared >= 30
