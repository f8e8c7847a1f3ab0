"""Embeddings of new text from any workdir: `pretrain.embed` uses this.

A retrieval workdir (`pretrain.finetune --config=configs/finetune_retrieval.py`) embeds with its
own pooling through `session.open_session`. A pretraining or imported Hugging Face workdir has
no sentence head: its encoder is restored (as fine-tuning's `init_from` restores it) into the
retrieval task's model with mean pooling, so a base model can be evaluated zero-shot. Either way
the texts go through the retrieval task's jitted eval step on the mesh, batched.
"""

from __future__ import annotations

import json
import math

import jax
import ml_collections
import numpy as np
from etils import epath

from data_pipeline import files, vocab
from data_pipeline.errors import ConfigError
from pretrain.inference import session as session_lib
from pretrain.models.config import EncoderConfig
from pretrain.tasks.retrieval import RetrievalTask, embedding_rows
from pretrain.training import claim, sharding, steps
from pretrain.training.evaluation import Feed, evaluate
from pretrain.training.optimizer import make_optimizer
from pretrain.training.workdir import latest_checkpoint, tokenizer_file

# The retrieval keys a pretraining workdir's config lacks (configs/finetune_retrieval.py's
# meaning; pretrain/ never imports configs/).
_ZERO_SHOT = {
    "pooling": "mean",
    "temperature": 0.05,
    "learn_temperature": False,
    "symmetric": False,
    "embed_chunks": 1,
}


def _encoder_session(workdir: str, mesh: str, max_seq_length: int) -> session_lib.Session:
    """A pretraining (or imported) workdir's encoder as a mean-pooling retrieval model."""
    step, saved = latest_checkpoint(workdir)
    config = ml_collections.ConfigDict(saved)
    config.task, config.init_from, config.best_metric = "retrieval", workdir, ""
    config.retrieval = ml_collections.ConfigDict(_ZERO_SHOT)
    config.data.max_seq_length = max_seq_length or config.data.max_seq_length
    config.data.max_query_length = config.data.max_seq_length
    tokenizer = vocab.load(str(tokenizer_file(workdir)))
    model_config = EncoderConfig.from_config(
        config.model, vocab_size=tokenizer.vocab_size, dtype=config.dtype
    )
    if config.data.max_seq_length > model_config.max_position_embeddings:
        raise ConfigError(
            f"--max_seq_length={config.data.max_seq_length} exceeds the model's "
            f"max_position_embeddings={model_config.max_position_embeddings}."
        )
    task = RetrievalTask(config, model_config, step)
    task.tokenizer = tokenizer
    device_mesh = session_lib.make_mesh(mesh, config)
    rules = tuple(config.mesh.logical_axis_rules)
    tx, schedule = make_optimizer(
        config.optimizer, config.num_train_steps, model_config.num_hidden_layers
    )
    jitted = steps.build_steps(
        task, tx, schedule, device_mesh, rules, grad_accum_steps=1, seed=config.seed
    )
    params = jitted.init(task.initial_params(jitted.abstract_state.params)).params
    data_parallel = sharding.data_parallel_size(device_mesh, rules)
    batch_size = math.ceil(config.eval_batch_size / data_parallel) * data_parallel
    config.eval_batch_size = batch_size
    return session_lib.Session(
        task, config, step, jitted.eval_step, params, Feed(device_mesh, rules, batch_size)
    )


def open_embedder(
    workdir: str, step: int | None = None, mesh: str = "-1,1,1", max_seq_length: int = 0
) -> session_lib.Session:
    """The embedding model of any workdir (see the module docstring)."""
    kind = (claim.read_kind(workdir) or {"kind": "pretraining"})["kind"]
    if kind != "finetuning":
        if step is not None:
            raise ConfigError(
                "--step applies to retrieval workdirs; a pretraining workdir's "
                "newest checkpoint is embedded."
            )
        return _encoder_session(workdir, mesh, max_seq_length)
    session = session_lib.open_session(workdir, step, mesh)
    if not isinstance(session.task, RetrievalTask):
        raise ConfigError(
            f"{workdir} was fine-tuned for task={session.config.task!r}: embed takes a retrieval "
            "workdir, or a pretraining / imported workdir (mean pooling)."
        )
    if max_seq_length:
        session.config.data.max_seq_length = max_seq_length
    return session


def embed_texts(session: session_lib.Session, input_file: str) -> np.ndarray:
    """float32 [N, H] unit vectors, one per line of `input_file`, in order."""
    session.task.load_inputs(input_file, session.config.eval_batch_size)
    _, outputs = evaluate(
        session.eval_step, session.params, session.task, session.feed, metrics=False
    )
    return np.asarray(outputs["embedding"], np.float32)


def write_embeddings(embeddings: np.ndarray, output: str) -> None:
    """OUT.npy (float32 [N, H]) or OUT.jsonl ({"embedding": [...]} per line); process 0 only."""
    if jax.process_index() != 0:
        return
    path = epath.Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    if output.endswith(".npy"):
        tmp = path.parent / (path.name + ".tmp.npy")
        np.save(tmp, embeddings)
        tmp.rename(path)
        return
    rows = embedding_rows(embeddings)
    files.write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
