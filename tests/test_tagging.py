"""Token classification: entity metrics by hand, CoNLL reading, windows, and a CLI run."""

import json
import re

import numpy as np
import pytest

from data_pipeline.errors import DataError
from data_pipeline.tasks import conll
from data_pipeline.tasks import tagging as data
from pretrain.tasks import tagging_metrics as tm
from tests.cli_utils import run_module


def test_entities_follow_seqeval():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-PER", "B-ORG", "O", "MISC"]
    assert tm.entities(tags) == [
        ("PER", 0, 2), ("LOC", 3, 5), ("LOC", 5, 6), ("PER", 6, 7), ("ORG", 7, 8),
        ("MISC", 9, 10),
    ]  # fmt: skip
    assert tm.entities(["O", "O"]) == [] and tm.entities([]) == []


def test_scores_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-PER"]]
    predicted = [
        ["B-PER", "O", "O", "B-LOC"],  # PER cut short (partial span: wrong), LOC right.
        ["B-LOC", "O", "I-PER"],  # ORG typed as LOC (wrong); I- without B- still a PER: right.
    ]
    scores = tm.entity_scores(gold, predicted)
    assert scores["all"]["precision"] == pytest.approx(2 / 4)
    assert scores["all"]["recall"] == pytest.approx(2 / 4)
    assert scores["PER"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    )
    assert scores["LOC"]["precision"] == 0.5 and scores["LOC"]["recall"] == 1.0
    assert scores["ORG"]["f1"] == 0.0 and scores["ORG"]["support"] == 1
    row = tm.tagging_metrics(gold, predicted)
    assert row["entity_f1"] == pytest.approx(0.5)
    assert row["token_accuracy"] == pytest.approx(4 / 7)
    assert row["entity_f1_LOC"] == pytest.approx(2 / 3)


def test_conll_reading_and_bad_lines(tmp_path):
    path = tmp_path / "a.conll"
    path.write_text("-DOCSTART- -X- O O\n\nEU NNP B-ORG\nrejects VBZ O\n\nPeter NNP B-PER\n")
    sentences = conll.read_conll(str(path))
    assert sentences.words == [["EU", "rejects"], ["Peter"]]
    assert sentences.labels == [["B-ORG", "O"], ["B-PER"]] and sentences.line == [3, 6]
    assert data.label_vocabulary(sentences) == ["O", "B-ORG", "B-PER"]
    bad = tmp_path / "bad.conll"
    bad.write_text("EU B-ORG\nrejects\n")
    with pytest.raises(DataError, match=r"bad.conll, line 2: 'rejects' has no label column"):
        conll.read_conll(str(bad))
    other = tmp_path / "other.conll"
    other.write_text("EU B-ORG\n\nx O\ny B-MISC\n")
    with pytest.raises(DataError, match=r"other.conll, line 4: label 'B-MISC' does not occur"):
        data.encode_labels(conll.read_conll(str(other)), ["O", "B-ORG"], "train.conll")


