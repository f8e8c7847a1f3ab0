"""Shards you can trust: each one checked against the size and sha256 recorded when it was built.

At thousands of shards read for weeks from object storage, a damaged, truncated or lost file is
a matter of time. `data_pipeline/shards.py` records each shard's byte size and sha256 in its
sidecar, and the finished set in the manifest. Here:

- `check_shard(directory, index)`: what is wrong with one shard, or None. The one check, run by
  the Beam runner over all shards (`python -m data_pipeline.build ... --verify`) and in this
  process by `verify` (threads; training's start check when `data.verify_shards` is set).
- `discard(directory, indices)`: removes bad shards so the same build rebuilds exactly those
  (`--repair`); a shard is a pure function of its unit and the seed, so it comes back
  byte-identical.
- `repair_command(directory)`: the command line that does it, from what the manifest records,
  for the one `error:` line a damaged record ends a training run with.
"""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor

from etils import epath

from data_pipeline import files, records
from data_pipeline.errors import DataError

_THREADS = 8  # Reads in flight for the in-process check (object stores reward parallel reads).
# What `check_shard` says of a shard built before checksums were recorded: not a fault.
NO_CHECKSUM = "no checksum recorded (built by an older version): presence checked only"


def shard_path(directory: str | epath.PathLike, index: int) -> epath.Path:
    return epath.Path(directory) / f"{records.shard_name(index)}.array_record"


def _expected(directory: epath.Path, index: int, manifest: dict) -> tuple[dict | None, str]:
    """(the shard's recorded {bytes, sha256} or None, a problem with its sidecar or '')."""
    sidecar = directory / f"{records.shard_name(index)}.json"
    recorded = manifest.get("shards", {}).get(records.shard_name(index))
    if not sidecar.exists():
        return recorded, "missing (its sidecar is gone)" if recorded else "missing (never built)"
    try:
        counts = json.loads(sidecar.read_text())
    except ValueError:
        return recorded, "its sidecar is not valid JSON"
    own = {k: counts[k] for k in ("bytes", "sha256")} if "sha256" in counts else None
    if recorded and own != recorded:
        return recorded, "its sidecar disagrees with the manifest"
    return recorded or own, ""


def check_shard(
    directory: str | epath.PathLike, index: int, manifest: dict | None = None
) -> str | None:
    """What is wrong with shard `index` of a built directory, in words; None when it is sound,
    `NO_CHECKSUM` when it is there but was built before checksums were recorded."""
    directory = epath.Path(directory)
    manifest = records.read_manifest(directory) if manifest is None else manifest
    expected, problem = _expected(directory, index, manifest)
    path = shard_path(directory, index)
    if not path.exists():
        return "missing"
    if problem or expected is None:
        return problem or NO_CHECKSUM
    try:
        size, sha256 = files.size_and_sha256(path)
    except OSError as e:
        return f"unreadable ({e})"
    if size != expected["bytes"]:
        how = "truncated" if size < expected["bytes"] else "too long"
        return f"{how}: {size} bytes, built as {expected['bytes']}"
    if sha256 != expected["sha256"]:
        return "damaged: its sha256 differs from the one recorded when it was built"
    return None


@dataclasses.dataclass
class Report:
    """The outcome of checking every shard of a built directory."""

    directory: str
    num_shards: int
    bad: dict[int, str]  # Unit index -> what is wrong with its shard.
    unchecked: int  # Shards built before checksums were recorded (presence checked only).

    def lines(self) -> list[str]:
        """One line per bad shard: its file and what is wrong."""
        return [f"{shard_path(self.directory, i)}: {why}" for i, why in sorted(self.bad.items())]


def unit_indices(manifest: dict) -> list[int]:
    return [u["index"] for u in manifest["units"]]


def report(directory: str, found: dict[int, str], manifest: dict | None = None) -> Report:
    """The `Report` of `check_shard`'s findings (from any runner; sound shards left out)."""
    manifest = records.read_manifest(directory) if manifest is None else manifest
    bad = {i: why for i, why in found.items() if why != NO_CHECKSUM}
    return Report(directory, len(unit_indices(manifest)), bad, len(found) - len(bad))


def verify(directory: str, threads: int = _THREADS) -> Report:
    """Checks every shard in this process (`threads` reads in flight)."""
    manifest = records.read_manifest(directory)
    indices = unit_indices(manifest)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        found = pool.map(lambda i: check_shard(directory, i, manifest), indices)
        return report(directory, {i: why for i, why in zip(indices, found) if why}, manifest)


def require_sound(directory: str) -> Report:
    """`verify`, raising DataError naming the first bad shard and the command that repairs it."""
    result = verify(directory)
    if result.bad:
        raise DataError(
            f"{len(result.bad)} of {result.num_shards} shards of {directory} are damaged or "
            f"missing (first: {result.lines()[0]}); repair them, then rerun: "
            f"{records.repair_command(directory)}"
        )
    return result


def discard(directory: str, indices: list[int]) -> None:
    """Removes these shards, sidecar first (then the build sees them as never built)."""
    for index in indices:
        for path in (
            shard_path(directory, index).with_suffix(".json"),
            shard_path(directory, index),
        ):
            if path.exists():
                path.unlink()
