"""Readable tables of the pod plan's records (`planner.py`): one block per program, one row per
sweep point. Bytes are per chip, in GiB; times per step."""

from __future__ import annotations

from typing import Any

from pretrain.compute import chips
from pretrain.perf.collectives import KINDS


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value / chips.GiB:.2f} GiB"


def _mesh(mesh: dict[str, int]) -> str:
    return "x".join(str(mesh[a]) for a in ("data", "fsdp", "tensor"))


def program_table(record: dict[str, Any]) -> str:
    """One program: what it holds per chip, what it computes, what it sends, how fast at best."""
    r = record
    gpu = r["platform"] == "cuda"
    fast, slow = ("NVLink", "network") if gpu else ("ICI", "DCN")
    place = "1 partition" if gpu else f"{r['num_slices']} slice(s)"
    lines = [
        f"{r['program']} on {r['topology']} ({r['chips']} x {r['chip']}, "
        f"{r['compiler_topology']}, {place}); mesh data x fsdp x tensor = {_mesh(r['mesh'])}",
        f"  batch {r['global_batch']} global, {r['per_chip_batch']} per chip x {r['seq_len']} "
        f"tokens; {r['dtype']}; remat {r['remat_policy']}; grad_accum {r['grad_accum_steps']}",
        f"  memory per chip   arguments {_gib(r['argument_bytes'])} (state "
        f"{_gib(r['state_bytes'])}), outputs {_gib(r['output_bytes'])} (aliased "
        f"{_gib(r.get('alias_bytes'))}), temporaries {_gib(r['temp_bytes'])}",
        f"  total             {_gib(r['hbm_bytes_per_chip'])} of {_gib(r['hbm_capacity_bytes'])}:"
        f" {'fits' if r['fits'] else 'DOES NOT FIT'}"
        + (f", headroom {_gib(r['headroom_bytes'])}" if r["fits"] else f" ({r['reason']})"),
    ]
    if not r["compiled"]:
        return "\n".join(lines)
    est = {k: v * 1e3 if isinstance(v, float) else v for k, v in r["estimate"].items()}
    sent = [
        f"{k} {r['collectives'][k]['count']}x {_gib(r['collectives'][k]['bytes'])}"
        for k in KINDS
        if r["collectives"][k]["count"]
    ]
    counted = (
        f"compiler {r['flops_per_chip']:.4g}, model {r['model_flops_per_chip']:.4g} "
        f"(ratio {r['flops_ratio']:.3f}; see docs)"
        if r["flops_per_chip"] is not None
        else f"model {r['model_flops_per_chip']:.4g} (the compiler counts none: no HBM floor)"
    )
    lines += [
        f"  FLOPs per chip    {counted}",
        f"  collectives       {', '.join(sent) or 'none'}",
        f"  roofline (ms)     compute {est['compute_s']:.2f}, HBM {est['memory_s']:.2f}, "
        f"{fast} {est['ici_s']:.2f}, {slow} {est['dcn_s']:.2f}",
        f"  estimate          step >= {est['step_time_s']:.2f} ms ({est['bound']}-bound; "
        f"{est['serial_s']:.2f} ms without overlap), MFU <= {r['estimated_mfu']:.1%}",
        f"  compiled in {r['compile_time_s']:.1f} s",
    ]
    return "\n".join(lines)


SWEEP_HEADER = (
    f"{'mesh':>10} {'remat':>5} {'batch':>5} {'memory':>11} {'fits':>4} {'step':>9} "
    f"{'MFU<=':>6} {'tokens/s':>10}  bound"
)


def sweep_row(p: dict[str, Any]) -> str:
    """One sweep point, under SWEEP_HEADER."""
    head = (
        f"{_mesh(p['mesh']):>10} {p['remat_policy']:>5} {p['per_chip_batch']:>5} "
        f"{_gib(p['hbm_bytes_per_chip']):>11} {'yes' if p['fits'] else 'no':>4} "
    )
    if not p["compiled"]:
        return head + f"{'-':>9} {'-':>6} {'-':>10}  {p['reason']}"
    return head + (
        f"{p['estimated_step_time_s'] * 1e3:7.2f}ms {p['estimated_mfu']:6.1%} "
        f"{p['estimated_tokens_per_sec']:10.4g}  {p['estimate']['bound']}"
    )


def sweep_table(points: list[dict[str, Any]]) -> str:
    """One row per sweep point."""
    return "\n".join([SWEEP_HEADER, *map(sweep_row, points)])
