"""Re-predict measured trials with the current memory model (no GPU needed).

    python3 benchmarks/memory_model_recheck.py \
        results/h200-2026-11-26b/run[45]-*/memory-validation/memory_validation.csv

Reads the CSVs that benchmarks/memory_validation.py wrote on a GPU (the measured torch max allocated,
reserved and NVML process peak of each configuration), predicts each configuration again with
study/memory_model.py as it is now, and prints a Markdown table and the done-criterion summary.
The latest row of a configuration wins when several files hold it.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from memory_validation import CASES, CRITERION_UNDER, summarise  # noqa: E402

from study.config import TrainConfig  # noqa: E402
from study.memory_model import predict_peak_bytes  # noqa: E402

GIB = 2**30


def main(paths: list[str]) -> int:
    measured: dict[str, dict[str, str]] = {}
    for path in paths:
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                if row["status"] == "ok":
                    measured[row["name"]] = row
    configs = {case["name"]: case["config"] for case in CASES}
    print("| configuration | measured process GiB | predicted GiB | error |")
    print("| --- | ---: | ---: | ---: |")
    errors: dict[str, float] = {}
    for name, row in measured.items():
        config = TrainConfig.from_dict(configs[name])
        prediction = predict_peak_bytes(config, int(row["num_items"]), num_users=int(row["num_users"]),
                                        device="cuda")
        process = float(row["process_peak"])
        errors[name] = (prediction.total_bytes - process) / process
        print(f"| {name} | {process / GIB:.2f} | {prediction.total_bytes / GIB:.2f} | {errors[name]:+.1%} |")
    # The criterion as benchmarks/memory_validation.py states it, on the re-predicted errors.
    headline = summarise([{"status": "ok", "error_process_peak": e} for e in errors.values()])
    measure = headline["measures"]["process_peak"]
    under = sorted(name for name, e in errors.items() if e < CRITERION_UNDER)
    print(f"\n{len(errors)} configurations: median |error| {measure['median_abs_error']:.1%}, worst "
          f"under-prediction {measure['worst_under_prediction']:+.1%}, more than 10% under: "
          f"{', '.join(under) or 'none'}; criterion met: {headline['criterion_met']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