def test_text_input_keeps_word_offsets(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("  Peter  lives in\tBerlin \n\nx\n")
    sentences = conll.read_text(str(path))
    assert sentences.words == [["Peter", "lives", "in", "Berlin"], [], ["x"]]
    text = sentences.texts[0]
    assert [text[a:b] for a, b in sentences.spans[0]] == sentences.words[0]


@pytest.mark.parametrize("max_pieces, stride", [(5, 2), (7, 3), (4, 4), (50, 25)])
def test_windows_score_every_word_once_and_fit(max_pieces, stride):
    rng = np.random.default_rng(0)
    pieces = [[[7] * int(rng.integers(1, 4)) for _ in range(n)] for n in (1, 9, 20, 0)]
    pieces[1][3] = [9] * 12  # One word longer than any window: cut, still scored.
    labels = [np.arange(len(p), dtype=np.int32) + 1 for p in pieces]
    w = data.make_windows(pieces, labels, max_pieces, stride, unk_id=1)
    assert np.all(np.diff(w.offsets) <= max_pieces)
    for s, sentence in enumerate(pieces):
        windows = np.flatnonzero(w.sentence == s)
        scored = [(int(w.word[i]), int(w.labels[i])) for k in windows
                  for i in range(w.offsets[k], w.offsets[k + 1]) if w.scored[i]]  # fmt: skip
        assert sorted(scored) == [(j, j + 1) for j in range(len(sentence))]  # Once each.
        if len(windows) > 1:  # Consecutive windows overlap or touch: no word is skipped.
            covered = {int(x) for k in windows for x in w.word[w.offsets[k] : w.offsets[k + 1]]}
            assert covered == set(range(len(sentence)))


# --- A tiny task through the CLI: the tag depends on the word and the word before it. ---
NAMES = ["alba", "bruno", "corra", "dalia", "emric", "fosca", "galen", "hilde"]
FILLER = ["the", "saw", "met", "went", "to", "and", "today", "then", "quickly", "home"]


def write_tiny_task(path, num_sentences: int, seed: int) -> None:
    """'mr NAME' -> B-PER (and a following 'jr' -> I-PER); 'in NAME' -> B-LOC; else O."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(num_sentences):
        words = []
        for _ in range(rng.integers(3, 8)):
            r = rng.random()
            if r < 0.25:
                words += ["mr", str(rng.choice(NAMES))] + (["jr"] if rng.random() < 0.3 else [])
            elif r < 0.45:
                words += ["in", str(rng.choice(NAMES))]
            elif r < 0.55:
                words.append(str(rng.choice(NAMES)))  # A bare name is no entity.
            else:
                words.append(str(rng.choice(FILLER)))
        tags = []
        for i, word in enumerate(words):
            before = words[i - 1] if i else ""
            if word in NAMES and before == "mr":
                tags.append("B-PER")
            elif word in NAMES and before == "in":
                tags.append("B-LOC")
            elif word == "jr" and tags and tags[-1] == "B-PER":
                tags.append("I-PER")
            else:
                tags.append("O")
        lines += [f"{w} {t}" for w, t in zip(words, tags)] + [""]
    path.write_text("\n".join(lines))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tagging")
    write_tiny_task(root / "train.conll", 600, seed=0)
    write_tiny_task(root / "eval.conll", 100, seed=1)
    # A WordPiece vocabulary: whole words, and letters to spell anything else. (transformers'
    # token-classification pipeline groups pieces into words properly only for vocabularies
    # with a continuation prefix; see docs/finetuning.md.)
    letters = "abcdefghijklmnopqrstuvwxyz"
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *NAMES, *FILLER, "mr", "in", "jr",
              *letters, *(f"##{c}" for c in letters)]  # fmt: skip
    model = root / "vocab.txt"
    model.write_text("".join(p + "\n" for p in pieces))
    workdir = root / "ft"
    flags = [
        "--config=configs/finetune_tokens.py", f"--workdir={workdir}",
        f"--config.data.train_file={root / 'train.conll'}",
        f"--config.data.eval_file={root / 'eval.conll'}",
        f"--config.data.tokenizer_model={model}", "--config.data.max_seq_length=16",
        "--config.model.num_hidden_layers=1", "--config.model.hidden_size=32",
        "--config.model.num_attention_heads=2", "--config.model.intermediate_size=64",
        "--config.model.max_position_embeddings=16", "--config.dtype=float32",
        "--config.num_train_steps=600", "--config.eval_every_steps=300",
        "--config.checkpoint_every_steps=300", "--config.log_every_steps=50",
        "--config.global_batch_size=32", "--config.optimizer.learning_rate=5e-3",
    ]  # fmt: skip
    run_module("pretrain.finetune", flags)
    return root, workdir


@pytest.mark.slow
def test_tiny_tagging_task_reaches_f1_095_through_the_cli(tiny_run):
    root, workdir = tiny_run
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_entity_f1" in r]
    assert [r["step"] for r in evals] == [300, 600]
    final = evals[-1]
    for key in ("eval_loss", "eval_entity_precision", "eval_entity_recall", "eval_token_accuracy",
                "eval_entity_f1_PER", "eval_entity_f1_LOC"):  # fmt: skip
        assert key in final
    assert final["eval_entity_f1"] >= 0.95, final
    labels = json.loads((workdir / "labels.json").read_text())["labels"]
    assert labels == ["O", "B-LOC", "B-PER", "I-PER"]
    predictions = (workdir / "predictions.conll").read_text().split("\n\n")
    assert len([p for p in predictions if p.strip()]) == 100


def _best_row(workdir) -> dict:
    step = max(int(p.name) for p in (workdir / "best").iterdir() if p.name.isdigit())
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in rows if r["step"] == step and "eval_entity_f1" in r)


@pytest.mark.slow
def test_evaluate_and_predict_give_the_eval_pass_predictions(tiny_run, tmp_path):
    root, workdir = tiny_run
    out = run_module("pretrain.evaluate", [f"--workdir={workdir}",
                                           f"--eval_file={root / 'eval.conll'}",
                                           f"--report_dir={tmp_path}"])  # fmt: skip
    row = json.loads(out.stdout.strip().splitlines()[-1])
    best = _best_row(workdir)
    assert row == pytest.approx({k: v for k, v in best.items() if k != "step"}, abs=1e-6)
    assert "| PER |" in (tmp_path / "report.md").read_text()

    # The eval sentences as text, with odd spacing: offsets must point into each line.
    sentences = conll.read_conll(str(root / "eval.conll"))
    lines = ["  " + "   ".join(words) + " " for words in sentences.words]
    (tmp_path / "input.txt").write_text("\n".join(lines) + "\n")
    run_module("pretrain.predict", [f"--workdir={workdir}", f"--input={tmp_path / 'input.txt'}",
                                    f"--output={tmp_path / 'out.jsonl'}"])  # fmt: skip
    predicted = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(predicted) == len(lines)
    blocks = [b for b in (workdir / "predictions.conll").read_text().split("\n\n") if b.strip()]
    for line, row, block in zip(lines, predicted, blocks):
        tags = [x.split()[2] for x in block.splitlines()]
        assert row["tags"] == tags
        spans = [m.span() for m in re.finditer(r"\S+", line)]
        expected = [{"type": kind, "start": spans[a][0], "end": spans[b - 1][1],
                     "text": line[spans[a][0] : spans[b - 1][1]]}
                    for kind, a, b in tm.entities(tags)]  # fmt: skip
        assert row["entities"] == expected


@pytest.mark.slow
def test_exported_tagger_gives_our_entities_in_the_hf_pipeline(tiny_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    root, workdir = tiny_run
    out = run_module("pretrain.export_hf", [f"--workdir={workdir}", f"--output={tmp_path / 'hf'}"])
    assert "BertForTokenClassification" in out.stdout
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_config["id2label"] == {"0": "O", "1": "B-LOC", "2": "B-PER", "3": "I-PER"}
    sentences = conll.read_conll(str(root / "eval.conll"))
    lines = [" ".join(words) for words in sentences.words if len(words) <= 12]  # One window.
    (tmp_path / "input.txt").write_text("\n".join(lines) + "\n")
    run_module("pretrain.predict", [f"--workdir={workdir}", f"--input={tmp_path / 'input.txt'}",
                                    f"--output={tmp_path / 'out.jsonl'}"])  # fmt: skip
    ours = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    pipe = transformers.pipeline("token-classification", model=str(tmp_path / "hf"),
                                 aggregation_strategy="first")  # fmt: skip
    assert len(lines) >= 30
    for line, mine in zip(lines, ours):
        theirs = [(e["entity_group"], e["start"], e["end"]) for e in pipe(line)]
        assert theirs == [(e["type"], e["start"], e["end"]) for e in mine["entities"]], line
