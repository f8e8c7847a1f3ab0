"""Bad input to the tagging and QA fine-tuning tasks: one `error:` line, exit 2, before any
model compiles or anything is written."""

import json
import logging

import jax
import pytest

from configs import finetune_classify, finetune_qa, finetune_retrieval, finetune_tokens
from pretrain.tasks.classification import ClassificationTask
from pretrain.tasks.qa import QaTask
from pretrain.tasks.retrieval import RetrievalTask
from pretrain.tasks.tagging import TaggingTask
from pretrain.training import loop
from tests.cli_utils import MODEL_COMPILE, run_in_process


@pytest.fixture(scope="module")
def tokenizer(pipeline_tokenizer):
    return pipeline_tokenizer.model_path


def _config(module, tokenizer, **data):
    config = module.get_config()
    config.data.tokenizer_model = tokenizer
    for key, value in data.items():
        config.data[key] = value
    config.model.num_hidden_layers, config.model.hidden_size = 1, 32
    config.model.num_attention_heads, config.model.intermediate_size = 2, 64
    config.model.max_position_embeddings = 512
    config.num_train_steps = 2
    return config


def _fails(task, config, workdir, capsys, caplog, *fragments) -> None:
    with caplog.at_level(logging.WARNING), jax.log_compiles(True):
        code, lines = run_in_process(lambda: loop.train(config, str(workdir), task), capsys)
    assert code == 2 and lines[-1].startswith("error: "), lines
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])
    assert not any(MODEL_COMPILE.search(r.getMessage()) for r in caplog.records)
    assert not (workdir / "metrics.jsonl").exists()


def test_conll_line_without_a_label(tokenizer, tmp_path, capsys, caplog):
    train = tmp_path / "train.conll"
    train.write_text("EU B-ORG\nrejects O\n\nGerman B-MISC\ncall\n")
    config = _config(finetune_tokens, tokenizer, train_file=str(train))
    _fails(TaggingTask, config, tmp_path / "w", capsys, caplog, "train.conll, line 5",
           "'call' has no label column")  # fmt: skip


def test_eval_label_unseen_in_training(tokenizer, tmp_path, capsys, caplog):
    (tmp_path / "train.conll").write_text("EU B-ORG\nrejects O\n")
    (tmp_path / "eval.conll").write_text("Peter B-PER\n")
    config = _config(finetune_tokens, tokenizer, train_file=str(tmp_path / "train.conll"),
                     eval_file=str(tmp_path / "eval.conll"))  # fmt: skip
    _fails(TaggingTask, config, tmp_path / "w", capsys, caplog, "eval.conll, line 1",
           "label 'B-PER' does not occur in the training data")  # fmt: skip


def _squad(path, answer_start: int, impossible: bool = False) -> None:
    qa = {
        "id": "q1",
        "question": "Who asks?",
        "is_impossible": impossible,
        "answers": [] if impossible else [{"text": "Peter", "answer_start": answer_start}],
    }
    path.write_text(json.dumps({"data": [{"paragraphs": [
        {"context": "Then Peter asks.", "qas": [qa]}]}]}))  # fmt: skip


def test_squad_answer_off_its_offset(tokenizer, tmp_path, capsys, caplog):
    _squad(tmp_path / "train.json", answer_start=4)
    config = _config(finetune_qa, tokenizer, train_file=str(tmp_path / "train.json"))
    _fails(QaTask, config, tmp_path / "w", capsys, caplog, "question 'q1'",
           "answer 'Peter' is not the context at its answer_start 4")  # fmt: skip


def test_unanswerable_questions_need_version_2(tokenizer, tmp_path, capsys, caplog):
    _squad(tmp_path / "train.json", answer_start=0, impossible=True)
    config = _config(finetune_qa, tokenizer, train_file=str(tmp_path / "train.json"))
    _fails(QaTask, config, tmp_path / "w", capsys, caplog, "config.data.version_2=True")


def test_doc_stride_longer_than_a_window(tokenizer, tmp_path, capsys, caplog):
    _squad(tmp_path / "train.json", answer_start=5)
    config = _config(finetune_qa, tokenizer, train_file=str(tmp_path / "train.json"),
                     max_seq_length=128, doc_stride=100)  # fmt: skip
    _fails(QaTask, config, tmp_path / "w", capsys, caplog, "data.doc_stride=100")


@pytest.mark.parametrize(
    "module, task, what",
    [
        (finetune_classify, ClassificationTask, "a TSV file (label<TAB>text) or tfds:NAME"),
        (finetune_tokens, TaggingTask, "a CoNLL file or tfds:NAME"),
        (finetune_qa, QaTask, "SQuAD JSON or tfds:squad"),
        (finetune_retrieval, RetrievalTask, "a pairs TSV file"),
    ],
)
def test_an_empty_train_file_is_refused_before_the_workdir_is_made(
    module, task, what, tokenizer, tmp_path, capsys, caplog
):
    config = _config(module, tokenizer, train_file=" ")
    workdir = tmp_path / "ft"
    _fails(task, config, workdir, capsys, caplog, "config.data.train_file is empty", what)
    assert not workdir.exists()
