"""Builds a pretraining corpus into shards with Apache Beam, at any size, on any Beam runner.

    python -m data_pipeline.build --input=GLOBS --output_dir=DIR --tokenizer_model=PATH.model \
        [--objective=nsp|packed] [--max_seq_length=128] [--unit_mb=64] [--seed=0] \
        [--short_seq_prob=0.1] [--random_next_prob=0.5] [--dupe_factor=1] \
        [--verify [--repair]] [Beam pipeline options]

Train on the result with `--config.data.train_files=DIR` (and `data.tokenizer_model` empty: the
tokenizer copied into DIR is used). The input is split into units at document boundaries
(`--unit_mb` of text each, or 20 000 records of a `tfds:NAME[:SPLIT]` source); each unit becomes
one shard, built by `data_pipeline.shards.build_shard` (the same function a training run uses for
small corpora). Rerunning the same command finishes an interrupted build; a different build into
DIR is refused.

`--verify` (with the flags of the build) checks every shard against the size and sha256 recorded
when it was built, on the Beam runner, and prints one line per damaged, truncated or missing
shard (exit 1 when there is one). `--repair` then rebuilds exactly those: a shard is a pure
function of its unit and the seed, so it comes back byte-identical.

Runners (all Beam options after ours are passed to Beam):

    local, 2 processes   --direct_num_workers=2 --direct_running_mode=multi_processing
    Dataflow             --runner=DataflowRunner --project=P --region=R \
                         --temp_location=gs://B/tmp --requirements_file=requirements.txt
    Flink / Spark        --runner=FlinkRunner --flink_master=HOST:8081 --environment_type=LOOPBACK
                         --runner=SparkRunner --spark_master_url=spark://HOST:7077

On a cluster, --input and --output_dir must be paths every worker reaches (gs://...), and the
workers need this package (--setup_file or a container image).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid

from etils import epath

from data_pipeline import integrity, loader, records, shards
from data_pipeline.errors import ConfigError, DataError, UserError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_pipeline.build", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--input", required=True, help="Comma-separated text globs, or tfds:NAME[:SPLIT]."
    )
    p.add_argument("--output_dir", required=True, help="Folder for the shards and the manifest.")
    p.add_argument("--tokenizer_model", required=True, help="Sentencepiece .model (or vocab.txt).")
    p.add_argument(
        "--objective",
        default="nsp",
        choices=("nsp", "packed"),
        help="nsp: sentence pairs for MLM + NSP; packed: full rows for MLM only.",
    )
    p.add_argument("--max_seq_length", type=int, default=128, help="Tokens per example.")
    p.add_argument(
        "--unit_mb", type=float, default=shards.DEFAULT_UNIT_MB, help="Input megabytes per shard."
    )
    p.add_argument("--seed", type=int, default=0, help="Seeds instance building.")
    p.add_argument("--short_seq_prob", type=float, default=0.1, help="nsp: shorter targets.")
    p.add_argument("--random_next_prob", type=float, default=0.5, help="nsp: random B segments.")
    p.add_argument("--dupe_factor", type=int, default=1, help="nsp: passes over each unit.")
    p.add_argument("--text_feature", default="text", help="The text feature of a tfds: source.")
    p.add_argument("--verify", action="store_true", help="Check every shard; build nothing.")
    p.add_argument("--repair", action="store_true", help="With --verify: rebuild bad shards.")
    return p


def _options(beam_args: list[str]):
    from apache_beam.options.pipeline_options import PipelineOptions

    if not any(a.startswith("--default_sdk_harness_log_level") for a in beam_args):
        beam_args = [*beam_args, "--default_sdk_harness_log_level=WARNING"]  # Workers' INFO lines.
    # The local runner relays its workers' start-up warnings through these loggers.
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    return PipelineOptions(beam_args)


def run_pipeline(pending: list[dict], output_dir: str, recipe: shards.Recipe, beam_args) -> None:
    """Builds the pending units' shards on the Beam runner `beam_args` name."""
    import apache_beam as beam  # Imported here: only the builder needs Beam.

    with beam.Pipeline(options=_options(beam_args)) as pipeline:
        _ = (
            pipeline
            | "Units" >> beam.Create(pending)
            | "Spread" >> beam.Reshuffle()
            | "BuildShards" >> beam.Map(shards.build_shard, output_dir=output_dir, recipe=recipe)
        )


