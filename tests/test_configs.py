"""Config files as `--config=PATH[:ARG]` loads them: sizes by argument, the old paths as aliases."""

from __future__ import annotations

import pytest
from absl import flags
from ml_collections import config_flags

from tests.cli_utils import REPO

ALIASES = {
    "configs/mini.py": "configs/bert.py:mini",
    "configs/small.py": "configs/bert.py:small",
    "configs/base.py": "configs/bert.py:base",
    "configs/large.py": "configs/bert.py:large",
    "configs/modernbert_base.py": "configs/modernbert.py:base",
    "configs/modernbert_large.py": "configs/modernbert.py:large",
}


def load(spec: str) -> dict:
    """The config `--config=spec` gives a command, as a plain dict."""
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config", flag_values=values)
    values(["prog", f"--config={REPO / spec}"])
    return values.config.to_dict()


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_old_paths_are_the_sized_configs(alias):
    assert load(alias) == load(ALIASES[alias])


def test_sizes_follow_the_reference_table():
    shapes = {}
    for size in ("tiny", "mini", "small", "medium", "base", "large"):
        m = load(f"configs/bert.py:{size}")["model"]
        key = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")
        shapes[size] = tuple(m[k] for k in key)
    assert shapes["tiny"] == (2, 128, 2, 512) and shapes["medium"] == (8, 512, 8, 2048)
    assert load("configs/bert.py") == load("configs/bert.py:base")
    assert load("configs/modernbert.py") == load("configs/modernbert.py:base")


def test_an_unknown_size_names_the_sizes():
    with pytest.raises(flags.IllegalFlagValueError, match="tiny, mini, small, medium, base"):
        load("configs/bert.py:huge")


@pytest.mark.parametrize("path", sorted(p.name for p in (REPO / "configs").glob("[!_]*.py")))
def test_every_config_file_loads(path):
    arg = ":classification" if path == "finetune_common.py" else ""  # Shared fields, by task.
    assert "seed" in load(f"configs/{path}{arg}")
