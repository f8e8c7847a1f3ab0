"""`pretrain.evaluate`, `pretrain.predict` and the export of a fine-tuned classifier, against the
fine-tuning run's own eval pass and transformers' text-classification pipeline."""

import json

import numpy as np
import pytest

from tests.cli_utils import run_module
from tests.test_finetune import (  # noqa: F401 - fixtures.
    keyword_run,
    keyword_task,
    pretrained,
    read_rows,
)


def _best_row(workdir) -> dict:
    step = max(int(p.name) for p in (workdir / "best").iterdir() if p.name.isdigit())
    return read_rows(workdir)[1][step]


@pytest.mark.slow
def test_evaluate_reports_the_best_checkpoints_eval_row(keyword_task, keyword_run, tmp_path):
    _, evals, _ = keyword_task
    workdir, _ = keyword_run
    out = run_module("pretrain.evaluate", [f"--workdir={workdir}", f"--eval_file={evals}",
                                           f"--report_dir={tmp_path}"])  # fmt: skip
    row = json.loads(out.stdout.strip().splitlines()[-1])
    best = _best_row(workdir)
    assert row == pytest.approx({k: v for k, v in best.items() if k != "step"}, abs=1e-6)
    report = (tmp_path / "report.md").read_text()
    assert "| class | precision | recall | f1 | support |" in report
    assert "| no |" in report and "| yes |" in report
    png = (tmp_path / "confusion_matrix.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


@pytest.mark.slow
def test_predict_and_the_hf_pipeline_give_the_eval_predictions(keyword_task, keyword_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    _, evals, _ = keyword_task
    workdir, _ = keyword_run
    texts = [line.split("\t")[1] for line in evals.read_text().splitlines()]
    (tmp_path / "input.txt").write_text("\n".join(texts) + "\n")
    run_module("pretrain.predict", [f"--workdir={workdir}", f"--input={tmp_path / 'input.txt'}",
                                    f"--output={tmp_path / 'out.jsonl'}"])  # fmt: skip
    ours = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    saved = [r.split("\t") for r in (workdir / "predictions.tsv").read_text().splitlines()[1:]]
    assert [o["label"] for o in ours] == [r[1] for r in saved]
    np.testing.assert_allclose([o["probability"] for o in ours], [float(r[2]) for r in saved],
                               atol=1e-4)  # fmt: skip

    out = run_module("pretrain.export_hf", [f"--workdir={workdir}", f"--output={tmp_path / 'hf'}"])
    assert "BertForSequenceClassification" in out.stdout
    pipe = transformers.pipeline("text-classification", model=str(tmp_path / "hf"))
    theirs = pipe(texts[:50], truncation=True)
    assert [t["label"] for t in theirs] == [o["label"] for o in ours[:50]]
    np.testing.assert_allclose([t["score"] for t in theirs],
                               [o["probability"] for o in ours[:50]], atol=1e-4)  # fmt: skip


@pytest.mark.slow
def test_bad_inputs_are_one_line(keyword_task, keyword_run, pretrained, tmp_path):
    workdir, _ = keyword_run
    bad_label = tmp_path / "bad.tsv"
    bad_label.write_text("no\tab cd\nmaybe\tef gh\nyes\tzebra x\n")
    cases = [
        ("pretrain.evaluate", [f"--workdir={pretrained}", f"--eval_file={bad_label}"],
         "is a pretraining workdir"),
        ("pretrain.evaluate", [f"--workdir={workdir}", f"--eval_file={bad_label}"],
         "line 2: label 'maybe' does not occur"),
        ("pretrain.predict", [f"--workdir={workdir}", f"--input={tmp_path / 'none.txt'}",
                              f"--output={tmp_path / 'o.jsonl'}"], "not found"),
        ("pretrain.evaluate", [f"--workdir={tmp_path / 'nothing'}", f"--eval_file={bad_label}"],
         "has no checkpoints"),
    ]  # fmt: skip
    for module, args, message in cases:
        proc = run_module(module, args, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert lines[-1].startswith("error: ") and message in lines[-1], lines[-1]
    assert not (tmp_path / "o.jsonl").exists()
