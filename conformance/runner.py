"""python -m conformance: grade a busgate gateway against docs/protocol.md."""
from __future__ import annotations

import argparse
import fnmatch
import json
import sys
import time
from pathlib import Path

from . import engine, report
from .engine import Case, Options

HERE = Path(__file__).resolve().parent
SCENARIO_DIR = HERE / "scenarios"

GROUPS = {
    "1": "Handshake and versioning", "2": "Authentication", "3": "Publish/subscribe", "4": "Wildcards",
    "5": "Queue groups", "6": "Request/reply", "7": "Headers and reserved headers", "8": "Permissions",
    "9": "Tenant isolation", "10": "Limits and quotas", "11": "Slow consumers and flow control",
    "12": "Malformed input (wire vectors sent live)", "13": "Heartbeats and idle timeouts",
    "14": "GOAWAY and drain", "15": "WebSocket binary (busgate.v1)", "16": "WebSocket JSON (busgate.v1.json)",
    "17": "Durable consumption",
}


def load_file_cases(validate: bool = True) -> list[Case]:
    schema = None
    if validate:
        try:
            import jsonschema  # optional: validates the scenario files against their schema
            schema = json.loads((SCENARIO_DIR / "schema.json").read_text())
        except ImportError:
            jsonschema = None
    cases = []
    for path in sorted(SCENARIO_DIR.glob("*.json")):
        if path.name == "schema.json":
            continue
        doc = json.loads(path.read_text())
        if schema is not None:
            jsonschema.validate(doc, schema)
        default_tr = doc.get("transport", "tcp")
        feature = doc.get("feature")
        for sc in doc["scenarios"]:
            tr = sc.get("transport", default_tr)
            steps = sc["steps"]

            def run(ctx, steps=steps, tr=tr, feature=feature):
                if feature == "durable":
                    ctx.require_durable()
                engine.run_steps(ctx, steps, tr)
            cases.append(Case(sc["id"], sc["description"], sc["expectation"], sc.get("spec", ""),
                              f"scenarios/{path.name}", run))
    return cases


def all_cases(validate: bool = True) -> list[Case]:
    from . import logic, vectors  # noqa: F401 - registers the Python scenarios
    from .registry import PY_CASES
    cases = load_file_cases(validate) + list(PY_CASES) + vectors.vector_cases()
    seen = {}
    for c in cases:
        if c.id in seen:
            raise SystemExit(f"duplicate case id {c.id}: {seen[c.id]} and {c.source}")
        seen[c.id] = c.source
    return sorted(cases, key=lambda c: (c.last, c.key))


def select(cases: list[Case], globs: str) -> list[Case]:
    pats = [g.strip() for g in globs.split(",") if g.strip()] or ["*"]
    return [c for c in cases if any(fnmatch.fnmatchcase(c.id, p) for p in pats)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m conformance", description=__doc__)
    ap.add_argument("--url", help="the gateway's TCP listener, tcp://HOST:PORT (or busgate://HOST:PORT)")
    ap.add_argument("--ws-url", help="the WebSocket endpoint, ws://HOST:PORT/v1/ws; without it WebSocket cases "
                                     "grade UNIMPLEMENTED")
    ap.add_argument("--cases", default="*", help="glob(s) over case ids, comma-separated, e.g. '3.*,12.1.*' "
                                                 "(default: every case)")
    ap.add_argument("--report", default="conformance-report", help="report folder (index.json, index.html)")
    ap.add_argument("--allow-drain", metavar="CMD", help="shell command that makes the gateway drain "
                                                         "(e.g. 'kill -TERM 1234'); without it group 14 grades "
                                                         "UNIMPLEMENTED. The drain runs last.")
    ap.add_argument("--profile", default=str(HERE / "profile.json"), help="tenants and tokens the gateway was "
                                                                          "configured with (default: the suite's)")
    ap.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every wait (slow machines)")
    ap.add_argument("--list", action="store_true", help="list the selected cases and exit")
    ap.add_argument("-q", "--quiet", action="store_true", help="print only failures and the summary")
    args = ap.parse_args(argv)

    cases = select(all_cases(), args.cases)
    if args.list:
        for c in cases:
            print(f"{c.id:14} {c.description}")
        print(f"{len(cases)} cases")
        return 0
    if not args.url:
        ap.error("--url is required")
    profile = json.loads(Path(args.profile).read_text())
    opts = Options(args.url, args.ws_url, profile, args.allow_drain, args.timeout_scale)
    results = {}
    t0 = time.monotonic()
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    for c in cases:
        r = engine.execute(c, opts)
        results[c.id] = r
        if not args.quiet or r["grade"] == engine.FAILED:
            line = f"{c.id:14} {r['grade']:13} {r['duration_ms']:7.0f} ms  {c.description}"
            if r["grade"] != engine.OK_ and r["detail"]:
                line += f"\n{'':14} -> {r['detail'][:600]}"
            print(line, flush=True)
    meta = {"url": args.url, "ws_url": args.ws_url, "cases": args.cases, "started": started,
            "duration_s": round(time.monotonic() - t0, 2), "groups": GROUPS,
            "allow_drain": bool(args.allow_drain)}
    report.write(Path(args.report), results, meta)
    summ = report.summarize(results)
    print("summary: " + ", ".join(f"{g} {summ[g]}" for g in report.COLORS) + f", total {summ['total']} "
          f"in {meta['duration_s']:.1f} s; report in {args.report}/index.html")
    return 1 if summ["FAILED"] else 0


if __name__ == "__main__":
    sys.exit(main())
