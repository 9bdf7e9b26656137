"""Memory sizes: the byte units, budgets parsed from text ("40GiB", "0.5"), sizes written for people.

Imports nothing heavy (no torch), so parsing a budget in a command line or a sweep specification stays
cheap. Memory is in bytes everywhere in code and the database; these are the only conversions.
"""

from __future__ import annotations

import math
import re

KiB = 2**10
MiB = 2**20
GiB = 2**30
TiB = 2**40

# A budget below this is certainly a mistake (and a plain integer below it is more likely a
# mistyped fraction than a byte count).
MIN_BUDGET_BYTES = MiB

_BINARY_UNITS = {"kib": KiB, "mib": MiB, "gib": GiB, "tib": TiB}
_DECIMAL_UNITS = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_BYTE_UNITS = {"b": 1, "byte": 1, "bytes": 1}
_UNITS = {**_BINARY_UNITS, **_DECIMAL_UNITS, **_BYTE_UNITS}
_BUDGET_PATTERN = re.compile(
    r"^\s*(?P<number>[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(?P<unit>[A-Za-z%]*)\s*$"
)


def format_bytes(num_bytes: int | float | None) -> str:
    """Bytes as text for people: "1.50 GiB", "300.00 MiB", "12 B"; "-" for an unknown size (None)."""
    if num_bytes is None:
        return "-"
    for unit, size in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(num_bytes) >= size:
            return f"{num_bytes / size:.2f} {unit}"
    return f"{int(num_bytes)} B"


def format_gib(num_bytes: float | None) -> str:
    """Bytes in GiB with three significant digits, for tables: "1.5 GiB"; "-" for None or NaN."""
    if num_bytes is None or (isinstance(num_bytes, float) and math.isnan(num_bytes)):
        return "-"
    return f"{num_bytes / GiB:.3g} GiB"


def parse_budget(text: str, total_bytes: int | None) -> int:
    """Parse a memory budget into bytes.

    Accepted forms (units are case-insensitive, a space before the unit is allowed):
    - binary sizes "40GiB", "8000 MiB", "512KiB", "1TiB";
    - decimal sizes "1.5GB", "500MB" (GB = 10^9 bytes, as on the card's box);
    - "100B" / "100 bytes";
    - a fraction of the card, "0.5" (a plain number in (0, 1]), or a percentage "50%";
      both need `total_bytes`, the card's total memory;
    - a plain integer greater than 1 is a byte count, and must be at least 1 MiB, since a smaller
      one is almost surely a mistyped fraction or a missing unit.
    Single-letter units ("40G") are refused because they are ambiguous between GiB and GB.
    Any budget below 1 MiB is refused. Errors raise ValueError naming `memory_budget` and the text.
    """
    if not isinstance(text, str):
        raise ValueError(f"memory_budget: expected text such as '40GiB', got {text!r}")
    match = _BUDGET_PATTERN.match(text)
    if match is None:
        raise ValueError(
            f"memory_budget: cannot parse {text!r}; write e.g. '40GiB', '8000MiB', '1.5GB' or '0.5'"
        )
    number = float(match["number"])
    unit = match["unit"].lower()
    if unit == "%" or (unit == "" and number <= 1.0):
        fraction = number / 100.0 if unit == "%" else number
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"memory_budget: {text!r} is not a fraction of the card in (0, 1] (or 0-100%)")
        if total_bytes is None:
            raise ValueError(
                f"memory_budget: {text!r} is a fraction of the card, but the card's total memory is unknown "
                "(no GPU); give an absolute size such as '40GiB'"
            )
        budget = round(fraction * total_bytes)
    elif unit == "":
        if not number.is_integer():
            raise ValueError(
                f"memory_budget: {text!r} is neither a fraction in (0, 1] nor a whole number of bytes; "
                "add a unit"
            )
        budget = int(number)
    elif unit in _UNITS:
        budget = round(number * _UNITS[unit])
    else:
        raise ValueError(
            f"memory_budget: unknown unit {match['unit']!r} in {text!r}; use one of "
            "B, KiB, MiB, GiB, TiB, KB, MB, GB, TB, % or a fraction such as 0.5"
        )
    if budget < MIN_BUDGET_BYTES:
        raise ValueError(f"memory_budget: {text!r} is {budget} bytes, below the minimum of 1 MiB")
    return budget


__all__ = ["KiB", "MiB", "GiB", "TiB", "MIN_BUDGET_BYTES", "format_bytes", "format_gib", "parse_budget"]
