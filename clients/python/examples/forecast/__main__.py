"""issue-forecast: the busgate program.

Commands
    score       consume "export finished" events (exports.finished, queue group "scorers"), score
                them, publish each result to forecasts.scored
    score-jobs  the same scoring for durable jobs (jobs.forecast, durable consumer "forecasters"):
                at least once, 4 at a time per process
    serve       answer forecast queries (forecasts.query) and remember the latest scored forecast per
                project (a consumer of forecasts.scored in the same command)
    train       fit the model's coefficients from a JSON-lines history file and print them; with
                --listen, once per trigger on models.train ({"history": [rows]}), replying the
                coefficients to a request

    python -m forecast score --url busgate://127.0.0.1:7422 --token dev-token --concurrency 4 --http :9090
    busgate-cli req forecasts.query '{"project": "busgate"}'

FORECAST_WORK_MS (default 0) adds simulated work per event, to watch the concurrency cap and the drain.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import asdict

from busgate.program import Program

try:
    from . import model
except ImportError:  # run as a script
    import model  # type: ignore[no-redef]

program = Program("forecast", description="issue-forecast: scores export events and answers forecast queries")

WORK_MS = float(os.environ.get("FORECAST_WORK_MS", "0"))
latest: dict[str, dict] = {}


async def score_and_publish(msg, ctx):
    event = msg.json()
    if WORK_MS:
        await asyncio.sleep(WORK_MS / 1000.0)  # stands in for real work (I/O, a model call, ...)
    result = model.score(event)
    await ctx.publish("forecasts.scored", result, headers={"model": "linear-v1"})
    ctx.log("scored", id=result["id"], project=result["project"], risk=result["risk"])


@program.consumer("exports.finished", queue="scorers", concurrency=4)
async def score(msg, ctx):
    """Score "export finished" events and publish the forecasts."""
    await score_and_publish(msg, ctx)


@program.consumer("jobs.forecast", durable="forecasters", concurrency=4, command="score-jobs")
async def score_job(msg, ctx):
    """Score durable forecast jobs (at least once) and publish the forecasts."""
    await score_and_publish(msg, ctx)  # returns: ACK; raises (a bad event): NAK, retried, then dead-lettered


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


@program.command(trigger="models.train")
def train(ctx):
    """Fit the coefficients from a JSON-lines history file (open_issues, opened_last_week,
    closed_last_week, next_open) and print them; with --listen, from each trigger's "history"."""
    if ctx.trigger is not None:  # train --listen: one run per message on models.train
        rows = (ctx.trigger.json() if ctx.trigger.data else {}).get("history")
        if not isinstance(rows, list) or not rows:
            raise ValueError('the trigger needs {"history": [rows]}')
    elif ctx.args.argv:
        with open(ctx.args.argv[0]) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    else:
        print("usage: python -m forecast train HISTORY.jsonl  (or: train --listen)", file=sys.stderr)
        return 2
    c = model.fit(rows)
    print(model.dumps(c), flush=True)
    ctx.log("trained", rows=len(rows), a=c.a, b=c.b, triggered=ctx.trigger is not None)
    return asdict(c) if ctx.trigger is not None else 0  # the reply to a request trigger


if __name__ == "__main__":
    program.main()
