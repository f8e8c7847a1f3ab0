"""The attention mask rule and every attention kernel, behind one `attend()`.

The rule: query i may see key j when j is a real token of i's document (packed rows) and, in a
windowed layer, |i - j| <= window. Every kernel below applies exactly this rule; the parity suite
(`tests/test_attention.py`) checks each against the dense einsum reference. The kernels:

    einsum  dense [B, N, S, S] scores, float32 softmax, attention dropout: the reference
    xla     jax.nn.dot_product_attention; windowed layers in blocks, O(S * window) memory
    cudnn   padding only: cuDNN's fused kernel by sequence lengths; documents as a dense bias
            (jax's cuDNN call has no bidirectional window, so windows take the xla blocks)
    splash  TPU Splash attention: documents and padding as segment ids, windows as a LocalMask
    pallas_gpu  Pallas's GPU (Triton) flash kernel: documents and padding as segment ids;
            windowed layers take the xla blocks
The Pallas kernels run per shard under shard_map, and in Pallas interpret mode elsewhere than
their own platform (slow, but the same numbers: how the parity suite runs them on CPU).

Shape letters: B batch, S sequence, N heads, D head dim; C a block of queries in the windowed
path, K = 3C its keys.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental.pallas.ops.gpu import attention as gpu_attention
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec as P

from data_pipeline.errors import ConfigError
from pretrain.models.config import EncoderConfig

# Padding's segment id in the kernels that take segment ids: never a document's (those are >= 0).
_PADDING_SEGMENT = -1
# The mesh the Pallas kernels run per shard of (`kernel_mesh`); None: jax's context mesh.
_KERNEL_MESH: contextvars.ContextVar = contextvars.ContextVar("kernel_mesh", default=None)


@flax.struct.dataclass
class AttentionMask:
    """Which keys each query may attend to: real tokens, of the same document (packed rows).

    A sliding window, when a layer has one, is added by `allowed`.
    """

    input_mask: jax.Array  # [B, S] int: 1 for real tokens, 0 for padding.
    document_ids: jax.Array | None = None  # [B, S] int >= 0: packed rows' document of each token.

    def allowed(self, window: int | None = None) -> jax.Array:
        """bool [B, 1, 1, S] (padding only) or [B, 1, S, S]: key j is visible from query i."""
        keys = self.input_mask.astype(jnp.bool_)[:, None, None, :]  # [B, 1, 1, S]
        if self.document_ids is None and window is None:
            return keys
        seq = self.input_mask.shape[1]
        allowed = jnp.broadcast_to(keys, (keys.shape[0], 1, seq, seq))
        if self.document_ids is not None:
            docs = self.document_ids
            allowed = allowed & (docs[:, None, :, None] == docs[:, None, None, :])
        if window is not None:
            offset = jnp.arange(seq)[:, None] - jnp.arange(seq)[None, :]
            allowed = allowed & (jnp.abs(offset) <= window)[None, None]
        return allowed

    def segment_ids(self) -> jax.Array:
        """int32 [B, S]: each real token's document (0 without documents), padding its own id.

        Equal ids see each other, so padding queries see padding keys: every query sees at least
        itself and no softmax row is empty. Real queries never see padding, as in `allowed`.
        """
        docs = jnp.zeros_like(self.input_mask) if self.document_ids is None else self.document_ids
        real = self.input_mask.astype(jnp.bool_)
        return jnp.where(real, docs, _PADDING_SEGMENT).astype(jnp.int32)


def attend(
    cfg: EncoderConfig,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: AttentionMask,
    dropout: nnx.Dropout,
    *,
    deterministic: bool,
    rngs: Any,
    window: int | None = None,
) -> jax.Array:
    """Softmax(q k^T / sqrt(D)) v over the keys `mask` (and `window`) allow: [B, S, N, D] ->
    [B, S, N, D]. Outputs at padding queries are finite but unspecified (nothing reads them).

    `cfg.attention_impl` picks the kernel; with attention dropout active only the einsum path
    can apply it, so it runs whatever the setting.
    """
    impl = cfg.attention_impl
    dropout_active = not deterministic and cfg.attention_probs_dropout_prob > 0
    if impl == "einsum" or dropout_active:
        return _einsum(cfg, q, k, v, mask.allowed(window), dropout, deterministic, rngs)
    if impl == "splash":
        return _splash(cfg, q, k, v, mask, window)
    if impl == "pallas_gpu" and window is None:
        return _pallas_gpu(q, k, v, mask)
    if window is not None and 3 * _window_block(window) < q.shape[1]:
        return _windowed(q, k, v, mask, window)
    if impl == "cudnn" and mask.document_ids is None and window is None:
        # BERT padding is a suffix. A fully padded row (eval padding) keeps one key so its
        # output stays finite.
        lengths = jnp.maximum(jnp.sum(mask.input_mask, axis=-1, dtype=jnp.int32), 1)  # [B]
        return jax.nn.dot_product_attention(
            q, k, v, key_value_seq_lengths=lengths, implementation="cudnn"
        )
    # The XLA path computes scores in float32 and the softmax in float32 for bf16 inputs.
    implementation = "cudnn" if impl == "cudnn" else "xla"
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask.allowed(window), implementation=implementation
    )


def _einsum(cfg, q, k, v, allowed, dropout, deterministic, rngs) -> jax.Array:
    """Reference attention with the softmax in float32 and dropout on the probabilities."""
    scores = jnp.einsum("btnd,bsnd->bnts", q, k, preferred_element_type=jnp.float32)
    scores *= 1.0 / np.sqrt(cfg.head_dim)  # [B, N, S, S]
    # A large finite negative (not -inf) keeps fully padded rows finite (uniform weights).
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = dropout(probs, deterministic=deterministic, rngs=rngs)
    return jnp.einsum("bnts,bsnd->btnd", probs.astype(cfg.dtype), v)  # [B, S, N, D]


def _window_block(window: int) -> int:
    """Query block C of the windowed path: >= window (so a block's keys lie in its own and the two
    neighbouring blocks) and a multiple of 8 for the matmul tiles."""
    return max(8, -(-window // 8) * 8)


def _windowed(q, k, v, mask: AttentionMask, window: int) -> jax.Array:
    """Attention within |i - j| <= window in blocks: each block of C queries scores only the 3C
    keys of its own and the neighbouring blocks, so memory is O(S * window), not O(S^2)."""
    b, s, n, d = q.shape
    c = _window_block(window)
    nb = -(-s // c)
    pad = nb * c - s

    def blocks(x: jax.Array, fill: Any = 0) -> jax.Array:  # [B, S, ...] -> [B, nb, C, ...]
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
        return x.reshape(b, nb, c, *x.shape[2:])

    def neighbours(x: jax.Array, fill: Any = 0) -> jax.Array:  # [B, nb, C, ...] -> [B, nb, K, ...]
        edge = [(0, 0), (1, 1)] + [(0, 0)] * (x.ndim - 2)
        x = jnp.pad(x, edge, constant_values=fill)
        return jnp.concatenate([x[:, :-2], x[:, 1:-1], x[:, 2:]], axis=2)

    # Positions outside [0, S) are segment -2: no real query has it, so they are never seen.
    seg = blocks(mask.segment_ids(), fill=-2)  # [B, nb, C]
    key_seg = neighbours(seg, fill=-2)  # [B, nb, K]
    pos = jnp.arange(nb * c).reshape(nb, c)  # [nb, C]
    key_pos = pos[:, None, :] + c * jnp.arange(-1, 2)[None, :, None]  # [nb, 3, C]
    near = jnp.abs(pos[:, :, None] - key_pos.reshape(nb, 1, 3 * c)) <= window  # [nb, C, K]
    # A padding query's own position is always in `near`, so every row keeps one key.
    allowed = near[None] & (seg[..., :, None] == key_seg[..., None, :])  # [B, nb, C, K]

    out = jax.nn.dot_product_attention(
        blocks(q).reshape(b * nb, c, n, d),
        neighbours(blocks(k)).reshape(b * nb, 3 * c, n, d),
        neighbours(blocks(v)).reshape(b * nb, 3 * c, n, d),
        mask=allowed.reshape(b * nb, 1, c, 3 * c),
        implementation="xla",
    )  # [B * nb, C, N, D]
    return out.reshape(b, nb * c, n, d)[:, :s]  # [B, S, N, D]


def _splash(cfg: EncoderConfig, q, k, v, mask: AttentionMask, window: int | None) -> jax.Array:
    """TPU Splash attention: q [B, S, N, D] unscaled in, heads-major inside the kernel."""
    s, n, d = q.shape[1:]
    kernel = _splash_kernel(
        s, n // _head_shards(q), window, cfg.splash_block_q, cfg.splash_block_kv,
        _platform() != "tpu",
    )  # fmt: skip
    heads_first = functools.partial(jnp.swapaxes, axis1=1, axis2=2)  # [B, S, N, D] <-> [B, N, S, D]

    def run(q, k, v, seg):  # One shard: q, k, v [b, S, n, D], seg [b, S].
        args = (heads_first(q * (1.0 / np.sqrt(d))), heads_first(k), heads_first(v))
        out = jax.vmap(kernel)(*args, segment_ids=splash.SegmentIds(seg, seg))
        return heads_first(out)

    return _per_shard(run, q, k, v, mask.segment_ids())


def _pallas_gpu(q, k, v, mask: AttentionMask) -> jax.Array:
    """Pallas's GPU (Triton) flash kernel, documents and padding as segment ids; no windows."""
    interpret = _platform() != "gpu"
    blocks = gpu_attention.BlockSizes.get_default()
    if interpret:  # Numerics do not depend on the tiles; big ones keep interpret mode quick.
        size = min(128, q.shape[1])
        blocks = gpu_attention.BlockSizes(size, size, size, size, size, size)

    def run(q, k, v, seg):  # One shard: [b, S, n, D], seg [b, S].
        return gpu_attention.mha(
            q, k, v, seg, sm_scale=1.0 / np.sqrt(q.shape[-1]), block_sizes=blocks,
            interpret=interpret,
        )  # fmt: skip

    return _per_shard(run, q, k, v, mask.segment_ids())


