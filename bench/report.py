"""Figures: rows, percentiles, the aligned table and the JSON file."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Row:
    """One figure: sqsd's value, the raw boto3 loop's (when it has one) and the target."""

    scenario: str
    metric: str
    sqsd: float | None
    raw: float | None = None
    unit: str = ""
    target: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """sqsd / raw, when both are known."""
        if self.sqsd is None or not self.raw:
            return None
        return self.sqsd / self.raw

    def to_json(self) -> dict[str, Any]:
        """The row as a JSON-ready dict, ratio included."""
        return {**asdict(self), "ratio": self.ratio}


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) with linear interpolation between ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def spread(values: list[float]) -> dict[str, float]:
    """p50, p99, max, mean and count of a sample."""
    return {
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
        "mean": sum(values) / len(values) if values else math.nan,
        "n": len(values),
    }


def format_value(value: float | None, unit: str = "") -> str:
    """A figure with about three significant digits and its unit."""
    if value is None:
        return "—"
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 1000:
        text = f"{value:,.0f}"
    elif magnitude >= 100 or float(value).is_integer():
        text = f"{value:.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    elif magnitude >= 0.1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".rstrip()


def render_table(rows: list[Row]) -> str:
    """The rows as one aligned text table."""
    header = ("scenario", "metric", "sqsd", "raw boto3 loop", "ratio", "target")
    lines = [header]
    for row in rows:
        ratio = row.ratio
        lines.append(
            (
                row.scenario,
                row.metric,
                format_value(row.sqsd, row.unit),
                format_value(row.raw, row.unit),
                "—" if ratio is None else f"{ratio:.2f}×",
                row.target or "—",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = {2, 3, 4}

    def render(line: tuple[str, ...]) -> str:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(line)
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([render(lines[0]), rule, *(render(line) for line in lines[1:])])


def write_json(path: Path, meta: dict[str, Any], rows: list[Row], methods: dict[str, str]) -> None:
    """Write the run's metadata, method notes and rows to ``path``."""
    document = {"meta": meta, "methods": methods, "results": [row.to_json() for row in rows]}
    path.write_text(json.dumps(_finite(document), indent=2, default=str) + "\n")


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
