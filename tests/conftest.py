"""Test-session setup: 8 simulated CPU devices, so mesh tests run on any laptop.

The flag must be set before JAX initializes its backend, hence here, at import time. Tests that
want one device build their mesh from `jax.devices()[:1]`.
"""

import os
import tempfile

import numpy as np
import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiling dominates the tiny CLI runs; many tests compile the same shapes, and subprocesses
# inherit these variables, so a persistent XLA cache roughly halves the suite's time.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "bert-jax-test-xla-cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()


# The longest module first: under the README's `pytest -n 2` (pyproject.toml: whole modules per
# worker, in collection order) one worker starts it while the other works through the rest,
# rather than both waiting on it at the end.
_LONGEST_FIRST = ("test_quality.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A stable sort: the other modules keep their order.
    items.sort(key=lambda item: item.path.name not in _LONGEST_FIRST)


# --- data_pipeline fixtures: a small synthetic BERT-format corpus and a tokenizer trained on it,
# built once per session so the data tests stay fast.


def _write_synthetic_corpus(path, *, num_docs: int = 60, seed: int = 0) -> list[list[str]]:
    """Writes random-word documents in BERT text format to `path`; returns them as sentences."""
    rng = np.random.default_rng(seed)
    letters = list("abcdefghijklmnoprstuvwy")
    words = ["".join(rng.choice(letters, rng.integers(2, 8))) for _ in range(1500)]
    documents = []
    for _ in range(num_docs):
        document = []
        for _ in range(rng.integers(2, 8)):
            # Zipf word frequencies give the unigram trainer a realistic mix of pieces.
            sentence = [words[int(i) % len(words)] for i in rng.zipf(1.2, rng.integers(4, 15))]
            document.append(" ".join(sentence).capitalize() + ".")
        documents.append(document)
    path.write_text("\n\n".join("\n".join(d) for d in documents) + "\n")
    return documents


@pytest.fixture(scope="session")
def pipeline_corpus(tmp_path_factory):
    """(path of a ~14 KB synthetic BERT-format file, its documents as lists of sentences)."""
    path = tmp_path_factory.mktemp("pipeline_corpus") / "corpus.txt"
    return path, _write_synthetic_corpus(path)


@pytest.fixture(scope="session")
def pipeline_tokenizer(pipeline_corpus, tmp_path_factory):
    """A 256-piece lower-casing sentencepiece tokenizer trained on `pipeline_corpus`."""
    from data_pipeline.vocab import unigram

    prefix = tmp_path_factory.mktemp("pipeline_tokenizer") / "sp"
    return unigram.SentencePieceTokenizer(
        unigram.train_tokenizer([str(pipeline_corpus[0])], 256, str(prefix))
    )
