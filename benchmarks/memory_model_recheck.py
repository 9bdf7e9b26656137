"""Re-predict measured trials with the current memory model (no GPU needed).

    python3 benchmarks/memory_model_recheck.py \
        results/h200-2026-11-26b/run[45]-*/memory-validation/memory_validation.csv

Reads the CSVs that benchmarks/memory_validation.py wrote on a GPU (the measured torch max allocated,
reserved and process peak of each configuration, of either set), predicts each configuration again
with study/memory/model.py as it is now, and prints a Markdown table and the criterion of
memory_validation.py (median |error| <= 10%, none more than 10% under, none more than 25% over),
over the rows measured out of the model's sample. The latest row of a configuration wins when several
files hold it.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from memory_validation import SETS, summarise  # noqa: E402

from study.config import TrainConfig  # noqa: E402
from study.memory.model import DatasetSize, predict_trial_memory  # noqa: E402

GIB = 2**30


def measured_peak(row: dict[str, str]) -> float:
    """The process peak of a row: `measured_peak_bytes` (the CSVs of today's memory_validation.py), else
    `process_peak` (runs 4 and 5)."""
    return float(row.get("measured_peak_bytes") or row["process_peak"])


def main(paths: list[str]) -> int:
    measured: dict[str, dict[str, str]] = {}
    for path in paths:
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                if row["status"] == "ok":
                    measured[row["name"]] = row
    configs = {case["name"]: case for cases in SETS.values() for case in cases}
    print("| configuration | measured GiB | predicted GiB | error | allocated error |")
    print("| --- | ---: | ---: | ---: | ---: |")
    rows: list[dict[str, Any]] = []
    for name, row in measured.items():
        case = configs[name]
        config = TrainConfig.from_dict(case["config"])
        size = DatasetSize(int(row["num_items"]), int(row["num_users"]))
        prediction = predict_trial_memory(config, size, device="cuda")
        peak = measured_peak(row)
        error = (prediction.total_bytes - peak) / peak
        allocated = float(row["torch_max_allocated"])
        allocated_error = (prediction.torch_max_allocated - allocated) / allocated
        rows.append({"status": "ok", "error_measured_peak_bytes": error, "name": name,
                     "in_sample": bool(case.get("in_sample"))})
        print(f"| {name} | {peak / GIB:.2f} | {prediction.total_bytes / GIB:.2f} | {error:+.1%} | "
              f"{allocated_error:+.1%} |")
    summary = summarise(rows)
    measure = summary["measures"].get("measured_peak_bytes")
    if measure is None:
        print("\nno configuration measured out of the model's sample")
        return 0
    outside = sorted(row["name"] for row in rows if not -0.10 <= row["error_measured_peak_bytes"] <= 0.25)
    print(f"\n{measure['compared']} configurations out of sample: median |error| "
          f"{measure['median_abs_error']:.1%}, "
          f"worst under-prediction {measure['worst_under_prediction']:+.1%}, worst over-prediction "
          f"{measure['worst_over_prediction']:+.1%}; outside [-10%, +25%]: {', '.join(outside) or 'none'}; "
          f"criterion met: {summary['criterion_met']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
