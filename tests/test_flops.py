"""Encoder FLOP counts against REFERENCE.md and a matmul-by-matmul count; device peaks; MFU."""

import pytest

from configs import default, mini
from pretrain.compute import flops


def _matmul_flops_by_hand(L, H, I, V, S, P):  # noqa: E741 - the formula's letters.
    """Forward + backward FLOPs of one sequence, listing every matmul as (rows, inner, cols)."""
    per_layer = [
        (S, H, H),  # query
        (S, H, H),  # key
        (S, H, H),  # value
        (S, S, H),  # scores: S queries x S keys, summed over the head dims (H in all)
        (S, S, H),  # probabilities x values
        (S, H, H),  # output projection
        (S, H, I),  # MLP in
        (S, I, H),  # MLP out
    ]
    head = [(P, H, H), (P, H, V), (1, H, H), (1, H, 2)]  # MLM transform, decoder, pooler, NSP
    forward = sum(2 * m * k * n for m, k, n in per_layer) * L + sum(
        2 * m * k * n for m, k, n in head
    )
    return 3 * forward


def test_counts_every_matmul_once():
    shape = dict(L=2, H=8, I=24, V=50, S=16, P=3)
    counted = flops.encoder_train_flops(
        num_layers=2, hidden_size=8, intermediate_size=24, vocab_size=50, seq_len=16,
        num_predictions=3,
    )  # fmt: skip
    assert counted.per_sequence == _matmul_flops_by_hand(**shape)
    assert counted.per_token == counted.per_sequence / 16


@pytest.mark.parametrize(
    "predictions, expected_mflop_per_token",
    [(20, 546), (128, 668)],  # REFERENCE.md: masked positions only; every position.
)
def test_bert_base_matches_the_reference(predictions, expected_mflop_per_token):
    config = default.get_config()  # BERT-base, S=128.
    config.data.max_predictions_per_seq = predictions
    counted = flops.config_train_flops(config, vocab_size=30522).per_token / 1e6
    assert counted == pytest.approx(expected_mflop_per_token, rel=2e-3)


def test_bert_mini_matches_the_reference():
    counted = flops.config_train_flops(mini.get_config(), vocab_size=30522)
    assert counted.per_token / 1e6 == pytest.approx(28, rel=0.01)
    # The MLM head is counted at the 20 masked positions only: a fifth of the step, not half.
    assert counted.mlm_head / counted.per_sequence == pytest.approx(0.265, abs=0.005)


# Device kinds as JAX reports them, and the bf16 peaks of ../shared/REFERENCE.md (vendor figures).
@pytest.mark.parametrize(
    "kind, peak",
    [
        ("TPU v4", 275e12),
        ("TPU v5 lite", 197e12),  # v5e
        ("TPU v5", 459e12),  # v5p
        ("TPU v6 lite", 918e12),  # v6e
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA H100 80GB HBM3", 989e12),  # SXM
        ("NVIDIA H200", 989e12),
    ],
)
def test_reported_device_kinds_get_the_reference_bf16_peak(kind, peak):
    assert flops.peak_flops_per_device(kind, "bfloat16") == peak
    # float32 matmuls run at default precision: on TPU bf16 passes, on NVIDIA TF32 (half).
    fp32 = flops.peak_flops_per_device(kind, "float32")
    assert fp32 == pytest.approx(peak if kind.startswith("TPU") else peak / 2, rel=0.01)


@pytest.mark.parametrize("kind", ["cpu", "TPU v3", "NVIDIA GeForce RTX 4090"])
def test_devices_without_a_known_peak_get_none_not_a_guess(kind):
    assert flops.peak_flops_per_device(kind, "bfloat16") is None


def test_configured_peak_wins_and_mfu():
    assert flops.peak_flops_per_device("cpu", "float32", configured=1e12) == 1e12
    # 1000 tokens/s x 1e9 FLOP/token = 1e12 FLOP/s on 4 devices of 1e12 peak each.
    assert flops.mfu(1000.0, 1e9, 1e12, 4) == pytest.approx(0.25)
    assert flops.mfu(1000.0, 1e9, None, 4) is None
    with pytest.raises(ValueError, match="float16"):
        flops.peak_flops_per_device("TPU v4", "float16")


def _modernbert_matmul_flops_by_hand(L, H, I, V, S, P, every, window):  # noqa: E741
    """ModernBERT's matmuls one by one; a local layer's score and value matmuls listed per
    query with the keys its window holds."""
    forward = 0
    for layer in range(L):
        dense = [(S, H, H)] * 4 + [(S, H, I), (S, H, I), (S, I, H)]  # q k v o; GeGLU in, gate, out
        forward += sum(2 * m * k * n for m, k, n in dense)
        for i in range(S):
            keys = (
                S if layer % every == 0 else len(range(max(0, i - window), min(S, i + window + 1)))
            )
            forward += 2 * (2 * keys * H)  # scores and weighted values of one query
    forward += 2 * P * H * H + 2 * P * H * V  # MLM transform and tied decoder; no pooler, no NSP
    return 3 * forward


@pytest.mark.parametrize("window", [2, 5, 40])  # 40 >= S: every local layer sees all keys.
def test_modernbert_counts_every_matmul_once(window):
    counted = flops.encoder_train_flops(
        num_layers=4, hidden_size=8, intermediate_size=12, vocab_size=50, seq_len=16,
        num_predictions=5, arch="modernbert", global_attn_every_n_layers=3,
        local_attention=2 * window, with_nsp=False,
    )  # fmt: skip
    expected = _modernbert_matmul_flops_by_hand(4, 8, 12, 50, 16, 5, every=3, window=window)
    assert counted.per_sequence == expected


def test_modernbert_base_config_counts_its_local_layers():
    from configs import modernbert_base

    config = modernbert_base.get_config()
    counted = flops.config_train_flops(config, vocab_size=50368)
    assert counted.pooler_nsp == 0
    global_only = flops.encoder_train_flops(
        num_layers=22, hidden_size=768, intermediate_size=1152, vocab_size=50368,
        seq_len=config.data.max_seq_length, num_predictions=config.data.max_predictions_per_seq,
        arch="modernbert", with_nsp=False,
    )  # fmt: skip
    assert counted.encoder_dense == global_only.encoder_dense
    # Rows of 1024 with windows of 128 in 2 of every 3 layers: attention well under global's.
    assert counted.attention < 0.5 * global_only.attention
