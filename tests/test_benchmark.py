"""`python -m pretrain.benchmark`: the JSON line of the contract, and one-line failures."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pretrain.perf import timing as benchmarking

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTRACT_KEYS = (
    "tokens_per_sec",
    "step_time_s",
    "compile_time_s",
    "input_tokens_per_sec",
    "mfu",
    "peak_memory_bytes",
    "devices",
)


def _benchmark(*overrides: str, config: str = "configs/smoke.py") -> subprocess.CompletedProcess:
    # The subprocess inherits the 8 simulated CPU devices of conftest.py.
    return subprocess.run(
        [sys.executable, "-m", "pretrain.benchmark", f"--config={config}", *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _tiny(corpus, tokenizer) -> list[str]:
    return [
        f"--config.data.train_files={corpus}",
        f"--config.data.tokenizer_model={tokenizer.model_path}",
        "--config.data.vocab_size=300",
        "--config.data.max_seq_length=32",
        "--config.data.max_predictions_per_seq=10",  # modernbert_smoke masks 30%.
        "--config.global_batch_size=16",
        "--config.model.num_hidden_layers=1",
        "--config.model.hidden_size=32",
        "--config.model.num_attention_heads=2",
        "--config.model.intermediate_size=64",
        "--config.benchmark.warmup_steps=1",
        "--config.benchmark.timed_steps=2",
        "--config.benchmark.input_batches=3",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("config", ["configs/smoke.py", "configs/modernbert_smoke.py"])
def test_prints_the_contract_json_as_last_line(pipeline_corpus, pipeline_tokenizer, config):
    result = _benchmark(*_tiny(pipeline_corpus[0], pipeline_tokenizer), config=config)
    assert result.returncode == 0, result.stderr[-2000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(CONTRACT_KEYS) <= set(row)
    assert row["devices"] == 8
    assert row["tokens_per_sec"] > 0 and row["input_tokens_per_sec"] > 0
    # CPUs have no peak in the table (tests/test_flops.py covers the table and a set peak).
    assert row["mfu"] is None and row["peak_flops_per_device"] is None
    assert np.isfinite(row["loss"]) and row["compile_time_s"] > 0
    assert row["peak_memory_bytes"] > 0 and row["peak_memory_source"] == "host_max_rss"


@pytest.mark.slow
def test_missing_data_fails_with_one_line(tmp_path):
    result = _benchmark(f"--config.data.train_files={tmp_path}/nothing*.txt")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "nothing*.txt" in lines[-1]
    assert result.stdout.strip() == ""  # No result line, no compile: it failed first.


def test_synthetic_batch_is_a_valid_pretraining_batch():
    batch = benchmarking.synthetic_batch(4, 16, 5, vocab_size=100, seed=1)
    positions = batch["masked_lm_positions"]
    assert positions.shape == (4, 5) and positions.dtype == np.int32
    assert all(len(set(row)) == 5 for row in positions)  # Distinct positions...
    assert positions.min() >= 1 and positions.max() <= 14  # ...never [CLS] or the last token.
    assert batch["input_ids"].min() >= 5 and batch["input_ids"].max() < 100  # No special ids.
    assert batch["input_mask"].all() and batch["masked_lm_weights"].all()


def test_synthetic_packed_batch_holds_two_documents_per_row():
    batch = benchmarking.synthetic_batch(4, 16, 5, vocab_size=100, seed=1, packed=True)
    assert "next_sentence_labels" not in batch and not batch["segment_ids"].any()
    for docs, positions in zip(batch["document_ids"], batch["positions"]):
        split = int((docs == 1).sum())
        assert 1 <= split < 16 and docs.tolist() == [1] * split + [2] * (16 - split)
        assert positions.tolist() == [*range(split), *range(16 - split)]
