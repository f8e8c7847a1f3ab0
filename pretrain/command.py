"""What every command line of this project shares: one-line errors and multi-process setup.

A user mistake (bad config value, missing file, mismatched checkpoint) raises one of the
project's own exception types (`pretrain/training/errors.py`) and ends with one line on stderr
naming the problem and the fix, exit code 2, and no traceback. Anything else is a bug and keeps
its traceback, a ValueError from inside JAX or orbax included.
"""

from __future__ import annotations

import glob
import importlib.util
import logging as py_logging
import os
import re
import sys
from collections.abc import Callable

import jax
import ml_collections
from absl import app, flags, logging

from pretrain import config_help
from pretrain.training.errors import UserError

flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (multi-process runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "Index of this process, 0..num_processes-1.")

FLAGS = flags.FLAGS


def fail(message: str) -> None:
    """Prints one error line and exits with status 2."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def start(argv: list[str], *, takes_config: bool = False) -> None:
    """What every command does first: refuse stray positional arguments, and keep library INFO
    logs (orbax, absl), which drown the progress line, off unless --verbosity was given."""
    if len(argv) > 1:
        hint = "; pass settings as --config.KEY=VALUE" if takes_config else ""
        fail(f"unexpected arguments {argv[1:]}{hint}.")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing where a bad flag or `--config.KEY` override is one line, not a traceback.

    On commands with --config, `--help` also lists the config's keys and `--show_config` prints
    it (`config_help.py`); both exit 0 before any work. Pass as
    `app.run(main, flags_parser=cli.parse_flags)`.
    """
    help_asked = False
    if "config" in FLAGS:
        config_help.define_show_config_flag()
        help_asked = any(a in config_help.HELP_ARGS for a in argv)
        argv = [a for a in argv if a not in config_help.HELP_ARGS]
    try:
        remaining = FLAGS(argv)
    except (SyntaxError, ImportError, NameError, OSError) as e:  # Raised by a broken --config file.
        _config_file_error(e, argv)
    except flags.Error as e:
        # Parsed, then only a required flag missing: enough to list or print the config.
        # --show_config exists only on commands with --config; `.value` reads it unparsed too.
        show_config = "show_config" in FLAGS and FLAGS["show_config"].value
        showing = FLAGS.is_parsed() and (help_asked or show_config)
        if "Error whilst parsing config file" in str(e):  # ml_collections' wrapper of the cause.
            _config_file_error(e, argv)
        elif not showing:
            fail(_flag_error_line(e))
        remaining = argv[:1]
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        # ml_collections raises these for an unknown key or a value of the wrong type.
        detail = str(e.args[0] if e.args else e)
        if len(detail) > 1 and detail[0] == detail[-1] == "'":
            detail = detail[1:-1]  # ml_collections wraps a repr of the message in quotes.
        for escaped, plain in (("\\'", "'"), ("\\n", " "), ("\n", " ")):
            detail = detail.replace(escaped, plain)
        detail = detail.strip().strip("'\"")
        if isinstance(e, KeyError | AttributeError) and " " not in detail:
            detail = f"the config has no key {detail!r} (keys are fixed: check the spelling)"
        fail(f"bad --config override: {detail}")
        return []
    if "config" in FLAGS:
        if config_help.given():
            _load_config_file(argv)
        config_help.show_and_exit(help_asked)
    return remaining


def _flag_error_line(error: flags.Error) -> str:
    """absl's flag error (one line per missing required flag) as one line."""
    missing = re.findall(r"Flag --(\w+) must have a value other than None", str(error))
    if missing:
        names = ", ".join(f"--{name}" for name in missing)
        them = "it" if len(missing) == 1 else "them"
        return f"missing {names}: give {them} (--help lists the flags)."
    detail = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return f"{detail.rstrip('.')}. Run with --helpfull to list flags."


def _load_config_file(argv: list[str]) -> None:
    """Loads --config now, so a missing or broken file is one line, not two tracebacks."""
    try:
        "seed" in FLAGS.config  # noqa: B015 - the config flag reports a failed load on first use.
    except Exception as e:  # noqa: BLE001 - whatever the user's config file raised
        _config_file_error(e, argv)


def _config_file_error(error: BaseException, argv: list[str]) -> None:
    reason = str(error.__cause__ or error).strip().splitlines() or [type(error).__name__]
    detail = reason[-1].strip()
    if isinstance(error, SyntaxError):
        detail = f"{type(error).__name__} at line {error.lineno}: {error.msg}"
    given = [a.partition("=")[2] for a in argv if a.startswith("--config=")]
    fail(f"--config={given[-1] if given else '?'} cannot be loaded: {detail}")