@contextlib.contextmanager
def kernel_mesh(mesh: jax.sharding.Mesh | None) -> Iterator[None]:
    """Within the block, the Pallas kernels run per shard of `mesh` (the step builder sets it
    while it traces, through `layers.activation_sharding`). Without one, jax's context mesh
    (`jax.set_mesh`) is used, if any."""
    token = _KERNEL_MESH.set(mesh)
    try:
        yield
    finally:
        _KERNEL_MESH.reset(token)


def _mesh() -> jax.sharding.Mesh | jax.sharding.AbstractMesh | None:
    mesh = _KERNEL_MESH.get()
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty else mesh


def _platform() -> str:
    """The platform the program is for: the mesh's (compile-only TPU devices, as `pretrain.plan`
    uses, included), else the default backend's."""
    mesh = _mesh()
    if isinstance(mesh, jax.sharding.Mesh):
        return mesh.devices.flat[0].platform
    device = getattr(mesh, "abstract_device", None)
    return device.platform if device is not None else jax.default_backend()


def _shard_axes(q: jax.Array) -> tuple[tuple[str, ...], str | None]:
    """(batch axes, head axis) of the mesh that divide q's batch and heads; ((), None) without
    a mesh."""
    mesh = _mesh()
    if mesh is None:
        return (), None
    batch_axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
    head_axis = "tensor" if "tensor" in mesh.axis_names else None
    if q.shape[0] % int(np.prod([mesh.shape[a] for a in batch_axes])):
        batch_axes = ()
    if head_axis and q.shape[2] % mesh.shape[head_axis]:
        head_axis = None
    return batch_axes, head_axis


