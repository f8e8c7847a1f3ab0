"""pretrain.plan: the training programs compiled by libtpu for small TPU slices, on this CPU.

The compile-only tests are skipped (with libtpu's reason) where the TPU compiler cannot load.
Models are cut to one layer and short rows: the TPU compiler's time, not the model, dominates.
"""

import json
import subprocess

import pytest

from configs import modernbert_smoke, smoke
from data_pipeline.errors import ConfigError
from pretrain.compute import chips
from pretrain.perf import collectives, compiled, planner

from .cli_utils import run_module

# What a compile-only test overrides in configs/smoke.py and configs/modernbert_smoke.py.
_SMALL = {"num_hidden_layers": 1, "max_position_embeddings": 64}
_SMALL_DATA = {"vocab_size": 512, "max_seq_length": 64}


def _config(module, *, data=1, fsdp=4, batch=16, **model):
    c = module.get_config()
    c.mesh.data, c.mesh.fsdp = data, fsdp
    c.global_batch_size = c.eval_batch_size = batch
    c.data.update(_SMALL_DATA)
    c.data.max_predictions_per_seq = 20 if module is modernbert_smoke else 10
    c.model.update({**_SMALL, **model})
    return c


def _compiler_or_skip(topology: str) -> None:
    try:
        compiled.compile_only_devices(chips.parse_topology(topology))
    except compiled.CompilerUnavailableError as e:
        pytest.skip(f"no compiler for {topology} here: {e}")


@pytest.fixture(scope="module")
def tpu_compiler():
    _compiler_or_skip("v5e-4")