def check_config_kind(config: ml_collections.ConfigDict, command: str) -> None:
    """One line when a fine-tuning config is given to `train` or a pretraining one to `finetune`."""
    is_finetuning = "task" in config and "init_from" in config
    path = FLAGS["config"].serialize().partition("=")[2] if "config" in FLAGS else "the config"
    if command == "pretrain.train" and is_finetuning:
        fail(f"{path} is a fine-tuning config (it has task and init_from): run it with "
             "python -m pretrain.finetune.")  # fmt: skip
    if command == "pretrain.finetune" and not is_finetuning:
        fail(f"{path} is a pretraining config (it has no task or init_from): run it with "
             "python -m pretrain.train, or fine-tune with configs/finetune_*.py.")  # fmt: skip


def main_of(work: Callable[[], None], *, distributed: bool = False) -> Callable[[list[str]], None]:
    """The `main(argv)` of a command that takes no --config and whose work is `work()`: the
    prologue, multi-process setup when `distributed`, and user errors as one line."""

    def main(argv: list[str]) -> None:
        start(argv)
        if distributed:
            initialize_distributed()
        run_user_errors_as_one_line(work)

    return main


def run(work: Callable[[], None], *, distributed: bool = False) -> None:
    """`python -m pretrain.X` for a command without --config: absl flags, then `main_of(work)`."""
    app.run(main_of(work, distributed=distributed), flags_parser=parse_flags)


def run_user_errors_as_one_line(fn: Callable[[], None]) -> None:
    """Runs `fn`, turning a UserError into one line and exit code 2; other errors propagate."""
    if logging.get_verbosity() < logging.INFO:
        _quiet_background_echoes()
    try:
        fn()
    except UserError as e:
        fail(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)


def _quiet_background_echoes() -> None:
    """Keeps a failed async checkpoint write or read to one traceback-free error line.

    The failure reaches the main thread, and the user as one line; meanwhile orbax's worker
    threads log it with a traceback, asyncio reports the sibling reads it abandoned, and their late
    callbacks hit closed event loops. These echoes are dropped; orbax's messages stay, one line
    each. `--verbosity=0` or higher keeps everything.
    """

    def strip_orbax_traceback(record: py_logging.LogRecord) -> bool:
        if f"{os.sep}orbax{os.sep}" in record.pathname:
            record.exc_info, record.exc_text = None, None
        return True

    logging.get_absl_logger().addFilter(strip_orbax_traceback)
    py_logging.getLogger("asyncio").addFilter(
        lambda record: "exception was never retrieved" not in record.getMessage()
    )
    default_hook = sys.unraisablehook

    def unraisable(info: sys.UnraisableHookArgs) -> None:
        if not (
            isinstance(info.exc_value, RuntimeError)
            and "Event loop is closed" in str(info.exc_value)
        ):
            default_hook(info)

    sys.unraisablehook = unraisable


def _on_cluster_without_flags() -> bool:
    """True on TPU VMs and inside a multi-task `srun`, where JAX reads the cluster itself."""
    # GKE names the TPU workers in the environment; on other TPU VMs JAX asks the metadata
    # server. libtpu alone does not make a TPU VM (`pip install -e ".[tpu]"` brings it to CPUs
    # for pretrain.plan): the VM also has the chips' device files, and JAX_PLATFORMS allows TPU.
    tpu_vars = ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "CLOUD_TPU_TASK_ID")
    if any(v in os.environ for v in tpu_vars):
        return True
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if importlib.util.find_spec("libtpu") is not None and (not platforms or "tpu" in platforms):
        if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
            return True
    # JAX's SLURM detection needs the step's node list, which a batch script outside srun lacks.
    return "SLURM_STEP_NODELIST" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1


def initialize_distributed() -> None:
    """`jax.distributed.initialize` from the flags, or from the TPU/SLURM environment."""
    given = [FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id]
    if any(v is not None for v in given):
        if any(v is None for v in given):
            fail(
                "--coordinator_address, --num_processes and --process_id go together; "
                "give all three (or none on TPU VMs and SLURM)."
            )
        if not 0 <= FLAGS.process_id < FLAGS.num_processes:
            fail(
                f"--process_id={FLAGS.process_id} must be in [0, --num_processes="
                f"{FLAGS.num_processes}); number the processes 0..N-1."
            )
        if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
            # Cross-process collectives on CPU need gloo (the default has none).
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    elif _on_cluster_without_flags():
        try:
            jax.distributed.initialize()
        except ValueError as e:  # No cluster found (e.g. jax[tpu] installed off a TPU VM).
            fail(
                f"jax.distributed.initialize() found no cluster ({e}); pass "
                "--coordinator_address, --num_processes and --process_id."
            )
