"""Several processes on 127.0.0.1, as the hosts of a pod: batches, losses, metrics, workdirs.

The processes are real: launch/local.sh starts them and `jax.distributed` joins them (gloo
collectives on CPU). Models are tiny, so startup and compiling are what take the time. The
helpers here (`train`, `losses`) are shared with tests/test_topology_change.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import tensorboardX
from etils import epath
from fsspec.implementations.memory import MemoryFileSystem

from configs import default, smoke
from data_pipeline import loader
from data_pipeline.vocab.unigram import SentencePieceTokenizer as Tokenizer
from pretrain.training import metrics, sharding, workdir
from tests.cli_utils import REPO, cli_env

LAUNCH = REPO / "launch"
TIMEOUT_S = 300  # Per CLI run; a hang (e.g. a collective waiting for a dead peer) fails loudly.
# Same batches, same initial parameters: losses differ across meshes and process counts only by
# float32 reduction order (measured up to ~1e-6 here; see docs/running_on_a_pod.md).
LOSS_TOLERANCE = 2e-5

# A one-layer BERT on the session's synthetic corpus. The constant learning rate after warmup
# makes the compiled step independent of num_train_steps, so runs of any length share the
# persistent compilation cache (conftest.py).
TINY_FLAGS = (
    "--config=configs/smoke.py",
    "--config.model.num_hidden_layers=1",
    "--config.model.hidden_size=32",
    "--config.model.num_attention_heads=2",
    "--config.model.intermediate_size=64",
    "--config.model.max_position_embeddings=32",
    "--config.model.hidden_dropout_prob=0",
    "--config.model.attention_probs_dropout_prob=0",
    "--config.data.max_seq_length=32",
    "--config.data.max_predictions_per_seq=5",
    "--config.data.eval_files=",
    "--config.global_batch_size=8",
    "--config.dtype=float32",
    "--config.log_every_steps=1",
    "--config.optimizer.warmup_steps=2",
    "--config.optimizer.decay=constant",
)


def data_flags(pipeline_corpus, pipeline_tokenizer) -> tuple[str, ...]:
    """Train files and tokenizer: conftest's synthetic corpus and its 256-piece tokenizer."""
    return (
        f"--config.data.train_files={pipeline_corpus[0]}",
        f"--config.data.tokenizer_model={pipeline_tokenizer.model_path}",
    )


def start_training(
    run_dir: Path,
    flags: tuple[str, ...],
    *,
    devices: int,
    processes: int,
    log_dir: Path,
    python: str = sys.executable,
) -> subprocess.Popen:
    """Starts `pretrain.train` as `processes` processes with `devices` CPU devices each.

    One process runs the CLI directly (no jax.distributed); several go through launch/local.sh,
    with `python` as its $PYTHON. Process I writes its output to log_dir/process_I.log.
    """
    env = cli_env(devices)
    args = (*TINY_FLAGS, f"--workdir={run_dir}", *flags)
    log_dir.mkdir(parents=True, exist_ok=True)
    if processes == 1:
        with open(log_dir / "process_0.log", "w") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "pretrain.train", *args],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
    del env["XLA_FLAGS"]  # local.sh sets the device count of each process.
    env.update(LOCAL_DEVICES=str(devices), LOG_DIR=str(log_dir), PYTHON=python)
    return subprocess.Popen(
        ["bash", str(LAUNCH / "local.sh"), str(processes), *args], cwd=REPO, env=env
    )


def finish(proc: subprocess.Popen, log_dir: Path) -> None:
    """Waits for a run; on failure or timeout, fails with the tail of every process's log."""
    try:
        code = proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = "timeout"
    if code != 0:
        tails = "\n".join(
            f"--- {p.name}:\n" + "\n".join(p.read_text(errors="replace").splitlines()[-25:])
            for p in sorted(log_dir.glob("process_*.log"))
        )
        pytest.fail(f"training exited with {code}:\n{tails}")


def train(
    run_dir: Path,
    flags: tuple[str, ...],
    *,
    devices: int,
    processes: int = 1,
    python: str = sys.executable,
) -> Path:
    """Runs training to completion (exit 0 required); returns the folder of its logs."""
    log_dir = Path(tempfile.mkdtemp(prefix=f"{run_dir.name}-logs-", dir=run_dir.parent))
    proc = start_training(
        run_dir, flags, devices=devices, processes=processes, log_dir=log_dir, python=python
    )
    finish(proc, log_dir)
    return log_dir


def metric_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> dict[int, float]:
    """step -> loss of the train rows of metrics.jsonl; fails if a step was written twice."""
    rows = [r for r in metric_rows(run_dir) if "loss" in r]
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"steps written more than once: {steps}"
    return {r["step"]: r["loss"] for r in rows}


