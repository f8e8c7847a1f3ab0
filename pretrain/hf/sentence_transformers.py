"""The sentence-transformers folder layout over a Hugging Face export (pretrain/hf/exporting.py).

A retrieval workdir's export is the plain encoder class (`BertModel` / `ModernBertModel`) with
its tokenizer, plus the files that make `sentence_transformers.SentenceTransformer(HF_DIR)` run
our embedding: Transformer -> Pooling (our `retrieval.pooling`) -> Normalize (L2). The module
names and `pooling_mode_*` keys are the long-standing ones every sentence-transformers version
reads (v5+ maps them to its new modules), so MTEB loads the folder as any other model.
"""

from __future__ import annotations

import json
import os

from data_pipeline import files

# Our pooling -> sentence-transformers' Pooling flag.
_POOLING_MODES = {"mean": "mean_tokens", "cls": "cls_token", "last": "lasttoken"}
_ALL_MODES = (
    "cls_token",
    "max_tokens",
    "mean_tokens",
    "mean_sqrt_len_tokens",
    "weightedmean_tokens",
    "lasttoken",
)


def write_modules(output: str, *, pooling: str, hidden_size: int, max_seq_length: int) -> list[str]:
    """Writes modules.json, sentence_bert_config.json, 1_Pooling/ and 2_Normalize/ into the HF
    folder `output`; returns the files written."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ]
    pooling_config = {"word_embedding_dimension": hidden_size, "include_prompt": True}
    pooling_config.update({f"pooling_mode_{m}": m == _POOLING_MODES[pooling] for m in _ALL_MODES})
    contents = {
        "modules.json": modules,
        # Our max_seq_length: texts are cut to it as fine-tuning cut them.
        "sentence_bert_config.json": {"max_seq_length": max_seq_length, "do_lower_case": False},
        "config_sentence_transformers.json": {
            "prompts": {},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
        os.path.join("1_Pooling", "config.json"): pooling_config,
    }
    for name in ("1_Pooling", "2_Normalize"):
        os.makedirs(os.path.join(output, name), exist_ok=True)
    for name, value in contents.items():
        files.write_text(os.path.join(output, name), json.dumps(value, indent=2) + "\n")
    return list(contents)
