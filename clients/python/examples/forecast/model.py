"""A small deterministic model: forecast next week's open issues of a project from the metrics of
its latest export, and a 0..1 risk that the backlog grows.

    forecast = open + opened_last_week * a - closed_last_week * b
    risk     = logistic(w0 + w1 * (opened - closed) / max(open, 1))

The coefficients can be refitted from history with ``python -m forecast train FILE.jsonl`` (ordinary
least squares on two features, closed form, no dependencies).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Coefficients:
    a: float = 0.9    # share of last week's opened issues that stay open
    b: float = 0.95   # share of last week's closing rate that repeats
    w0: float = -0.5
    w1: float = 4.0


DEFAULT = Coefficients()


def score(event: dict, c: Coefficients = DEFAULT) -> dict:
    """Score one "export finished" event. Raises ValueError for an event without the metrics."""
    try:
        open_ = int(event["open_issues"])
        opened = int(event["opened_last_week"])
        closed = int(event["closed_last_week"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"event lacks the metrics open_issues, opened_last_week, closed_last_week: {e}") from None
    forecast = max(0.0, open_ + c.a * opened - c.b * closed)
    growth = (opened - closed) / max(open_, 1)
    risk = 1.0 / (1.0 + math.exp(-(c.w0 + c.w1 * growth)))
    return {
        "id": event.get("id"),
        "project": event.get("project"),
        "open_issues": open_,
        "forecast_open_next_week": round(forecast, 2),
        "risk": round(risk, 4),
    }


def fit(rows: list[dict]) -> Coefficients:
    """Least squares for a, b in: next_open - open = a * opened - b * closed."""
    sxx = sxy = syy = sxz = syz = 0.0
    for r in rows:
        x, y = float(r["opened_last_week"]), -float(r["closed_last_week"])
        z = float(r["next_open"]) - float(r["open_issues"])
        sxx += x * x
        sxy += x * y
        syy += y * y
        sxz += x * z
        syz += y * z
    det = sxx * syy - sxy * sxy
    if abs(det) < 1e-12:
        return DEFAULT
    a = (sxz * syy - syz * sxy) / det
    b = (syz * sxx - sxz * sxy) / det
    return Coefficients(a=round(a, 4), b=round(b, 4), w0=DEFAULT.w0, w1=DEFAULT.w1)


def dumps(c: Coefficients) -> str:
    return json.dumps(asdict(c))