@pytest.fixture(scope="module")
def smoke_plans(tpu_compiler):
    """Train-step records of the small BERT on v5e-4 with fsdp=1 (data=4) and fsdp=4."""
    return {
        fsdp: planner.plan(_config(smoke, data=4 // fsdp, fsdp=fsdp), "v5e-4", with_eval=False)[-1]
        for fsdp in (1, 4)
    }


def test_topology_names_count_tensorcores_on_v4_and_v5p_and_chips_elsewhere():
    assert chips.parse_topology("v5p-8").topology_name == "v5p:2x2x1"  # 8 TensorCores, 4 chips.
    assert chips.parse_topology("v4-32").topology_name == "v4:2x2x4"
    assert chips.parse_topology("v5e-16").topology_name == "v5e:4x4"
    assert chips.parse_topology("v6e-64", num_slices=2).chips == 128
    for bad in ("v3-8", "v5p-6", "v5p-2", "tpu", "v6e-12", "h100-12", "h100-3", "a100-8"):
        with pytest.raises(ConfigError, match="--topology"):
            chips.parse_topology(bad)
    # GPUs: hosts of 8, as the CUDA plugin names them (partitions x hosts x GPUs per host).
    assert chips.parse_topology("h100-8").topology_name == "1x1x8"
    assert chips.parse_topology("h200-32").topology_name == "1x4x8"
    assert chips.parse_topology("h100-2").topology_name == "1x1x2"
    with pytest.raises(ConfigError, match="--num_slices"):
        chips.parse_topology("h100-16", num_slices=2)


def test_child_processes_are_not_taken_for_a_tpu_vm_after_a_plan(smoke_plans):
    # libtpu, finding no TPU VM, writes warnings as the worker id and accelerator type into the
    # C environment; a command started from this process would then wait for a TPU cluster.
    env = subprocess.run(["env"], capture_output=True, text=True, check=True).stdout
    names = {line.partition("=")[0] for line in env.splitlines()}
    assert not names & {"CLOUD_TPU_TASK_ID", "TPU_WORKER_ID", "CLOUD_TPU_ACCELERATOR_TYPE"}


def test_without_libtpu_the_error_says_how_to_install_it(monkeypatch):
    real = compiled.importlib.util.find_spec
    monkeypatch.setattr(
        compiled.importlib.util, "find_spec", lambda name: None if name == "libtpu" else real(name)
    )
    with pytest.raises(compiled.CompilerUnavailableError, match=r'pip install -e "\.\[tpu\]"'):
        compiled.compile_only_devices(chips.parse_topology("v5e-4"))


_HLO = """HloModule jit_step

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %x = f32[8]{0} get-tuple-element(%p), index=1
  %ar = f32[8]{0} all-reduce(%x), replica_groups=mesh['axis_0'=2,'axis_1'=2] {'axis_1'}, to_apply=%add
}

ENTRY %main (a: f32[16,4]) -> f32[64,4] {
  %a = f32[16,4]{1,0} parameter(0)
  %ags = (f32[16,4]{1,0}, f32[64,4]{1,0}) all-gather-start(%a), replica_groups=[1,4]<=[4], dimensions={0}
  %agd = f32[64,4]{1,0} all-gather-done(%ags)
  %w = (s32[], f32[8]) while(%t), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  ROOT %rs = bf16[4,4]{1,0} reduce-scatter(%a), replica_groups={{0,1},{2,3}}, dimensions={0}
}
"""  # noqa: E501 - HLO lines as the compiler prints them


def test_collectives_are_read_from_the_hlo_with_loop_counts_and_slices():
    # Partitions 0, 1 in slice 0 and 2, 3 in slice 1.
    totals = collectives.collectives(_HLO, [0, 0, 1, 1])
    assert (totals["all-reduce"].count, totals["all-reduce"].bytes) == (3, 3 * 32)  # In the loop.
    assert totals["all-reduce"].dcn_traffic_bytes == 0  # Groups {0, 1}, {2, 3}: within slices.
    gather = totals["all-gather"]  # Counted once, at its -done, its groups from the -start.
    assert (gather.count, gather.bytes) == (1, 64 * 4 * 4)
    assert gather.dcn_traffic_bytes == pytest.approx(3 / 4 * 1024) and gather.traffic_bytes == 0
    assert (totals["reduce-scatter"].bytes, totals["reduce-scatter"].traffic_bytes) == (32, 32)
    assert totals["all-to-all"].count == totals["collective-permute"].count == 0


def test_mesh_groups_over_permuted_devices_are_read_in_the_devices_order():
    # GPU programs name groups on a mesh whose devices are an iota transposed: here [[0, 2],
    # [1, 3]], so groups along axis_0 are {0, 1} and {2, 3}, each within one slice (or host).
    hlo = (
        "ENTRY %main (a: f32[8]) -> f32[8] {\n"
        "  %ar = f32[8]{0} all-reduce(%a), replica_groups=mesh['axis_0'=2,'axis_1'=2], "
        "device_ids=([2,2]T(1,0)) {'axis_0'}, use_global_device_ids=true, to_apply=%add\n}\n"
    )
    totals = collectives.collectives(hlo, [0, 0, 1, 1])["all-reduce"]
    assert totals.traffic_bytes == 32 and totals.dcn_traffic_bytes == 0  # 2 (n - 1) / n x 32.
    natural = hlo.replace(", device_ids=([2,2]T(1,0))", "")  # Groups {0, 2}, {1, 3}: across.
    assert collectives.collectives(natural, [0, 0, 1, 1])["all-reduce"].dcn_traffic_bytes == 32


_TWO_SLICES = """HloModule jit_step, num_partitions=2

ENTRY %main (a: f32[16]) -> f32[16] {
  %a = f32[16]{0} parameter(0)
  %ar = f32[16]{0} all-reduce(%a), replica_groups={{0,1}}, to_apply=%add
  %send = (f32[16]{0}, u32[], token[]) send(%ar, %t), frontend_attributes={_xla_megascale_transfer_type="ALL_REDUCE"}
}
"""  # noqa: E501


def test_a_program_for_two_slices_sends_across_them_over_dcn():
    # One slice's program (2 partitions) of a 4-chip, 2-slice mesh: its all-reduce stays in the
    # slice; the megascale send is the cross-slice part.
    totals = collectives.collectives(_TWO_SLICES, [0, 0, 1, 1])["all-reduce"]
    assert (totals.count, totals.bytes) == (2, 128)
    assert (totals.traffic_bytes, totals.dcn_traffic_bytes) == (64, 64)


def test_train_step_flops_agree_with_the_formula_and_the_record_has_the_contract(smoke_plans):
    record = smoke_plans[4]
    assert set(planner.RECORD_KEYS) <= set(record)
    assert record["fits"] and record["chips"] == 4 and record["per_chip_batch"] == 4
    assert record["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    # The compiler counts what the formula leaves out (the embedding lookups, which the TPU
    # computes as one-hot matmuls, softmax, LayerNorm, the loss, the optimizer): at this toy
    # width (H = 128, S = 64) a third more (measured 1.35), at BERT-base's about a tenth. A
    # program that computed a replicated batch on every chip counted 1.48 here.
    assert 1.0 < record["flops_ratio"] < 1.45
    assert 0 < record["estimated_mfu"] < 1 and record["estimated_step_time_s"] > 0
    assert record["collective_bytes"]["all-gather"] > 0  # FSDP gathers the parameters.


def test_fsdp_shards_parameters_and_optimizer_state(smoke_plans):
    replicated, sharded = smoke_plans[1], smoke_plans[4]
    # LayerNorm scales and a few biases stay replicated: nearly, not exactly, 4x.
    assert 3.5 < replicated["state_bytes"] / sharded["state_bytes"] <= 4
    assert 3.0 < replicated["argument_bytes"] / sharded["argument_bytes"] <= 4
    assert replicated["collective_bytes"]["all-gather"] < sharded["collective_bytes"]["all-gather"]
    # What is all-reduced is at most the float32 gradients (state = parameters + 2 moments), not
    # activations: the layers' activations stay split over the batch (`layers.py`).
    gradient_bytes = sharded["state_bytes"] * 4 / 3
    assert sharded["collective_bytes"]["all-reduce"] <= 1.1 * gradient_bytes


def test_parameters_beyond_hbm_are_reported_without_compiling(tpu_compiler):
    # Two layers of width 32k: 26 B parameters, 77 GB per chip with their moments at fsdp=4.
    huge = _config(smoke, num_hidden_layers=2, hidden_size=32768, intermediate_size=131072)
    (record,) = planner.plan(huge, "v5e-4")
    assert record["fits"] is False and record["flops_per_chip"] is None
    assert record["reason"].startswith("parameters and optimizer state alone")
    seen = []  # What a long sweep reports as it goes.
    result = planner.sweep(
        huge, "v5e-4", remat_policies=("none",), tensor_sizes=(1,), on_point=seen.append
    )
    assert result["best"] is None and "alone need" in result["reason"]
    assert seen == result["points"] and len(seen) == 3  # Meshes 4x1, 2x2, 1x4: none compiled.


def test_sweep_of_modernbert_recommends_a_point_that_fits_with_its_command(tpu_compiler):
    # Two layers at 64 tokens: layer 1 attends within its window of 64 (+-32), so the compiled
    # program has the local mask and the packed rows' document mask, not only global attention.
    c = _config(modernbert_smoke, data=1, fsdp=1, num_hidden_layers=2)
    seen = []
    result = planner.sweep(
        c, "v5e-1", per_chip_batches=(8,), remat_policies=("dots",), on_point=seen.append
    )
    (point,) = result["points"]
    assert seen == [point]
    assert point["fits"] and point["program"] == "train_step" and result["best"] == point
    assert 1.0 < point["flops_ratio"] < 1.45
    line = planner.train_command("configs/modernbert_smoke.py", result["best"])
    assert "--config.model.remat_policy=dots" in line and "--config.global_batch_size=8" in line


@pytest.fixture(scope="module")
def gpu_compiler():
    _compiler_or_skip("h100-8")


def test_two_h100_hosts_reduce_scatter_in_each_and_send_only_gradients_between(gpu_compiler):
    # Two hosts of 8: FSDP within a host (NVLink), data parallelism across (the network).
    (record,) = planner.plan(_config(smoke, data=2, fsdp=8), "h100-16", with_eval=False)
    assert record["compiled"] and record["fits"] and record["chips"] == 16
    assert record["platform"] == "cuda" and record["compiler_topology"] == "1x2x8"
    # XLA's GPU compiler counts no FLOPs: the floors come from the model's, with no HBM floor.
    assert record["flops_per_chip"] is None and record["estimate"]["floors_from"] == "model FLOPs"
    assert record["estimate"]["memory_s"] == 0 and 0 < record["estimated_mfu"] < 1
    # The arguments are nearly all the state's shard (an eighth per GPU, fsdp=8), as computed
    # from the shardings alone.
    assert record["state_bytes"] <= record["argument_bytes"] < 1.1 * record["state_bytes"]
    traffic = record["collectives"]
    # The gradients are reduce-scattered to the FSDP shards within a host; only the shards'
    # all-reduce over `data` crosses hosts. The parameters' all-gathers stay within a host but
    # for the gradient of the masked-position gather at this toy size (5%; none at BERT-mini).
    assert traffic["reduce-scatter"]["count"] > 0
    assert traffic["reduce-scatter"]["dcn_traffic_bytes"] == 0
    assert traffic["all-reduce"]["dcn_traffic_bytes"] > 0
    assert traffic["all-gather"]["dcn_traffic_bytes"] < 0.1 * traffic["all-gather"]["traffic_bytes"]


def test_a_model_beyond_an_h100s_memory_does_not_fit(gpu_compiler):
    # 26 B parameters: 39 GB per GPU with their moments at fsdp=8; at fsdp=2, 156 GB.
    huge = _config(smoke, data=4, fsdp=2, num_hidden_layers=2, hidden_size=32768,
                   intermediate_size=131072)  # fmt: skip
    (record,) = planner.plan(huge, "h100-8")
    assert record["fits"] is False and "alone need" in record["reason"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--topology=v9-8"], "not a TPU slice or GPU name"),
        (["--topology=v5e-4", "--config.mesh.data=3"], r"data\*fsdp\*tensor = 3"),
        (["--topology=v5e-4", "--config.global_batch_size=6"], "not divisible"),
    ],
)
def test_bad_inputs_fail_before_compiling(tpu_compiler, overrides, message):
    c = smoke.get_config()
    flags = dict(o.removeprefix("--").split("=") for o in overrides)
    if "config.mesh.data" in flags:
        c.mesh.data = int(flags["config.mesh.data"])
    if "config.global_batch_size" in flags:
        c.global_batch_size = int(flags["config.global_batch_size"])
    with pytest.raises(ConfigError, match=message):
        planner.plan(c, flags["topology"])


@pytest.mark.slow
def test_command_line_prints_the_contract_last_and_bad_input_as_one_line(tpu_compiler):
    # A model whose state alone exceeds HBM: the command's table and its JSON contract without
    # paying for a compile (the compiled records are the library tests' above).
    huge = {"num_hidden_layers": 2, "hidden_size": 32768, "intermediate_size": 131072}
    args = ["--config=configs/smoke.py", "--topology=v5e-4", "--eval=false"]
    args += [f"--config.model.{k}={v}" for k, v in huge.items()]
    result = run_module("pretrain.plan", args, timeout=600)
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(planner.RECORD_KEYS) <= set(last) and last["topology"] == "v5e-4"
    assert last["fits"] is False and last["chips"] == 4
    assert "memory per chip" in result.stdout and "DOES NOT FIT" in result.stdout

    # The sweep of the same: each point on stderr as it is made, then the reason on stdout.
    sweep = ["--sweep", "--sweep_tensor=1", "--sweep_remat=none"]
    result = run_module("pretrain.plan", args + sweep, timeout=600)
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last == {"fits": False, "reason": last["reason"], "sweep_points": 3}
    assert "alone need" in last["reason"] and "No point fits" in result.stdout
    rows = [line for line in result.stderr.splitlines() if "parameters and optimizer" in line]
    assert len(rows) == 3 and all(" no " in row for row in rows)

    bad = run_module(
        "pretrain.plan", ["--config=configs/smoke.py", "--topology=v5p-6"], check=False
    )
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert bad.returncode == 2 and len(errors) == 1 and "TensorCores" in errors[0]
    assert bad.stdout.strip() == ""
