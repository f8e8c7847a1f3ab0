"""The GLUE harness end to end on `tfds.testing.mock_data`: the table, its metric names, resume
without redoing finished runs, and GLUE's own file layout.

That the runs of a sweep share one compiled program is a property of the step, not of the cache
that serves it: tests/test_no_recompile.py checks that the learning rate and the seed leave the
train step's program unchanged."""

import json

import pytest

from configs import glue as glue_config
from pretrain.harness import glue, glue_tasks
from tests.test_finetune import pretrained  # noqa: F401 - a fixture.

tfds = pytest.importorskip("tensorflow_datasets")


def _config():
    c = glue_config.get_config()
    c.unlock()
    c.dtype = "float32"
    c.global_batch_size, c.eval_batch_size = 8, 8
    c.data.max_seq_length = 32
    c.glue.learning_rates, c.glue.seeds, c.glue.epochs = "1e-3,2e-3", "0", 2.0
    return c


def _run(pretrained, workdir, tasks):
    import tensorflow_datasets.text.glue  # noqa: F401 - registers the builder for mock_data.

    with tfds.testing.mock_data(num_examples=24):
        return glue.run_glue(_config(), str(pretrained), str(workdir), tasks)


@pytest.mark.slow
def test_mock_glue_table_metrics_and_resume(pretrained, tmp_path):
    workdir = tmp_path / "glue"
    table = _run(pretrained, workdir, "cola,mrpc,stsb,mnli")
    saved = json.loads((workdir / "glue.json").read_text())
    assert set(saved) == {"cola", "mrpc", "stsb", "mnli", "average"}
    assert {"eval_mcc", "score"} <= set(saved["cola"])
    assert {"eval_f1", "eval_accuracy"} <= set(saved["mrpc"])
    assert {"eval_pearson", "eval_spearman"} <= set(saved["stsb"])
    assert {"eval_accuracy-m", "eval_accuracy-mm"} <= set(saved["mnli"])
    assert saved["average"] == pytest.approx(sum(v["score"] for k, v in table.items()) / 4)
    md = (workdir / "glue.md").read_text()
    assert "| CoLA | MRPC | STS-B | MNLI-m | MNLI-mm | Average |" in md
    assert md.count("| mrpc | ") == 2  # Every run is listed.

    # An interrupted table: one run lost its result (and its last checkpoint), glue.json gone.
    results = {p: p.stat().st_mtime_ns for p in workdir.glob("runs/*/*/result.json")}
    assert len(results) == 8
    cut = workdir / "runs" / "mnli" / "lr0.002_seed0"
    (cut / "result.json").unlink()
    (workdir / "glue.json").unlink()
    again = _run(pretrained, workdir, "cola,mrpc,stsb,mnli")
    assert again == table
    for path, mtime in results.items():
        if path.parent != cut:
            assert path.stat().st_mtime_ns == mtime, path  # Finished runs are not redone.
    assert (cut / "result.json").exists() and (workdir / "glue.json").exists()


def test_glue_download_layout_is_converted(tmp_path):
    mrpc = tmp_path / "MRPC"
    mrpc.mkdir()
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    (mrpc / "train.tsv").write_text(header + "1\t1\t2\tA cat.\tThe cat.\n0\t3\t4\tDogs\n")
    (mrpc / "dev.tsv").write_text(header + "0\t5\t6\tRed  sky.\tBlue sea.\n")
    paths = glue_tasks.convert(str(tmp_path), glue_tasks.TASKS["mrpc"], str(tmp_path / "out"))
    assert open(paths["train"]).read() == "1\tA cat.\tThe cat.\n"  # The short row is skipped.
    assert open(paths[""]).read() == "0\tRed sky.\tBlue sea.\n"
    cola = tmp_path / "CoLA"
    cola.mkdir()
    (cola / "train.tsv").write_text("gj04\t1\t\tThe book is red.\n")
    (cola / "dev.tsv").write_text("gj04\t0\t*\tBook red the is.\n")
    paths = glue_tasks.convert(str(tmp_path), glue_tasks.TASKS["cola"], str(tmp_path / "c"))
    assert open(paths["train"]).read() == "1\tThe book is red.\n"
