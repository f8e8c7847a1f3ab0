"""Training FLOPs of an encoder step and model FLOPs utilization (MFU); peaks from `chips.py`.

FLOPs are counted from the config, not measured: one multiply-add is 2 FLOPs, and the backward
pass costs twice the forward (so forward + backward = 3x forward). Per sequence of S tokens
(L layers, width H, MLP width I, vocabulary V, P predicted positions):

    encoder dense    3 * 2 * S * L * (4 H^2 + 2 H I)   Q, K, V, output projection; MLP in + out
    attention        3 * 4 * S^2 * L * H               scores Q K^T and the weighted sum of V,
                                                       bidirectional: every query sees all S keys
    MLM head         3 * 2 * P * (H^2 + H V)           transform + tied decoder, at the P masked
                                                       positions only (the model gathers them)
    pooler + NSP     3 * 2 * (H^2 + 2 H)               the [CLS] vector only

With I = 4H the dense term is the usual 72 L H^2 per token (3 x 24 L H^2 forward) and the total
matches `../shared/REFERENCE.md`: BERT-base at S=128, P=20 is ~546 MFLOP per token.

ModernBERT (`model.arch='modernbert'`) differs in three terms. Its GeGLU MLP has two input
projections: dense is 3 * 2 * S * L * (4 H^2 + 3 H I). A local layer's query sees only the keys
within `local_attention // 2` positions either side, so its attention term counts those pairs,
S (2w + 1) - w (w + 1) for a window w < S, in place of S^2 (every `global_attn_every_n_layers`-th
layer, from layer 0, is global). Without NSP (`data.objective='packed'`) the pooler + NSP term
is 0. Packed rows are counted as full rows of S: which pairs a document boundary masks depends
on the data, and the kernels compute the masked scores too.

Not counted:
embedding lookups, LayerNorm, softmax, GELU, dropout, the loss and the optimizer (elementwise,
O(S H) per token against O(H^2)), and recomputation under remat (MFU counts the model's FLOPs,
not the hardware's). Padding tokens are counted: the step computes them.

MFU = (FLOPs per step / step time) / (peak FLOP/s per device * devices)
    = tokens/s * FLOPs per token / (peak per device * devices).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from data_pipeline.errors import ConfigError
from pretrain.compute import chips


@dataclasses.dataclass(frozen=True)
class StepFlops:
    """Training FLOPs (forward + backward) of one sequence, by part."""

    encoder_dense: float
    attention: float
    mlm_head: float
    pooler_nsp: float
    seq_len: int

    @property
    def per_sequence(self) -> float:
        return self.encoder_dense + self.attention + self.mlm_head + self.pooler_nsp

    @property
    def per_token(self) -> float:
        return self.per_sequence / self.seq_len


def attended_pairs(seq_len: int, window: int | None) -> int:
    """(query, key) pairs of a row of `seq_len` tokens when each query sees the keys at most
    `window` positions away (None: all)."""
    if window is None or window >= seq_len - 1:
        return seq_len * seq_len
    return seq_len * (2 * window + 1) - window * (window + 1)


def encoder_train_flops(
    *,
    num_layers: int,
    hidden_size: int,
    intermediate_size: int,
    vocab_size: int,
    seq_len: int,
    num_predictions: int,
    arch: str = "bert",
    global_attn_every_n_layers: int = 1,
    local_attention: int = 0,
    with_nsp: bool = True,
) -> StepFlops:
    """Forward + backward FLOPs of one pretraining sequence (see the module docstring)."""
    L, H, I, V, S, P = (  # noqa: E741 - the formula's letters.
        num_layers,
        hidden_size,
        intermediate_size,
        vocab_size,
        seq_len,
        num_predictions,
    )
    fwd_bwd = 3  # Backward = 2x forward: gradients w.r.t. activations and w.r.t. weights.
    modern = arch == "modernbert"
    mlp_matrices = 3 if modern else 2  # GeGLU: input and gate projections, then the output.
    pairs = [
        attended_pairs(S, None if not modern or i % global_attn_every_n_layers == 0
                       else local_attention // 2)
        for i in range(L)
    ]  # fmt: skip
    return StepFlops(
        encoder_dense=fwd_bwd * 2 * S * L * (4 * H * H + mlp_matrices * H * I),
        attention=fwd_bwd * 4 * sum(pairs) * H,
        mlm_head=fwd_bwd * 2 * P * (H * H + H * V),
        pooler_nsp=fwd_bwd * 2 * (H * H + 2 * H) if with_nsp else 0,
        seq_len=S,
    )


def config_train_flops(config: ml_collections.ConfigDict, vocab_size: int) -> StepFlops:
    """`encoder_train_flops` of a pretraining config (`config.model`, `config.data`)."""
    model = config.model
    modern = model.get("arch", "bert") == "modernbert"
    return encoder_train_flops(
        num_layers=model.num_hidden_layers,
        hidden_size=model.hidden_size,
        intermediate_size=model.intermediate_size,
        vocab_size=vocab_size,
        seq_len=config.data.max_seq_length,
        num_predictions=config.data.max_predictions_per_seq,
        arch=model.get("arch", "bert"),
        global_attn_every_n_layers=model.global_attn_every_n_layers if modern else 1,
        local_attention=model.local_attention if modern else 0,
        with_nsp=config.data.get("objective", "nsp") == "nsp",
    )


def peak_flops_per_device(device_kind: str, dtype: str, configured: float = 0.0) -> float | None:
    """Peak dense FLOP/s of one device computing in `dtype`; None where unknown (e.g. CPUs).

    A positive `configured` value (config.benchmark.peak_flops_per_device) wins over the table.
    """
    if configured and configured > 0:
        return float(configured)
    if dtype not in ("bfloat16", "float32"):
        raise ConfigError(f"dtype={dtype!r}: MFU peaks exist for 'bfloat16' and 'float32' only.")
    chip = chips.chip_for_kind(device_kind)
    return None if chip is None else chip.peak_flops(dtype)


def mfu(
    tokens_per_sec: float, flops_per_token: float, peak_per_device: float | None, num_devices: int
) -> float | None:
    """Model FLOPs utilization in [0, 1]; None when the device peak is unknown."""
    if peak_per_device is None or peak_per_device <= 0:
        return None
    return tokens_per_sec * flops_per_token / (peak_per_device * num_devices)