def max_loss_diff(a: dict[int, float], b: dict[int, float]) -> float:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    return max(abs(a[s] - b[s]) for s in a)


# --- launch scripts -----------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["local.sh", "slurm.sbatch", "tpu_vm.sh"])
def test_launch_script_is_valid_bash(script):
    path = LAUNCH / script
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    header = path.read_text().splitlines()[:3]
    assert header[0] == "#!/usr/bin/env bash" and header[1].startswith("#"), header


def _fake_python(tmp_path: Path, body: str) -> Path:
    """An executable standing in for `python -m pretrain.train` (local.sh's $PYTHON)."""
    path = tmp_path / "fake_python"
    path.write_text(
        f"#!/usr/bin/env bash\nfor a; do [[ $a == --process_id=* ]] && id=${{a#*=}}; done\n{body}\n"
    )
    path.chmod(0o755)
    return path


@pytest.mark.slow
def test_local_sh_fails_fast_when_one_process_fails(tmp_path):
    # Process 1 fails at once; the others would wait for it forever in a real collective.
    fake = _fake_python(tmp_path, "[[ $id == 1 ]] && exit 3\nexec sleep 60")
    result = subprocess.run(
        ["bash", str(LAUNCH / "local.sh"), "3", "--x=1"],
        env={**os.environ, "PYTHON": str(fake), "PORT": "12345"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 3, result.stderr


@pytest.mark.slow
def test_local_sh_forwards_sigterm_and_arguments(tmp_path):
    # Each fake process records its flags, then exits 0 on SIGTERM (as pretrain.train does).
    fake = _fake_python(
        tmp_path,
        f'echo "$@" > {tmp_path}/args_$id\n'
        f"trap 'touch {tmp_path}/term_$id; exit 0' TERM\n"
        "for _ in $(seq 600); do sleep 0.1; done\nexit 1",
    )
    proc = subprocess.Popen(
        ["bash", str(LAUNCH / "local.sh"), "2", "--workdir=/w", "--config.seed=3"],
        env={**os.environ, "PYTHON": str(fake), "PORT": "12345"},
    )
    arg_files = [tmp_path / f"args_{i}" for i in range(2)]
    for _ in range(300):  # Until both have started.
        if all(p.exists() for p in arg_files):
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    for i in range(2):
        assert (tmp_path / f"term_{i}").exists()
        assert (tmp_path / f"args_{i}").read_text().split() == [
            "-m",
            "pretrain.train",
            "--workdir=/w",
            "--config.seed=3",
            "--coordinator_address=127.0.0.1:12345",
            "--num_processes=2",
            f"--process_id={i}",
        ]


# --- two processes ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows_worker(process_id: int, port: int, corpus: str, tokenizer: str, out: str) -> None:
    """One of two processes: loads only its rows of global batch 3 and assembles the global array.

    Writes its rows and the whole global batch (gathered from both processes) to `out`.
    """
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    from jax.experimental import multihost_utils

    config = smoke.get_config()
    config.data.train_files, config.data.eval_files = corpus, ""
    config.data.max_seq_length, config.data.max_predictions_per_seq = 32, 5
    config.mesh.tensor = 2  # (data=2, tensor=2): each process's two devices hold the same rows.
    train_loader, _ = loader.build_datasets(
        config.data, Tokenizer(tokenizer), seed=0, global_batch_size=8, eval_batch_size=8,
        cache_dir=str(Path(out).parent / "cache"),  # Shared: the two processes take turns.
    )  # fmt: skip
    mesh = sharding.create_mesh(config.mesh)
    rules = tuple(config.mesh.logical_axis_rules)
    rows = sharding.process_rows(mesh, rules, 8)
    batch = sharding.host_to_global(train_loader.batch(3, rows=rows), mesh, rules, 8)
    gathered = {k: multihost_utils.process_allgather(v, tiled=True) for k, v in batch.items()}
    np.savez(out, rows=rows, **gathered)


@pytest.mark.slow
def test_each_process_loads_its_rows_and_together_they_make_the_global_batch(
    tmp_path, pipeline_corpus, pipeline_tokenizer
):
    port = _free_port()
    env = cli_env(devices=2)
    outs = [tmp_path / f"process_{i}.npz" for i in range(2)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                str(i),
                str(port),
                str(pipeline_corpus[0]),
                pipeline_tokenizer.model_path,
                str(outs[i]),
            ],
            cwd=REPO,
            env=env,
        )
        for i in range(2)
    ]
    assert [p.wait(timeout=TIMEOUT_S) for p in procs] == [0, 0]
    results = [dict(np.load(out)) for out in outs]
    rows = [r.pop("rows") for r in results]
    assert set(rows[0]).isdisjoint(rows[1])
    assert sorted([*rows[0], *rows[1]]) == list(range(8))

    # The global batch both processes see equals the whole batch built by one process.
    config = smoke.get_config()
    config.data.train_files, config.data.eval_files = str(pipeline_corpus[0]), ""
    config.data.max_seq_length, config.data.max_predictions_per_seq = 32, 5
    full, _ = loader.build_datasets(
        config.data,
        Tokenizer(pipeline_tokenizer.model_path),
        seed=0,
        global_batch_size=8,
        eval_batch_size=8,
        cache_dir=str(tmp_path / "one-process-cache"),
    )
    expected = full.batch(3)
    for result in results:
        assert result.keys() == expected.keys()
        for name, value in expected.items():
            np.testing.assert_array_equal(result[name], value, err_msg=name)


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path, pipeline_corpus, pipeline_tokenizer):
    flags = (*data_flags(pipeline_corpus, pipeline_tokenizer), "--config.num_train_steps=8")
    one = tmp_path / "one_process"
    two = tmp_path / "two_processes"
    train(one, flags, devices=4)
    logs = train(two, flags, devices=2, processes=2)

    reference, distributed = losses(one), losses(two)
    assert sorted(distributed) == list(range(1, 9))  # Written once: by process 0 only.
    assert max_loss_diff(reference, distributed) < LOSS_TOLERANCE, (reference, distributed)
    assert len(list((two / "tensorboard").iterdir())) == 1
    assert (two / "checkpoints" / "8").is_dir()
    # Both processes ran to the end: process 1 took part in every step and in the final save.
    assert "Traceback" not in (logs / "process_1.log").read_text()


