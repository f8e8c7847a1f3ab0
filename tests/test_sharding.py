"""Mesh resolution, logical-axis rules and host-slice -> global-array assembly on 8 CPU devices."""

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import default
from pretrain import sharding

RULES = tuple(default.get_config().mesh.logical_axis_rules)


def _mesh_config(data, fsdp, tensor):
    return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor})


def test_minus_one_fills_the_remaining_devices():
    assert sharding.mesh_shape(_mesh_config(-1, 1, 1), 8) == (8, 1, 1)
    assert sharding.mesh_shape(_mesh_config(2, -1, 2), 8) == (2, 2, 2)


@pytest.mark.parametrize(
    "sizes, message",
    [
        ((3, 1, 1), "data\\*fsdp\\*tensor = 3 but there are 8"),
        ((-1, -1, 1), "only one"),
        ((-1, 3, 1), "cannot be split"),
        ((0, 1, 1), "positive"),
    ],
)
def test_bad_mesh_shapes_are_clear_errors(sizes, message):
    with pytest.raises(ValueError, match=message):
        sharding.mesh_shape(_mesh_config(*sizes), 8)


def test_logical_rules_map_to_mesh_axes():
    assert sharding.logical_to_mesh_spec(("embed", "mlp"), RULES) == P("fsdp", "tensor")
    assert sharding.logical_to_mesh_spec(("vocab", "embed"), RULES) == P("tensor", "fsdp")
    assert sharding.logical_to_mesh_spec(("embed", "heads", "kv"), RULES) == P(
        "fsdp", "tensor", None
    )
    assert sharding.logical_to_mesh_spec(("batch",), RULES) == P(("data", "fsdp"))
    # A mesh axis is used once per array: the second 'embed' stays replicated.
    assert sharding.logical_to_mesh_spec(("embed", "embed"), RULES) == P("fsdp", None)


def test_unknown_logical_axis_names_the_rule_to_add():
    with pytest.raises(ValueError, match="'nonsense' has no entry"):
        sharding.logical_to_mesh_spec(("nonsense",), RULES)


def test_indivisible_dimension_is_replicated():
    mesh = sharding.create_mesh(_mesh_config(1, 1, 8))
    spec = sharding._fit_spec_to_shape(P("tensor", None), (30522, 16), mesh)
    assert spec == P(None, None)  # 30522 is not a multiple of 8.
    assert sharding._fit_spec_to_shape(P("tensor", None), (64, 16), mesh) == P("tensor", None)


@pytest.mark.parametrize("shape", [(8, 1, 1), (4, 1, 2), (2, 2, 2), (1, 8, 1)])
def test_host_rows_assemble_the_global_batch(shape):
    mesh = sharding.create_mesh(_mesh_config(*shape))
    batch = {"input_ids": np.arange(16 * 3).reshape(16, 3).astype(np.int32)}
    rows = sharding.process_rows(mesh, RULES, 16)
    np.testing.assert_array_equal(rows, np.arange(16))  # One process holds every row.
    global_batch = sharding.host_to_global(
        {k: v[rows] for k, v in batch.items()}, mesh, RULES, rows, 16
    )
    np.testing.assert_array_equal(np.asarray(global_batch["input_ids"]), batch["input_ids"])
    dp = shape[0] * shape[1]
    assert sharding.data_parallel_size(mesh, RULES) == dp
    shard_rows = {s.data.shape[0] for s in global_batch["input_ids"].addressable_shards}
    assert shard_rows == {16 // dp}


def test_eight_devices_are_simulated():
    assert jax.device_count() == 8
