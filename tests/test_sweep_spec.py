"""Sweep specifications: parsing, the grid they expand to, stable trial ids, errors naming the key."""

from __future__ import annotations

import hashlib
import json
import re
import textwrap
import tomllib
from pathlib import Path

import pytest

from study.config import TrainConfig
from study.sweep.spec import FIELDS_ADDED_LATER, SpecError, load_spec, parse_spec, trial_id

REPO_ROOT = Path(__file__).resolve().parents[1]

MINIMAL = """
name = "t"
datasets = ["ml-100k"]
[axes]
num_negatives = [16, 64]
batch_size = [32, 128, 256]
max_len = [50]
"""


def spec_from(text: str):  # type: ignore[no-untyped-def]
    return parse_spec(tomllib.loads(textwrap.dedent(text)), source="spec.toml")


def test_grid_is_the_full_product_in_file_order() -> None:
    spec = spec_from(MINIMAL + '[trial]\nloss = "ce-neg"\nepochs = 3\n')
    grid = spec.grid()
    assert [(c.num_negatives, c.batch_size) for c in grid] == [
        (16, 32), (16, 128), (16, 256), (64, 32), (64, 128), (64, 256)]
    assert all(c.loss == "ce-neg" and c.epochs == 3 and c.max_len == 50 for c in grid)
    assert all(c.progress is False for c in grid)  # workers draw no progress bars
    assert len({spec.trial_id(c) for c in grid}) == 6


def test_top_level_settings_reach_every_trial() -> None:
    spec = spec_from("""
        name = "t"
        datasets = ["ml-100k", "synthetic:users=20,items=30"]
        split = "temporal"
        memory_budget = "8GiB"
        time_limit_s = 60
        repeats = 3
        [trial]
        seed = 10
        [axes]
        num_negatives = [16]
        batch_size = [32]
        max_len = [50, 100]
    """)
    grid = spec.grid()
    assert len(grid) == 2 * 2 * 3
    assert {c.dataset for c in grid} == {"ml-100k", "synthetic:users=20,items=30"}
    assert {c.seed for c in grid} == {10, 11, 12}
    assert all(c.split == "temporal" and c.memory_budget == "8GiB" and c.time_limit_s == 60.0 for c in grid)
    assert isinstance(grid[0].time_limit_s, float)


def test_extra_trials_are_added_once_and_may_override_the_budget() -> None:
    spec = spec_from('memory_budget = "8GiB"\n' + MINIMAL + """
        [[extra_trials]]
        loss = "ce"
        batch_size = 64
        max_len = 50
        [[extra_trials]]
        num_negatives = 16
        batch_size = 32
        max_len = 50
        [[extra_trials]]
        num_negatives = 16
        batch_size = 32
        max_len = 50
        memory_budget = "2GiB"
    """.replace("        ", ""))
    grid = spec.grid()
    # the second extra trial repeats a grid point: it is not run twice
    assert len(grid) == 6 + 2
    assert grid[6].loss == "ce" and grid[6].batch_size == 64
    assert grid[7].memory_budget == "2GiB" and grid[0].memory_budget == "8GiB"


def test_trial_id_is_a_stable_hash_of_sweep_and_full_config() -> None:
    config = TrainConfig(dataset="ml-1m", num_negatives=512, seed=3)
    hashed = {k: v for k, v in config.to_dict().items() if k not in FIELDS_ADDED_LATER}  # at their defaults
    expected = hashlib.sha256(json.dumps({"sweep": "s", "config": hashed},
                                         sort_keys=True).encode()).hexdigest()[:16]
    assert trial_id("s", config) == f"s-{expected}"
    assert trial_id("s", config) == trial_id("s", TrainConfig(dataset="ml-1m", num_negatives=512, seed=3))
    assert trial_id("s", config) != trial_id("s", config.replace(seed=4))
    assert trial_id("s", config) != trial_id("other", config)


def test_optuna_search_settings() -> None:
    spec = spec_from(MINIMAL + '[search]\nkind = "optuna"\nnum_samples = 5\nsampler = "nsga2"\nseed = 1\n'
                     '[resources]\ngpus = 0.25\ncpus = 2\nmax_concurrent = 4\ngpu_memory = "80GiB"\n')
    assert spec.search.kind == "optuna" and spec.search.num_samples == 5 and spec.search.sampler == "nsga2"
    assert spec.resources.gpus == 0.25 and spec.resources.max_concurrent == 4
    assert spec.resources.gpu_memory_bytes == 80 * 2**30