# --- a workdir on an object store ---------------------------------------------------------------


def _remote_worker(tokenizer_model: str, tmp: str) -> None:
    """In a fresh process: a gs:// workdir (in memory; like GCS it cannot append) for metrics and
    the tokenizer. Fresh, so fsspec's registry and epath's filesystem cache need no undoing."""
    import fsspec

    class FakeGCS(MemoryFileSystem):
        protocol = ("gs", "gcs")
        store: dict = {}
        pseudo_dirs = [""]

        def _open(self, path, mode="rb", **kwargs):
            if "a" in mode:
                raise NotImplementedError("objects cannot be appended to")
            return super()._open(path, mode, **kwargs)

    class FakeSummaryWriter:  # tensorboardX needs google-cloud-storage for gs://.
        def __init__(self, logdir):
            self.logdir = logdir

        def add_scalar(self, *args):
            pass

        flush = close = lambda self: None

    for protocol in FakeGCS.protocol:
        fsspec.register_implementation(protocol, FakeGCS, clobber=True)
    tensorboardX.SummaryWriter = FakeSummaryWriter
    tempfile.tempdir = tmp  # Where local mirrors go.
    remote = epath.Path("gs://bucket/run")

    # Metrics: a resumed writer keeps the rows of the first one.
    first = metrics.MetricsWriter(remote)
    first.write(1, {"loss": 2.0})
    first.write(2, {"loss": 1.5})
    first.close()
    resumed = metrics.MetricsWriter(remote)
    resumed.write(3, {"loss": 1.0})
    rows = [json.loads(r) for r in (remote / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 2.0), (2, 1.5), (3, 1.0)]

    # Tokenizer: made locally, stored in the workdir, and on a restart read back from it.
    data_config = default.get_config().data
    data_config.tokenizer_model = tokenizer_model
    made = workdir.prepare_tokenizer(data_config, remote)
    assert (remote / "tokenizer.model").read_bytes() == Path(tokenizer_model).read_bytes()
    local = workdir.local_dir(remote)
    assert workdir.is_local(local) and local.parent == epath.Path(tmp)
    (local / "tokenizer.model").unlink()
    restarted = workdir.prepare_tokenizer(data_config, remote)
    assert restarted.fingerprint == made.fingerprint
    assert workdir.data_cache_dir(remote).startswith(str(local))
    print("remote workdir ok")


def test_remote_workdir_goes_through_epath(tmp_path, pipeline_tokenizer):
    """Metrics and the tokenizer of a gs:// workdir, through epath (see `_remote_worker`)."""
    worker = [sys.executable, __file__, "remote"]
    proc = subprocess.run(
        [*worker, pipeline_tokenizer.model_path, str(tmp_path)],
        cwd=REPO, env=cli_env(1), capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    assert proc.returncode == 0 and "remote workdir ok" in proc.stdout, proc.stderr[-3000:]


if __name__ == "__main__":  # A worker of the process-rows or the remote-workdir test.
    if sys.argv[1] == "remote":
        _remote_worker(*sys.argv[2:4])
    else:
        _rows_worker(int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:6])
