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


def multi(cases: list[tuple[str, str, str, str]], last: bool = False):
    """One Python function that grades several cases from one run (e.g. a drain, which can happen
    only once per gateway). The function gets a Context and a dict to fill with
    id -> (grade, detail); cases it leaves unset take the grade of the exception that ended it."""
    from .engine import FAILED, Context, Fail, Unimplemented, UNIMPLEMENTED

    def deco(fn: Callable):
        key = f"{fn.__module__}.{fn.__name__}"

        def make(cid: str):
            def run(ctx):
                cache = ctx.opts.__dict__.setdefault("multi_cache", {})
                if key not in cache:
                    shared = Context(ctx.opts, cid)
                    results: dict = {}
                    try:
                        fn(shared, results)
                    except Unimplemented as e:
                        for c in cases:
                            results.setdefault(c[0], (UNIMPLEMENTED, str(e)))
                    except Exception as e:  # noqa: BLE001
                        for c in cases:
                            results.setdefault(c[0], (FAILED, f"not reached: {e}"))
                    finally:
                        shared.close_all()
                    for c in cases:
                        results.setdefault(c[0], (FAILED, "the scenario did not grade this case"))
                    cache[key] = results
                grade, detail = cache[key][cid]
                if grade == FAILED:
                    raise Fail(detail)
                if grade == UNIMPLEMENTED:
                    raise Unimplemented(detail)
                if grade == "NON-STRICT":
                    ctx.non_strict(detail)
            return run

        for cid, desc, exp, spec in cases:
            PY_CASES.append(Case(cid, desc, exp, spec, f"python:{fn.__module__}.{fn.__name__}", make(cid), last))
        return fn
    return deco