SHIPPED = sorted((REPO_ROOT / "sweeps").glob("*.toml"))
# A 280-point paper grid builds 280 TrainConfigs, slow on a loaded machine: those specs are validated
# with their axes cut to the first value, and their axes are compared with the paper's grid.
FULLY_LOADED = {"demo.toml", "gpu-smoke.toml"}


@pytest.mark.parametrize("path", [p for p in SHIPPED if p.name in FULLY_LOADED], ids=lambda p: p.name)
def test_shipped_specs_load(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name == path.stem
    assert len(spec.grid()) >= 1


def test_shipped_paper_specs_cover_the_paper_grid() -> None:
    reference = tomllib.loads((REPO_ROOT / "sweeps" / "paper-ml1m-8gib.toml").read_text())
    for dataset, short in (("gowalla", "gowalla"), ("ml-1m", "ml1m")):
        for gib in (8, 16, 40):
            values = tomllib.loads((REPO_ROOT / "sweeps" / f"paper-{short}-{gib}gib.toml").read_text())
            assert values["name"] == f"paper-{short}-{gib}gib"
            assert values["datasets"] == [dataset] and values["memory_budget"] == f"{gib}GiB"
            assert values["axes"] == reference["axes"] and values["trial"] == reference["trial"]
            shrunk = {**values, "axes": {name: axis[:1] for name, axis in values["axes"].items()}}
            assert parse_spec(shrunk).memory_budget == f"{gib}GiB"
    axes = reference["axes"]
    assert axes["num_negatives"] == [2**i for i in range(5, 13)]  # 32 .. 4096
    assert axes["batch_size"] == [2**i for i in range(4, 11)]  # 16 .. 1024
    assert axes["max_len"] == [2**i for i in range(5, 10)]  # 32 .. 512


def test_shipped_smoke_spec_pairs_the_implementations() -> None:
    smoke = load_spec(REPO_ROOT / "sweeps" / "gpu-smoke.toml")
    grid = smoke.grid()
    assert len(grid) >= 12 and 0 < smoke.resources.gpus < 1
    impl_pairs: dict[tuple[int, int, int], set[str]] = {}
    for c in grid:
        impl_pairs.setdefault((c.num_negatives, c.batch_size, c.max_len), set()).add(c.loss_impl)
    assert sum(1 for impls in impl_pairs.values() if impls == {"triton", "torch"}) >= 6
    assert any(c.memory_budget != smoke.memory_budget for c in grid)  # the deliberately tight one


BAD_SPECS = [
    ("axes.batch_size[2]: must be a positive integer", {"axes": {"batch_size": [32, 64, -3]}}),
    ("axes.batch_size[1]: must be an integer", {"axes": {"batch_size": [32, 6.5]}}),
    ("axes.batch_size: must be a non-empty list", {"axes": {"batch_size": []}}),
    ("axes.batch_size: lists a value twice", {"axes": {"batch_size": [32, 32]}}),
    ("axes.loss[1]: 'xent' is not one of", {"axes": {"loss": ["ce", "xent"]}}),
    ("axes.max_len: missing", {"axes": {"max_len": None}}),
    ("axes.learning_rate: unknown key", {"axes": {"learning_rate": [0.1]}}),
    ("axes.dataset: set it with the top-level `datasets` key", {"axes": {"dataset": ["a"]}}),
    ("colour: unknown key", {"colour": "red"}),
    ("trial.lr: must be a number", {"trial": {"lr": "fast"}}),
    ("trial.dropout: must be in [0, 1)", {"trial": {"dropout": 1.5}}),
    ("trial.dataset: set it with the top-level `datasets` key", {"trial": {"dataset": "ml-1m"}}),
    ("trial.seed: must be an integer", {"trial": {"seed": True}}),
    ("name: must be a name", {"name": "my sweep"}),
    ("datasets: missing", {"datasets": None}),
    ("datasets[1]: must be a dataset name", {"datasets": ["ml-100k", 3]}),
    ("memory_budget: ", {"memory_budget": "40G"}),
    ("memory_budget: ", {"memory_budget": "1.5"}),
    ("repeats: must be a positive integer", {"repeats": 0}),
    ("repeats: cannot be combined with axes.seed", {"repeats": 2, "axes": {"seed": [1, 2]}}),
    ("time_limit_s: must be positive", {"time_limit_s": -1}),
    ("time_limit_s: must be a finite number, got nan", {"time_limit_s": float("nan")}),
    ("time_limit_s: must be a finite number, got inf", {"time_limit_s": float("inf")}),
    ("trial.lr: must be a finite number", {"trial": {"lr": float("inf")}}),
    ("trial.weight_decay: must be a finite number", {"trial": {"weight_decay": float("nan")}}),
    ("search.kind: 'random' is not one of grid, optuna", {"search": {"kind": "random"}}),
    ("search.num_samples: an optuna search needs a positive integer", {"search": {"kind": "optuna"}}),
    ("search.num_samples: only an optuna search", {"search": {"num_samples": 3}}),
    ("search.sampler: 'cmaes' is not one of",
     {"search": {"kind": "optuna", "num_samples": 2, "sampler": "cmaes"}}),
    ("resources.gpus: must be a number >= 0", {"resources": {"gpus": -1}}),
    ("resources.gpus: above 1 must be a whole number", {"resources": {"gpus": 1.5}}),
    ("resources.cpus: must be a positive number", {"resources": {"cpus": 0}}),
    ("resources.gpu_memory: ", {"resources": {"gpu_memory": "lots"}}),
    ("resources.speed: unknown key", {"resources": {"speed": 3}}),
    ("run.trial_function: must look like", {"run": {"trial_function": "study.train.run_trial"}}),
    ("run.skip_predicted_over_budget: must be true or false", {"run": {"skip_predicted_over_budget": 1}}),
    ("extra_trials[0].split: set it with the top-level `split` key", {"extra_trials": [{"split": "loo"}]}),
    ("axes: the point", {"trial": {"hidden": 64}, "axes": {"heads": [1, 3]}}),
]


def _merge(base: dict, change: dict) -> dict:  # type: ignore[type-arg]
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            for inner, inner_value in value.items():
                if inner_value is None:
                    merged[key].pop(inner, None)
                else:
                    merged[key][inner] = inner_value
        elif value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


@pytest.mark.parametrize(("expected", "change"), BAD_SPECS, ids=[e for e, _ in BAD_SPECS])
def test_bad_specs_name_the_key(expected: str, change: dict) -> None:  # type: ignore[type-arg]
    values = _merge(tomllib.loads(MINIMAL), change)
    with pytest.raises(SpecError) as caught:
        parse_spec(values, source="bad.toml")
    assert str(caught.value).startswith("bad.toml: ")
    assert expected in str(caught.value)


def test_a_valid_base_passes_the_same_checks() -> None:
    # the bad-spec cases differ from this one only by their change: it must itself be valid
    assert len(parse_spec(tomllib.loads(MINIMAL)).grid()) == 6


def test_file_errors_name_the_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        load_spec(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text('name = "x"\naxes = = [1]\n')
    with pytest.raises(SpecError, match=r"broken.toml: not valid TOML: .*line"):
        load_spec(broken)


def test_packing_by_predicted_memory_needs_a_share_of_one_card() -> None:
    axes = {"num_negatives": [8], "batch_size": [8], "max_len": [8]}
    base = {"name": "p", "datasets": ["ml-1m"], "axes": axes}
    assert parse_spec({**base, "resources": {"gpus": 0.25, "pack_by_predicted_memory": True}}
                      ).resources.pack_by_predicted_memory
    with pytest.raises(SpecError, match="resources.pack_by_predicted_memory: needs resources.gpus"):
        parse_spec({**base, "resources": {"gpus": 2, "pack_by_predicted_memory": True}})
    with pytest.raises(SpecError, match="resources.pack_by_predicted_memory: must be true or false"):
        parse_spec({**base, "resources": {"gpus": 0.5, "pack_by_predicted_memory": "yes"}})


def test_a_non_utf8_file_is_named_with_the_line(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('name = "demo"\ndescription = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(SpecError, match=r"latin1.toml: line 2: not UTF-8 text \(byte 0xe9"):
        load_spec(latin1)


def test_toml_nan_and_inf_are_refused_from_the_file(tmp_path: Path) -> None:
    for value in ("nan", "inf", "+inf"):
        path = tmp_path / f"limit-{value}.toml"
        path.write_text(f"time_limit_s = {value}\n" + MINIMAL)
        with pytest.raises(SpecError, match=re.escape(f"{path.name}: time_limit_s: must be a finite number")):
            load_spec(path)


def test_config_refuses_non_finite_numbers() -> None:
    for name in ("time_limit_s", "lr", "weight_decay", "gbce_t", "dropout"):
        with pytest.raises(ValueError, match=f"{name}: must be a finite number"):
            TrainConfig(**{name: float("nan")})
    with pytest.raises(ValueError, match="time_limit_s: must be a finite number"):
        TrainConfig(time_limit_s=float("inf"))
