"""issue-forecast: the busgate program.

Commands
    score   consume "export finished" events (exports.finished, queue group "scorers"), score them,
            publish each result to forecasts.scored
    serve   answer forecast queries (forecasts.query) and remember the latest scored forecast per
            project (a consumer of forecasts.scored in the same command)
    train   fit the model's coefficients from a JSON-lines history file and print them

    python -m forecast score --url busgate://127.0.0.1:7422 --token dev-token --concurrency 4
    busgate-cli req forecasts.query '{"project": "busgate"}'

FORECAST_WORK_MS (default 0) adds simulated work per event, to watch the concurrency cap and the drain.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys

from busgate.program import Program

try:
    from . import model
except ImportError:  # run as a script
    import model  # type: ignore[no-redef]

program = Program("forecast", description="issue-forecast: scores export events and answers forecast queries")

WORK_MS = float(os.environ.get("FORECAST_WORK_MS", "0"))
latest: dict[str, dict] = {}


@program.consumer("exports.finished", queue="scorers", concurrency=4)
async def score(msg, ctx):
    """Score "export finished" events and publish the forecasts."""
    event = msg.json()
    if WORK_MS:
        await asyncio.sleep(WORK_MS / 1000.0)  # stands in for real work (I/O, a model call, ...)
    result = model.score(event)
    await ctx.publish("forecasts.scored", result, headers={"model": "linear-v1"})
    ctx.log("scored", id=result["id"], project=result["project"], risk=result["risk"])


@program.consumer("forecasts.scored", concurrency=1, command="serve")
async def remember(msg, ctx):
    """Keep the latest forecast of every project for the query service."""
    r = msg.json()
    if r.get("project"):
        latest[r["project"]] = r


@program.service("forecasts.query", queue="forecasters", command="serve")
async def query(msg, ctx):
    """Answer forecast queries: {"project": name} or a full metrics event."""
    q = msg.json() if msg.data else {}
    if "open_issues" in q:
        return model.score(q)
    project = q.get("project")
    if project in latest:
        return latest[project]
    return {"project": project, "error": "no forecast yet"}


@program.command()
def train(ctx):
    """Fit the coefficients from a JSON-lines history file (open_issues, opened_last_week,
    closed_last_week, next_open) and print them."""
    if not ctx.args.argv:
        print("usage: python -m forecast train HISTORY.jsonl", file=sys.stderr)
        return 2
    with open(ctx.args.argv[0]) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    c = model.fit(rows)
    print(model.dumps(c))
    ctx.log("trained", rows=len(rows), a=c.a, b=c.b)
    return 0


if __name__ == "__main__":
    program.main()
