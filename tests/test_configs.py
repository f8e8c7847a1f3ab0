"""Config files as `--config=PATH[:ARG]` loads them: sizes by argument, the old paths as aliases."""

from __future__ import annotations

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from pretrain import config_help
from tests.cli_utils import REPO, run_module

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


def test_key_comments_come_from_the_file_that_defines_the_key():
    smoke = config_help.key_comments(str(REPO / "configs/smoke.py"))
    assert smoke["seed"].startswith("Seeds init, data order")  # configs/default.py's line.
    assert smoke["dtype"].startswith("Compute dtype")  # Not smoke.py's override comment.
    assert smoke["optimizer.warmup_steps"] == "Linear warmup from 0."
    assert smoke["benchmark.warmup_steps"].startswith("Train steps run after compilation")
    assert smoke["data.train_files"].startswith("Comma-separated globs")  # The lines above it.
    qa = config_help.key_comments(str(REPO / "configs/finetune_qa.py"))
    assert qa["seed"] == "Seeds the head's init, the data order and dropout."
    assert list(qa)[:2] == ["init_from", "task"]  # In the order the recipe assigns them.


@pytest.mark.parametrize("spec", ["smoke.py", "bert.py:base", "finetune_qa.py", "glue.py"])
def test_every_key_has_a_comment(spec):
    path, _, _ = spec.partition(":")
    comments = config_help.key_comments(str(REPO / "configs" / path))
    keys = [
        key for key, _ in config_help.leaves(ml_collections.ConfigDict(load(f"configs/{spec}")))
    ]
    assert keys and [key for key in keys if not comments.get(key)] == []


@pytest.mark.slow
def test_help_lists_the_keys_and_show_config_prints_the_overridden_config(tmp_path):
    args = ["--config=configs/smoke.py", "--config.num_train_steps=30"]
    shown = run_module("pretrain.train", [*args, "--show_config"])  # No --workdir needed.
    assert "  num_train_steps=30" in shown.stdout.splitlines()
    assert "  data.train_files='data/sample/train.txt'" in shown.stdout.splitlines()
    helped = run_module("pretrain.finetune", ["--config=configs/finetune_qa.py", "--help"])
    assert "--[no]show_config" in helped.stdout
    line = next(x for x in helped.stdout.splitlines() if x.strip().startswith("seed=0"))
    assert line.endswith("# Seeds the head's init, the data order and dropout.")