def _check(index: int, output_dir: str, manifest: dict) -> tuple[int, str | None]:
    return index, integrity.check_shard(output_dir, index, manifest)


def _write_report(bad: list, path: str) -> None:
    epath.Path(path).write_text(json.dumps(bad))


def verify_pipeline(output_dir: str, manifest: dict, beam_args) -> dict[int, str]:
    """{unit index: `check_shard`'s finding} of every shard not sound, checked on the Beam
    runner."""
    import apache_beam as beam

    # The workers' findings come back through one file (any runner can write where the shards are).
    report = str(epath.Path(output_dir) / f".tmp-verify-{uuid.uuid4().hex}.json")
    with beam.Pipeline(options=_options(beam_args)) as pipeline:
        _ = (
            pipeline
            | "Shards" >> beam.Create(integrity.unit_indices(manifest))
            | "Spread" >> beam.Reshuffle()
            | "Check" >> beam.Map(_check, output_dir=output_dir, manifest=manifest)
            | "Bad" >> beam.Filter(lambda found: found[1] is not None)
            | "Gather" >> beam.combiners.ToList()
            | "Report" >> beam.Map(_write_report, path=report)
        )
    bad = {int(i): why for i, why in json.loads(epath.Path(report).read_text())}
    epath.Path(report).unlink()
    return bad


def _verify(args, recipe: shards.Recipe, unit_bytes: int, beam_args, start: float) -> int:
    """--verify: one line per bad shard; with --repair, rebuilds them. Exit 0 when all sound."""
    if not (epath.Path(args.output_dir) / records.MANIFEST).exists():
        raise DataError(f"{args.output_dir} holds no build: run the command without --verify")
    shards.prepare(args.input, args.output_dir, args.tokenizer_model, recipe, unit_bytes)
    manifest = records.read_manifest(args.output_dir)  # prepare checked it is this build.
    result = integrity.report(
        args.output_dir, verify_pipeline(args.output_dir, manifest, beam_args), manifest
    )
    for line in result.lines():
        print(f"bad shard: {line}")
    bad = sorted(result.bad)
    if bad and args.repair:
        integrity.discard(args.output_dir, bad)
        pending = shards.prepare(
            args.input, args.output_dir, args.tokenizer_model, recipe, unit_bytes
        )
        run_pipeline(pending, args.output_dir, recipe, beam_args)
        shards.check_complete(args.output_dir, recipe.objective)
        still = [i for i in bad if integrity.check_shard(args.output_dir, i, manifest) is not None]
        print(f"repaired {len(bad) - len(still)} of {len(bad)} bad shards")
        bad = still
    unchecked = (
        f"; {result.unchecked} built before checksums were recorded (presence checked only)"
        if result.unchecked
        else ""
    )
    hint = ": rerun with --repair to rebuild them" if bad and not args.repair else ""
    print(
        f"{args.output_dir}: {result.num_shards} shards checked in "
        f"{time.perf_counter() - start:.1f} s, {len(bad)} bad{unchecked}{hint}"
    )
    return 1 if bad else 0


def main(argv: list[str]) -> int:
    args, beam_args = _parser().parse_known_args(argv)
    start = time.perf_counter()
    try:
        # The same recipe (and checks) as a run that builds its own data.
        recipe = loader.recipe({**vars(args), "tfds_text_feature": args.text_feature}, args.seed)
        unit_bytes = int(args.unit_mb * 2**20)
        if args.repair and not args.verify:
            raise ConfigError("--repair goes with --verify: add --verify")
        if args.verify:
            return _verify(args, recipe, unit_bytes, beam_args, start)
        pending = shards.prepare(
            args.input, args.output_dir, args.tokenizer_model, recipe, unit_bytes
        )
        if pending:
            run_pipeline(pending, args.output_dir, recipe, beam_args)
        totals = shards.check_complete(args.output_dir, recipe.objective)
    except UserError as e:
        print(f"error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    skipped = totals["bad_utf8_lines"] + totals["long_lines"]
    print(
        f"{args.output_dir}: {totals['shards']} shards ({totals['shards'] - len(pending)} already "
        f"built), {totals['documents']} documents, {totals['tokens']} tokens, {totals['records']} "
        f"{recipe.objective} examples in {time.perf_counter() - start:.1f} s"
        + (
            f"; skipped {totals['bad_utf8_lines']} lines that are not UTF-8 and "
            f"{totals['long_lines']} lines over 1 MiB"
            if skipped
            else ""
        )  # fmt: skip
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
