"""Data layer: loading, k-core, id remapping, splits, registry, downloads, synthetic logs, batching."""

from __future__ import annotations

from study.data.batching import TrainBatches, eval_batches
from study.data.errors import DataError
from study.data.loading import load_interactions
from study.data.preprocess import Interactions, kcore_mask, prepare_interactions
from study.data.registry import ResolvedDataset, load_dataset, resolve_dataset
from study.data.sequences import EvalSet, Sequences
from study.data.splits import Split, check_split, make_split
from study.data.synthetic import SyntheticSpec, generate_synthetic, parse_synthetic_spec

__all__ = [
    "DataError",
    "EvalSet",
    "Interactions",
    "ResolvedDataset",
    "Sequences",
    "Split",
    "SyntheticSpec",
    "TrainBatches",
    "check_split",
    "eval_batches",
    "generate_synthetic",
    "kcore_mask",
    "load_dataset",
    "load_interactions",
    "make_split",
    "parse_synthetic_spec",
    "prepare_interactions",
    "resolve_dataset",
]