def _head_shards(q: jax.Array) -> int:
    head_axis = _shard_axes(q)[1]
    return _mesh().shape[head_axis] if head_axis else 1


def _per_shard(run, q, k, v, seg) -> jax.Array:
    """run(q, k, v, seg) on each shard of the context mesh (batch over the data axes, heads over
    `tensor`): a Pallas kernel is one opaque call that XLA cannot split, so without shard_map it
    would run whole on every chip. q, k, v [B, S, N, D], seg [B, S] -> [B, S, N, D]."""
    batch_axes, head_axis = _shard_axes(q)
    if not batch_axes and head_axis is None:
        return run(q, k, v, seg)
    spec = P(batch_axes or None, None, head_axis, None)
    sharded = jax.shard_map(
        run, mesh=_mesh(), in_specs=(spec, spec, spec, P(batch_axes or None, None)),
        out_specs=spec, check_vma=False,
    )  # fmt: skip
    return sharded(q, k, v, seg)


def _splash_kernel(
    seq: int, heads: int, window: int | None, block_q: int, block_kv: int, interpret: bool
) -> Any:
    """The Splash kernel of one mask shape. Built in each trace, not cached: its block masks
    become that trace's constants (concrete ones would need a device, which a compile-only TPU
    mesh, as `pretrain.plan` compiles for, does not have)."""
    block_q, block_kv = min(block_q, seq), min(block_kv, seq)
    if seq % block_q or seq % block_kv:
        raise ConfigError(
            f"model.splash_block_q={block_q} / model.splash_block_kv={block_kv} must divide the "
            f"sequence length {seq}: pick block sizes that divide data.max_seq_length."
        )
    if window is None:
        head_mask = splash.FullMask((seq, seq))
    else:
        head_mask = splash.LocalMask((seq, seq), window_size=(window, window), offset=0)
    blocks = splash.BlockSizes(
        block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv,
        block_q_dkv=block_q, block_kv_dkv=block_kv, block_kv_dkv_compute=block_kv,
        block_q_dq=block_q, block_kv_dq=block_kv,
    )  # fmt: skip
    return splash.make_splash_mha(
        splash.MultiHeadMask([head_mask] * heads), block_sizes=blocks, head_shards=1,
        q_seq_shards=1, interpret=interpret,
    )  # fmt: skip
