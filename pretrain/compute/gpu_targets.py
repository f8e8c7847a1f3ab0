"""What the CUDA compiler needs to know of a GPU it cannot see: a `GpuTargetConfigProto` (text).

XLA's GPU compiler, given this description instead of a device, compiles the very executable a
GPU would run (`pretrain.plan --topology=h100-8`): its memory, schedule and collectives. The
description's memory size also sets the compiler's own limits (it schedules and rematerializes
to fit 80% of it). Figures are public: NVIDIA's H100 / H200 datasheets and Hopper whitepaper,
and what CUDA's deviceQuery and nvidia-smi print for these boards; the field names are the proto's
(xla/stream_executor/device_description.proto). Written here, not copied from XLA's spec files.
"""

from __future__ import annotations

from pretrain.compute.chips import Chip

# GH100 (compute capability 9.0), the same die in H100 SXM5 and H200: per-SM and per-block limits.
_HOPPER = {
    "core_count": 132,  # SMs (H100 SXM5 / H200).
    "fpus_per_core": 128,  # FP32 lanes per SM.
    "clock_rate_ghz": 1.98,  # Boost clock.
    "l2_cache_size": 50 * 2**20,
    "shared_memory_per_block": 48 * 2**10,  # The default; more on opt-in.
    "shared_memory_per_block_optin": 227 * 2**10,
    "shared_memory_per_core": 228 * 2**10,
    "registers_per_block_limit": 65536,
    "registers_per_core_limit": 65536,
    "threads_per_block_limit": 1024,
    "threads_per_core_limit": 2048,
    "threads_per_warp": 32,
    "thread_dim_limit_x": 1024,
    "thread_dim_limit_y": 1024,
    "thread_dim_limit_z": 64,
    "block_dim_limit_x": 2**31 - 1,
    "block_dim_limit_y": 65535,
    "block_dim_limit_z": 65535,
}
# Chip table name -> (the device name CUDA reports, its memory as nvidia-smi counts it).
_BOARDS = {
    "H100 SXM": ("NVIDIA H100 80GB HBM3", 81559 * 2**20),
    "H200": ("NVIDIA H200", 143771 * 2**20),
}
_CUDNN, _CUDA = (9, 8), (12, 9)  # What the jax-cuda12 plugin builds against (jax 0.10).


def target_config(chip: Chip) -> str:
    """The text-format GpuTargetConfigProto of `chip` (a `chips.CHIPS` row with a board here)."""
    if chip.name not in _BOARDS:
        raise ValueError(f"no compile-only description of {chip.name}; known: {list(_BOARDS)}")
    device, memory = _BOARDS[chip.name]
    fields = {**_HOPPER, "device_memory_size": memory, "memory_bandwidth": int(chip.hbm_bandwidth)}
    body = "\n".join(f"  {key}: {value}" for key, value in fields.items())
    return (
        f'platform_name: "CUDA"\n'
        f'device_description_str: "{device}"\n'  # JAX's device_kind.
        f'gpu_device_info {{\n  name: "{device}"\n'
        f'  device_vendor: "NVIDIA Corporation"\n'
        f"  cuda_compute_capability {{ major: 9 minor: 0 }}\n{body}\n}}\n"
        f"dnn_version_info {{ major: {_CUDNN[0]} minor: {_CUDNN[1]} }}\n"
        f"runtime_version {{ major: {_CUDA[0]} minor: {_CUDA[1]} }}\n"
    )
