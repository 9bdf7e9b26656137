"""The study's sweep specifications (sweeps/study-*.toml, STUDY.md): each loads, and every trial of a seeds
spec repeats a configuration of a grid spec with another seed. `cce-study study-report` aggregates seeds by
configuration, so a seeds spec whose training setup drifted from its grid's (a setting missed when copying
it) would run on the GPU as configurations of their own, each with one seed, and be found only in the report.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from study.config import TrainConfig
from study.sweep.spec import SweepSpec, load_spec

REPO_ROOT = Path(__file__).resolve().parents[1]
STUDY_SPECS = sorted((REPO_ROOT / "sweeps").glob("study-*.toml"))
SEEDS_SPEC = re.compile(r"seeds(-\d+)?$")  # study-games-seeds, study-ml1m-frontier-seeds-2, ...


def _configuration(config: TrainConfig) -> tuple[tuple[str, str], ...]:
    values = config.to_dict()
    values.pop("seed")
    return tuple(sorted((name, repr(value)) for name, value in values.items()))


@pytest.fixture(scope="module")
def specs() -> dict[str, SweepSpec]:
    return {path.stem: load_spec(path) for path in STUDY_SPECS}


@pytest.mark.parametrize("path", STUDY_SPECS, ids=lambda p: p.name)
def test_each_study_spec_loads(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name == path.stem and spec.grid()


def test_every_seed_trial_repeats_a_grid_configuration_with_a_new_seed(specs: dict[str, SweepSpec]) -> None:
    grids = [name for name in specs if not SEEDS_SPEC.search(name)]
    seeds_specs = [name for name in specs if SEEDS_SPEC.search(name)]
    assert grids and seeds_specs
    seeds_of: dict[tuple[tuple[str, str], ...], dict[int, str]] = {}
    for name in grids:
        for config in specs[name].grid():
            seeds_of.setdefault(_configuration(config), {})[config.seed] = name
    for name in seeds_specs:
        for config in specs[name].grid():
            ran = seeds_of.get(_configuration(config))
            assert ran is not None, (f"{name}: {config.loss_impl} K={config.num_negatives} "
                                     f"B={config.batch_size} L={config.max_len} is no grid's configuration")
            assert config.seed not in ran, f"{name}: seed {config.seed} already in {ran[config.seed]}"
            ran[config.seed] = name


def test_the_weighted_draw_reruns_the_scopes_sweep_drawn_configurations(specs: dict[str, SweepSpec]) -> None:
    # The report sets these rows beside the scopes sweep's per position and unweighted draw: a drifted
    # setting would make them configurations of their own.
    def trials(name: str) -> set[tuple[tuple[str, str], ...]]:
        return {_configuration(config) + (("seed", repr(config.seed)),) for config in specs[name].grid()
                if config.negative_scope == "drawn"}

    rerun, scopes = trials("study-ml1m-drawn-weighted"), trials("study-ml1m-scopes")
    assert rerun == scopes and len(rerun) == 9
