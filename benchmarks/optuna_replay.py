"""Would an Optuna search have found the grid's answers in fewer trials? A replay against recorded grids.

    PYTHONPATH=$PWD python benchmarks/optuna_replay.py \
        --db results/study/study-ml1m.sqlite --spec sweeps/study-ml1m.toml \
        --db results/study/study-beauty.sqlite --spec sweeps/study-beauty.toml \
        --db results/study/study-games.sqlite --spec sweeps/study-games.toml \
        --seeds 20 --out results/study/optuna-replay

The replay runs the search `cce-study sweep` runs for `[search] kind = "optuna"` (study/sweep/driver.py):
the same sampler (`optuna_sampler`: multivariate TPE or NSGA-II, seeded), the same search space
(`optuna_distributions`: a categorical distribution per axis), the same objectives told in the same order
(`optuna_values` of the trial's `final_result`: val NDCG@10 up, peak GiB down) and the same constraint
(`set_optuna_constraint`: GiB over the sweep's budget, <= 0 feasible; a trial that is not `ok`, such as
`predicted_over_budget`, counts as quality 0 and infeasible). Instead of training, each suggested
configuration gets the result its grid trial recorded (its row's record, through `final_result`, exactly
what the sweep would have told Optuna had the trial ended that way). Optuna's ask/tell is called directly,
as Ray Tune's OptunaSearch calls it (`study.ask(fixed_distributions=...)`, then `study.tell`); no Ray.

Repeats: the sweep answers a configuration Optuna draws again from its record (the sampler is told the
recorded result and draws anew; after `OPTUNA_KNOWN_DRAWS` known draws in a row the last one is trained
again) and ends once every configuration has a result; the replay does the same, so a trial is a
configuration trained. A configuration drawn while the same one is still pending (concurrency > 1) has no
result yet and is trained twice, in the sweep as here. (Until 2026-11-29 the sweep trained every draw, repeats
included: on these grids TPE then drew about 17 distinct configurations in its first 24 trials.)

Concurrency: the sweep runs several trials at once (Tune asks the searcher for a new trial whenever a
slot is free, before the running ones are told). `--concurrency C` models C slots: the replay asks until C
trials are pending, then tells the oldest one. C = 1 is the sequential search, the best case for a
sampler that learns from what it is told.

Slices: only grids where every configuration has a row (a missing row would be a result the sweep never
produced). From each database, `complete_slices` takes: each `loss_impl` grid on its own where it is
complete; all axes together where complete; else both implementations over the `num_negatives` values at
which both grids are complete (when at least two are). The slice's search space is its axes (a fixed
`loss_impl` is not an axis).

Measured per (slice, method, concurrency, seed), against a random order of the grid (no repeats) as the
baseline: trials until the best configuration under each budget (8, 16, 40 GiB of recorded peak) is
suggested, until a configuration within `--tolerance` val NDCG@10 of that best is, until 50% and 100% of
the grid's Pareto frontier (val NDCG@10 up, peak memory down, over the `ok` trials) are; and the fraction
of the frontier found after n trials for n = 1..grid size. A search runs up to `--max-trials-factor` x the
grid size trials (it ends sooner once every configuration has a result); a target not reached is left
empty (counted as not found in the summary). Beside each count of trials, the distinct configurations among
them (`distinct_to_*`): fewer only where a configuration was drawn again while still pending.

Outputs in --out: replay-runs.csv (a row per slice, method, concurrency and seed), replay-summary.csv
(median and quartiles over seeds of each measure), replay-summary.md (the table of medians),
replay-frontier.csv (the frontier fraction after n trials: median and quartiles over seeds) and
replay-frontier.png (that fraction vs trials, a panel per slice).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import math
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from study.analysis.pareto import non_dominated  # noqa: E402
from study.database.results_db import load_trials  # noqa: E402
from study.record import TrialRecord  # noqa: E402
from study.sweep.driver import (  # noqa: E402
    OPTUNA_KNOWN_DRAWS,
    OPTUNA_OBJECTIVES,
    optuna_distributions,
    optuna_sampler,
    optuna_values,
    set_optuna_constraint,
)
from study.sweep.spec import OptunaSampler, SweepSpec, load_spec  # noqa: E402
from study.sweep.trial import CONSTRAINT_KEY, MEMORY_KEY, QUALITY_KEY, final_result  # noqa: E402

SAMPLERS: tuple[str, ...] = ("tpe", "nsga2")
RANDOM = "random"
BUDGETS_GIB: tuple[int, ...] = (8, 16, 40)
TOLERANCE = 0.002  # val NDCG@10: about the spread over seeds the study measured
FRONTIER_SHARES: tuple[float, ...] = (0.5, 1.0)

Point = tuple[Any, ...]  # a configuration: its values of the slice's axes, in axis order


@dataclass(frozen=True)
class GridSlice:
    """A complete grid: the spec restricted to the slice's axes, and each configuration's final result."""

    name: str
    spec: SweepSpec  # its axes are the slice's search space
    results: dict[Point, dict[str, Any]]  # what the sweep would tell Optuna for each configuration

    @property
    def size(self) -> int:
        return len(self.results)

    def point(self, params: dict[str, Any]) -> Point:
        return tuple(params[f"axes/{name}"] for name, _ in self.spec.axes)


@dataclass(frozen=True)
class Targets:
    """What a search should find in a slice: the best configurations under each budget (ties all count),
    those within the tolerance of each best, and the Pareto frontier."""

    best: dict[int, frozenset[Point]]  # budget GiB -> the best configuration(s) under it
    near: dict[int, frozenset[Point]]  # budget GiB -> configurations within the tolerance of the best
    frontier: frozenset[Point]


def feasible(result: dict[str, Any]) -> bool:
    return result["status"] == "ok" and float(result[CONSTRAINT_KEY]) <= 0


def targets_of(grid: GridSlice, budgets_gib: Sequence[int] = BUDGETS_GIB,
               tolerance: float = TOLERANCE) -> Targets:
    points = [p for p, result in grid.results.items() if feasible(result)]
    quality = {p: float(grid.results[p][QUALITY_KEY]) for p in points}
    memory = {p: float(grid.results[p][MEMORY_KEY]) for p in points}
    best: dict[int, frozenset[Point]] = {}
    near: dict[int, frozenset[Point]] = {}
    for budget in budgets_gib:
        fits = [p for p in points if memory[p] <= budget]
        if not fits:
            best[budget] = near[budget] = frozenset()
            continue
        top = max(quality[p] for p in fits)
        best[budget] = frozenset(p for p in fits if quality[p] == top)
        near[budget] = frozenset(p for p in fits if quality[p] >= top - tolerance)
    objectives = np.array([[quality[p], memory[p]] for p in points], dtype=np.float64).reshape(-1, 2)
    mask = non_dominated(objectives, maximize=[True, False])
    return Targets(best, near, frozenset(p for p, on in zip(points, mask) if on))


def replay_directions() -> list[Any]:
    """The study's directions: the sweep's objectives' modes, as Ray Tune's OptunaSearch turns them."""
    from optuna.study import StudyDirection

    return [StudyDirection.MAXIMIZE if mode == "max" else StudyDirection.MINIMIZE
            for _, mode in OPTUNA_OBJECTIVES]


def replay_optuna(grid: GridSlice, sampler: str, seed: int, num_trials: int, *,
                  concurrency: int = 1) -> list[Point]:
    """The configurations an Optuna search of the slice trains, in order, up to `num_trials` of them, with
    `concurrency` trials pending at a time (the oldest is told first); draws of configurations already told
    are answered from their result, as the sweep answers them from its record."""
    import optuna

    search = dataclasses.replace(grid.spec.search, kind="optuna", sampler=cast(OptunaSampler, sampler),
                                 seed=seed, num_samples=num_trials)
    study = optuna.create_study(  # as Ray Tune's OptunaSearch creates it
        sampler=optuna_sampler(search), pruner=optuna.pruners.NopPruner(), directions=replay_directions())
    space = optuna_distributions(grid.spec)
    suggested: list[Point] = []
    pending: deque[tuple[Any, Point]] = deque()
    known: set[Point] = set()

    def tell(ot_trial: Any, point: Point) -> None:
        result = grid.results[point]
        set_optuna_constraint(ot_trial, result)
        study.tell(ot_trial, optuna_values(result))
        known.add(point)

    def draw() -> tuple[Any, Point] | None:  # the sweep searcher's suggest
        for attempt in range(OPTUNA_KNOWN_DRAWS):
            if len(known) >= grid.size:
                return None  # every configuration has a result: the search is finished
            ot_trial = study.ask(fixed_distributions=space)
            point = grid.point(ot_trial.params)
            if point not in known or attempt == OPTUNA_KNOWN_DRAWS - 1:
                return ot_trial, point
            tell(ot_trial, point)
        raise AssertionError("unreachable")

    while len(suggested) < num_trials:
        drawn = draw()
        if drawn is None:
            break
        suggested.append(drawn[1])
        pending.append(drawn)
        if len(pending) >= concurrency:
            tell(*pending.popleft())
    return suggested


def random_order(grid: GridSlice, seed: int) -> list[Point]:
    """The grid in a random order (the baseline: each configuration once)."""
    points = sorted(grid.results, key=repr)
    order = np.random.default_rng(seed).permutation(len(points))
    return [points[i] for i in order]


def trials_until(sequence: Sequence[Point], wanted: frozenset[Point], share: float = 0.0) -> int | None:
    """1-based number of trials after which the sequence has suggested any of `wanted` (share 0) or at
    least `share` of them; None if it never does."""
    if not wanted:
        return None
    needed = 1 if share <= 0 else math.ceil(share * len(wanted) - 1e-9)
    seen: set[Point] = set()
    for n, point in enumerate(sequence, start=1):
        if point in wanted:
            seen.add(point)
            if len(seen) >= needed:
                return n
    return None


def frontier_found(sequence: Sequence[Point], frontier: frozenset[Point], length: int) -> list[int]:
    """Frontier configurations suggested after n trials, n = 1..length."""
    seen: set[Point] = set()
    found = []
    for point in sequence[:length]:
        if point in frontier:
            seen.add(point)
        found.append(len(seen))
    return found


def measure(sequence: Sequence[Point], targets: Targets, grid_size: int) -> dict[str, Any]:
    """`trials_to_<target>`: trials (configurations trained) until the target is reached, what the sweep
    pays; `distinct_to_<target>`: the distinct configurations among them (fewer only where a configuration
    was drawn again while still pending)."""
    reached: dict[str, int | None] = {}
    for budget, best in targets.best.items():
        reached[f"best_{budget}gib"] = trials_until(sequence, best)
        reached[f"near_{budget}gib"] = trials_until(sequence, targets.near[budget])
    for share in FRONTIER_SHARES:
        reached[f"frontier_{round(share * 100)}pct"] = trials_until(sequence, targets.frontier, share)
    row: dict[str, Any] = {f"trials_to_{name}": n for name, n in reached.items()}
    row.update({f"distinct_to_{name}": None if n is None else len(set(sequence[:n]))
                for name, n in reached.items()})
    row["distinct_in_grid_size_trials"] = len(set(sequence[:grid_size]))
    return row


# ---------------------------------------------------------------------------------------------------------
# Slices from a results database


def grid_results(spec: SweepSpec, trials: pd.DataFrame) -> dict[Point, list[dict[str, Any]]]:
    """Every configuration of the spec's full grid (its axes' values) -> the final results of its rows."""
    names = [name for name, _ in spec.axes]
    found: dict[Point, list[dict[str, Any]]] = {p: [] for p in itertools.product(*(v for _, v in spec.axes))}
    for _, row in trials.iterrows():
        config = json.loads(row["config_json"])
        point = tuple(config.get(name) for name in names)
        if point in found:
            record = TrialRecord.from_dict(json.loads(row["record_json"]))
            found[point].append(final_result(row["trial_id"], record))
    return found


def sub_slice(spec: SweepSpec, found: dict[Point, list[dict[str, Any]]], name: str,
              values: dict[str, tuple[Any, ...]]) -> GridSlice | None:
    """The slice whose axes take `values` (an axis given one value is fixed, not searched); None unless
    each of its configurations has exactly one row."""
    names = [axis for axis, _ in spec.axes]
    axes = tuple((axis, values.get(axis, choices)) for axis, choices in spec.axes)
    searched = tuple((axis, choices) for axis, choices in axes if len(choices) > 1)
    results: dict[Point, dict[str, Any]] = {}
    for full in itertools.product(*(choices for _, choices in axes)):
        rows = found[full]
        if len(rows) != 1:
            return None
        by_axis = dict(zip(names, full))
        results[tuple(by_axis[axis] for axis, _ in searched)] = rows[0]
    return GridSlice(name, dataclasses.replace(spec, axes=searched), results)


def complete_slices(spec: SweepSpec, trials: pd.DataFrame, label: str) -> list[GridSlice]:
    """Each `loss_impl` alone where complete; all axes where complete, else both implementations over
    the `num_negatives` values where every configuration has a row (at least two values)."""
    found = grid_results(spec, trials)
    axes = dict(spec.axes)
    slices = []
    impls = axes.get("loss_impl", ())
    for impl in impls:
        grid = sub_slice(spec, found, f"{label} {impl}", {"loss_impl": (impl,)})
        if grid is not None:
            slices.append(grid)
    whole = sub_slice(spec, found, f"{label} all", {})
    if whole is not None:
        return slices + [whole] if len(impls) > 1 or not slices else slices
    if len(impls) > 1 and "num_negatives" in axes:
        complete_k = tuple(k for k in axes["num_negatives"]
                           if sub_slice(spec, found, "", {"num_negatives": (k,)}) is not None)
        if len(complete_k) >= 2:
            grid = sub_slice(spec, found, f"{label} both K<={max(complete_k)}", {"num_negatives": complete_k})
            if grid is not None:
                slices.append(grid)
    return slices


# ---------------------------------------------------------------------------------------------------------
# The experiment


def run_slice(grid: GridSlice, seeds: Sequence[int], concurrencies: Sequence[int],
              max_trials: int) -> list[dict[str, Any]]:
    """A row per method, concurrency and seed on one slice; `frontier_found_after` lists the frontier
    configurations found after each of the first N trials (N = grid size), space-separated."""
    targets = targets_of(grid)
    runs: list[dict[str, Any]] = []
    methods: list[tuple[str, int]] = [(RANDOM, 1)] + [(s, c) for s in SAMPLERS for c in concurrencies]
    for method, concurrency in methods:
        for seed in seeds:
            if method == RANDOM:
                sequence = random_order(grid, seed)
            else:
                sequence = replay_optuna(grid, method, seed, max_trials, concurrency=concurrency)
            key = {"slice": grid.name, "method": method, "concurrency": concurrency, "seed": seed}
            curve = frontier_found(sequence, targets.frontier, grid.size)
            runs.append({**key, "grid_size": grid.size, "frontier_size": len(targets.frontier),
                         "trials_run": len(sequence), **measure(sequence, targets, grid.size),
                         "frontier_found_after": " ".join(map(str, curve))})
    return runs


def frontier_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Median and quartiles over seeds of the fraction of the frontier found after n trials, n = 1..N."""
    rows = []
    for (slice_name, method, concurrency), group in runs.groupby(["slice", "method", "concurrency"],
                                                                  sort=False):
        found = np.array([[int(v) for v in text.split()] for text in group["frontier_found_after"]])
        fractions = found / group["frontier_size"].to_numpy()[:, None]
        q25, median, q75 = np.quantile(fractions, [0.25, 0.5, 0.75], axis=0)
        for n in range(fractions.shape[1]):
            rows.append({"slice": slice_name, "method": method, "concurrency": concurrency, "trials": n + 1,
                         "median": median[n], "q25": q25[n], "q75": q75[n]})
    return pd.DataFrame(rows)


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Median and quartiles over seeds of each measure; a run that never reached a target counts as
    infinitely many trials (so a median past the runs' length reads inf) and in `not_found`."""
    measures = [c for c in runs.columns if c.startswith(("trials_to_", "distinct_"))]
    rows = []
    for (slice_name, method, concurrency), group in runs.groupby(["slice", "method", "concurrency"],
                                                                  sort=False):
        for measure_name in measures:
            values = pd.to_numeric(group[measure_name], errors="coerce").astype("float64")
            filled = values.fillna(math.inf).to_numpy()
            rows.append({
                "slice": slice_name, "method": method, "concurrency": concurrency, "measure": measure_name,
                "grid_size": int(group["grid_size"].iloc[0]),
                "frontier_size": int(group["frontier_size"].iloc[0]),
                "trials_run": int(group["trials_run"].max()), "seeds": len(group),
                "median": quantile(filled, 0.5, "lower"), "q25": quantile(filled, 0.25, "lower"),
                "q75": quantile(filled, 0.75, "higher"),
                "not_found": int(values.isna().sum()),
            })
    return pd.DataFrame(rows)


def quantile(values: np.ndarray, q: float, towards: Literal["lower", "higher"]) -> float:
    """A quantile over seeds, interpolated unless a value is inf (not found), where interpolating would
    give inf or nan: then the nearest value `towards` "lower" or "higher"."""
    method: Literal["lower", "higher", "linear"] = towards if np.isinf(values).any() else "linear"
    return float(np.quantile(values, q, method=method))


def markdown_table(summary: pd.DataFrame) -> str:
    """Medians [quartiles] per slice and method: the columns the study's report quotes."""
    columns = [("best 8", "trials_to_best_8gib"), ("best 16", "trials_to_best_16gib"),
               ("best 40", "trials_to_best_40gib"), ("near 8", "trials_to_near_8gib"),
               ("near 16", "trials_to_near_16gib"), ("near 40", "trials_to_near_40gib"),
               ("50% frontier", "trials_to_frontier_50pct"), ("100% frontier", "trials_to_frontier_100pct"),
               ("distinct in N", "distinct_in_grid_size_trials"),
               ("distinct to best 40", "distinct_to_best_40gib"),
               ("distinct to 100% frontier", "distinct_to_frontier_100pct")]
    header = ["slice (N, frontier)", "method"] + [title for title, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    indexed = {(row["slice"], row["method"], row["concurrency"], row["measure"]): row
               for row in summary.to_dict("records")}
    for (slice_name, method, concurrency), group in summary.groupby(["slice", "method", "concurrency"],
                                                                     sort=False):
        first = group.iloc[0]
        cells = [f"{slice_name} ({first['grid_size']}, {first['frontier_size']})",
                 method if method == RANDOM else f"{method} c={concurrency}"]
        for _, measure_name in columns:
            row = indexed[(slice_name, method, concurrency, measure_name)]
            cells.append(f"{fmt(row['median'])} [{fmt(row['q25'])}-{fmt(row['q75'])}]"
                         + (f" ({int(row['not_found'])} nf)" if row["not_found"] else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def fmt(value: float) -> str:
    if math.isinf(value):
        return "nf"
    return f"{value:g}"


def plot(curves: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slices = list(dict.fromkeys(curves["slice"]))
    columns = min(3, len(slices))
    rows = math.ceil(len(slices) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False,
                                sharey=True)
    colours = {"tpe": "tab:blue", "nsga2": "tab:orange", RANDOM: "tab:gray"}
    labels = {"tpe": "TPE", "nsga2": "NSGA-II", RANDOM: "random order"}
    for ax, slice_name in zip(axes.flat, slices):
        group = curves[curves["slice"] == slice_name]
        for (method, concurrency), stats in group.groupby(["method", "concurrency"], sort=False):
            style = "-" if concurrency == 1 else "--"
            label = labels[str(method)] + ("" if method == RANDOM else f", {concurrency} at a time")
            ax.plot(stats["trials"], stats["median"], style, color=colours[str(method)], label=label)
            if concurrency == 1:
                ax.fill_between(stats["trials"], stats["q25"], stats["q75"], color=colours[str(method)],
                                alpha=0.15)
        ax.set_title(slice_name)
        ax.set_xlabel("trials (configurations trained)")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("frontier found (median, quartiles)")
    for ax in list(axes.flat)[len(slices):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--db", action="append", required=True, type=Path,
                        help="a results database of a grid sweep (repeat; paired with --spec in order)")
    parser.add_argument("--spec", action="append", required=True, type=Path,
                        help="the sweep specification of the --db at the same position")
    parser.add_argument("--seeds", type=int, default=20, help="sampler seeds 0..N-1 per method (default 20)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8],
                        help="trials pending at once in the Optuna replays (default 1 8)")
    parser.add_argument("--max-trials-factor", type=float, default=2.0,
                        help="each Optuna replay runs this many times the grid size trials (default 2)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the CSVs, table and figure")
    args = parser.parse_args(argv)
    if len(args.db) != len(args.spec):
        parser.error(f"--db and --spec: {len(args.db)} database(s) but {len(args.spec)} spec(s); give them "
                     "in pairs")
    if args.seeds < 1:
        parser.error("--seeds: must be at least 1")
    if any(c < 1 for c in args.concurrency):
        parser.error("--concurrency: every value must be at least 1")
    if args.max_trials_factor < 1:
        parser.error("--max-trials-factor: must be at least 1 (a search of fewer trials than the grid)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    grids: list[GridSlice] = []
    for db, spec_path in zip(args.db, args.spec):
        try:
            spec = load_spec(spec_path)
            trials = load_trials(db, sweep=spec.name)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if trials.empty:
            print(f"error: --db {db}: no trials of sweep {spec.name!r}", file=sys.stderr)
            return 2
        label = spec.name.removeprefix("study-")
        found = complete_slices(spec, trials, label)
        print(f"{db}: {len(trials)} rows; complete slices: "
              + (", ".join(f"{g.name} ({g.size})" for g in found) or "none"), file=sys.stderr)
        grids += found
    if not grids:
        print("error: no complete grid slice in the databases given", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    seeds = list(range(args.seeds))
    for grid in grids:
        started = time.monotonic()
        runs += run_slice(grid, seeds, args.concurrency, math.ceil(args.max_trials_factor * grid.size))
        print(f"{grid.name}: {time.monotonic() - started:.0f} s", file=sys.stderr)
    runs_frame = pd.DataFrame(runs)
    curves_frame = frontier_curves(runs_frame)
    summary = summarise(runs_frame)
    runs_frame.to_csv(args.out / "replay-runs.csv", index=False, quoting=csv.QUOTE_MINIMAL)
    curves_frame.to_csv(args.out / "replay-frontier.csv", index=False, float_format="%.4g")
    summary.to_csv(args.out / "replay-summary.csv", index=False)
    table = markdown_table(summary)
    (args.out / "replay-summary.md").write_text(
        "Median [quartiles] over seeds of the trials (configurations trained) each method needed to "
        "suggest the best configuration under 8 / 16 / 40 GiB, one within the tolerance of it (near), half "
        "and all of the Pareto frontier; `distinct`: distinct configurations among those trials. nf: not "
        "found within the replay's trials (`trials_run` in replay-summary.csv). N: grid size; frontier: "
        "its Pareto configurations; c: trials pending at once.\n\n" + table)
    plot(curves_frame, args.out / "replay-frontier.png")
    print(table)
    return 0


__all__ = ["GridSlice", "Targets", "targets_of", "replay_directions", "replay_optuna", "random_order",
           "trials_until", "frontier_found", "frontier_curves", "measure", "complete_slices", "sub_slice",
           "run_slice", "summarise", "quantile", "markdown_table", "plot", "main"]

if __name__ == "__main__":
    sys.exit(main())
