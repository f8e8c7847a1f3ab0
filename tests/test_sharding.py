"""Mesh resolution, logical-axis rules and host-slice -> global-array assembly on 8 CPU devices."""

import logging

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from configs import default
from pretrain.models import layers
from pretrain.training import sharding

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


def _tables(*rows: int) -> nnx.State:
    """Abstract parameters: one ('vocab', 'embed') table per row count, 16 wide."""

    class Tables(nnx.Module):
        def __init__(self):
            init = layers.param_init(jax.nn.initializers.zeros, "vocab", "embed")
            self.tables = nnx.List([nnx.Param(init(jax.random.key(0), (n, 16))) for n in rows])

    return nnx.state(nnx.eval_shape(Tables), nnx.Param)


def test_indivisible_dimension_is_replicated_and_said_once(caplog):
    mesh = sharding.create_mesh(_mesh_config(1, 2, 4))  # vocab -> tensor (4), embed -> fsdp (2)
    with caplog.at_level(logging.WARNING):
        specs = sharding.state_shardings(_tables(30522, 64, 30522), mesh, RULES)
        sharding.state_shardings(_tables(30522, 64, 30522), mesh, RULES)
    odd, even, odd_again = (specs["tables"][i].get_value().spec for i in range(3))
    assert odd == odd_again == P(None, "fsdp")  # 30522 is not a multiple of 4.
    assert even == P("tensor", "fsdp")
    said = [r.getMessage() for r in caplog.records if "replicated instead" in r.getMessage()]
    assert len(said) == 2 and said[0].startswith("tables/0:") and said[1].startswith("tables/2:")


@pytest.mark.parametrize("shape", [(8, 1, 1), (4, 1, 2), (2, 2, 2), (1, 8, 1)])
def test_host_rows_assemble_the_global_batch(shape):
    mesh = sharding.create_mesh(_mesh_config(*shape))
    batch = {"input_ids": np.arange(16 * 3).reshape(16, 3).astype(np.int32)}
    rows = sharding.process_rows(mesh, RULES, 16)
    np.testing.assert_array_equal(rows, np.arange(16))  # One process holds every row.
    global_batch = sharding.host_to_global({k: v[rows] for k, v in batch.items()}, mesh, RULES, 16)
    np.testing.assert_array_equal(np.asarray(global_batch["input_ids"]), batch["input_ids"])
    dp = shape[0] * shape[1]
    assert sharding.data_parallel_size(mesh, RULES) == dp
    shard_rows = {s.data.shape[0] for s in global_batch["input_ids"].addressable_shards}
    assert shard_rows == {16 // dp}
