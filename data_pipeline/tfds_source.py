"""`tfds:NAME[:SPLIT]` sources: parsing the spec and opening the split for random access.

Every reader of TFDS data (pretraining text, classification, tagging, QA) opens it here.
`tfds.data_source` reads prepared ArrayRecord files without TensorFlow. Two things the plain call
gets wrong on a machine set up by this project's install, mended here:

* legacy builders (`glue`, `wikipedia`, `conll2003`, ...) are registered only when their module
  is imported, and TFDS's own bulk import stops at the first module whose optional dependencies
  are missing; so the module named after the dataset is imported first;
* a dataset that is not prepared would start a download and a build (which needs TensorFlow and
  the network); it is refused instead, with the command that prepares it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

from data_pipeline.errors import ConfigError, DataError

TFDS_PREFIX = "tfds:"
# TFDS packages holding legacy (module-registered) builders, searched for the dataset's module.
_LEGACY_PACKAGES = (
    "text",
    "question_answering",
    "summarization",
    "translate",
    "structured",
    "image_classification",
)


def is_tfds_spec(spec: str) -> bool:
    """Whether `spec` names a TFDS dataset (`tfds:NAME[:SPLIT]`) rather than file globs."""
    return spec.strip().startswith(TFDS_PREFIX)


def parse_tfds_spec(spec: str) -> tuple[str, str]:
    """Splits `tfds:NAME[:SPLIT]` into (NAME, SPLIT); SPLIT defaults to 'train'.

    NAME may carry a config and a version (`wikipedia/20230601.en:1.0.0:train`) when SPLIT is
    given; SPLIT may slice (`train[:10%]`).
    """
    body = spec.strip()[len(TFDS_PREFIX) :]
    head, bracket, slicing = body.partition("[")
    name, sep, split = head.rpartition(":")
    if not sep:
        name, split = head, "train"
    split += bracket + slicing
    if not name or not split:
        raise ConfigError(f"bad TFDS spec {spec!r}: expected 'tfds:NAME' or 'tfds:NAME:SPLIT'")
    return name, split


def _import_builder_module(name: str) -> None:
    """Imports the legacy builder module of dataset `name` ('glue/sst2' -> text/glue.py)."""
    base = name.split("/")[0].split(":")[0]
    for package in _LEGACY_PACKAGES:
        module = f"tensorflow_datasets.{package}.{base}"
        try:
            if importlib.util.find_spec(module) is not None:
                importlib.import_module(module)
                return
        except ImportError:  # A builder whose optional dependency is missing: not ours.
            continue


def open_split(spec: str) -> Any:
    """The random-access data source of a `tfds:NAME[:SPLIT]` spec (records are dicts)."""
    import tensorflow_datasets as tfds  # Imported here: slow, and only TFDS sources need it.

    name, split = parse_tfds_spec(spec)
    _import_builder_module(name)
    data_dir = os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    try:
        return tfds.data_source(name, split=split, download=False)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(
            f"TFDS has no dataset {name!r}: check the name (tfds.list_builders() lists them)"
        ) from None
    except (KeyError, AssertionError, FileNotFoundError, ValueError) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        detail = "" if "has not been generated" in detail else f" ({detail})"
        raise DataError(
            f"TFDS dataset {name!r} split {split!r} is not prepared in {data_dir}{detail}: "
            f"prepare it once with `tfds build {name.split(':')[0]}` (needs tensorflow and the "
            "network), or point TFDS_DATA_DIR at a folder that holds it"
        ) from None
