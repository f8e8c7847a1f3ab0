"""Honest errors: user mistakes are one line, bugs keep their traceback.

Only the project's own exception types (`pretrain/training/errors.py`) become the one `error:`
line and exit 2; a ValueError raised by a bug (ours, or inside JAX or orbax) must reach the
person who debugs it with its traceback.
"""

from __future__ import annotations

import pytest

from pretrain.tasks.pretraining import PretrainingTask
from pretrain.training import loop
from pretrain.training.errors import ConfigError
from tests.cli_utils import run_in_process, tiny_config


class _BuggyTask(PretrainingTask):
    """Pretraining whose loss raises a ValueError while the train step is traced."""

    def loss_sums(self, model, batch, rngs):
        raise ValueError("a bug inside the train step")


def test_a_value_error_inside_a_train_step_keeps_its_traceback(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    config = tiny_config(tmp_path / "data")
    with pytest.raises(ValueError, match="a bug inside the train step") as raised:
        run_in_process(lambda: loop.train(config, str(tmp_path / "w"), _BuggyTask), capsys)
    assert raised.traceback  # Propagated, with its frames; not turned into a one-line exit.
    assert "error: " not in capsys.readouterr().err


def test_a_user_error_is_one_line_and_exit_2(capsys):
    def mistake():
        raise ConfigError("config.seed=-1 must be >= 0: pick a non-negative seed.")

    code, lines = run_in_process(mistake, capsys)
    assert code == 2
    assert lines == ["error: config.seed=-1 must be >= 0: pick a non-negative seed."]
