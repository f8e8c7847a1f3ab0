"""Parameter trees: the name of a leaf's path, and counting parameters.

One rule for naming a parameter ('encoder/layers/0/attention/query/kernel') everywhere a message,
a checkpoint check or an optimizer mask needs it.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def path_parts(path: tuple[Any, ...]) -> tuple[str, ...]:
    """The key names of a pytree path, without NNX's internal 'value' level."""
    parts = []
    for key in path:
        name = getattr(key, "key", getattr(key, "name", getattr(key, "idx", key)))
        if name != "value":
            parts.append(str(name))
    return tuple(parts)


def path_name(path: tuple[Any, ...]) -> str:
    """'encoder/layers/0/attention/query/kernel' for a pytree path."""
    return "/".join(path_parts(path))


def named_leaves(tree: Any) -> dict[str, Any]:
    """{path_name: leaf} of a pytree (arrays, ShapeDtypeStructs or any leaves)."""
    return {path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def count_params(tree: Any) -> int:
    """Number of scalars in a parameter pytree (arrays or jax.ShapeDtypeStructs)."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
