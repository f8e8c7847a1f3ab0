"""The GLUE harness end to end on `tfds.testing.mock_data`: the table, its metric names,
one compilation per task, resume without redoing finished runs, and GLUE's own file layout."""

import json
import logging
import re

import jax
import pytest

from configs import glue as glue_config
from pretrain.harness import glue, glue_tasks
from tests.test_finetune import pretrained  # noqa: F401 - a fixture.

tfds = pytest.importorskip("tensorflow_datasets")

# With log_compiles, JAX logs each persistent-cache lookup of a compiled step: a miss compiles.
_LOOKUP = re.compile(r"(cache hit|CACHE MISS) for 'jit_(train_step|eval_step)'")


def _config():
    c = glue_config.get_config()
    c.unlock()
    c.dtype = "float32"
    c.global_batch_size, c.eval_batch_size = 8, 8
    c.data.max_seq_length = 32
    c.glue.learning_rates, c.glue.seeds, c.glue.epochs = "1e-3,2e-3", "0", 2.0
    return c


def _run(pretrained, workdir, tasks, caplog):
    import tensorflow_datasets.text.glue  # noqa: F401 - registers the builder for mock_data.

    with tfds.testing.mock_data(num_examples=24), caplog.at_level(logging.WARNING):
        with jax.log_compiles(True):
            return glue.run_glue(_config(), str(pretrained), str(workdir), tasks)


@pytest.mark.slow
def test_mock_glue_table_metrics_compiles_and_resume(pretrained, tmp_path, caplog):
    workdir = tmp_path / "glue"
    table = _run(pretrained, workdir, "cola,mrpc,stsb,mnli", caplog)
    lookups = [m.groups() for r in caplog.records if (m := _LOOKUP.search(r.getMessage()))]
    # Two learning rates per task: the second run of each task finds the first one's compiled
    # steps (the cache may hold them from an earlier session too). STS-B's regression head and
    # MNLI's three classes have their own shapes.
    for step in ("train_step", "eval_step"):
        misses = lookups.count(("CACHE MISS", step))
        assert misses <= 4 and misses + lookups.count(("cache hit", step)) >= 8, lookups
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
    caplog.clear()
    again = _run(pretrained, workdir, "cola,mrpc,stsb,mnli", caplog)
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
