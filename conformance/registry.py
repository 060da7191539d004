"""Python scenarios (those that need logic) register here with the same id scheme as the files."""
from __future__ import annotations

from typing import Callable

from .engine import Case

PY_CASES: list[Case] = []


def scenario(id: str, description: str, expectation: str, spec: str = "", last: bool = False):
    def deco(fn: Callable):
        PY_CASES.append(Case(id, description, expectation, spec, f"python:{fn.__module__}.{fn.__name__}", fn,
                             last))
        return fn
    return deco
