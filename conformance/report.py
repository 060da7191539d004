"""The report folder: index.json (machine-readable) and index.html (self-contained)."""
from __future__ import annotations

import html
import json
import time
from pathlib import Path

COLORS = {"OK": "#2e7d32", "NON-STRICT": "#b28704", "UNIMPLEMENTED": "#607d8b", "FAILED": "#c62828"}


def write(report_dir: Path, results: dict, meta: dict):
    report_dir.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "summary": summarize(results), "cases": results}
    (report_dir / "index.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    (report_dir / "index.html").write_text(render_html(doc))


def summarize(results: dict) -> dict:
    out = {g: 0 for g in COLORS}
    for r in results.values():
        out[r["grade"]] = out.get(r["grade"], 0) + 1
    out["total"] = len(results)
    return out


def _key(cid: str):
    return tuple(int(x) for x in cid.split("."))


def render_html(doc: dict) -> str:
    meta, summ, cases = doc["meta"], doc["summary"], doc["cases"]
    groups = meta.get("groups", {})
    e = html.escape
    rows = []
    last_group = None
    for cid in sorted(cases, key=_key):
        r = cases[cid]
        g = cid.split(".")[0]
        if g != last_group:
            last_group = g
            counts = {}
            for k, v in cases.items():
                if k.split(".")[0] == g:
                    counts[v["grade"]] = counts.get(v["grade"], 0) + 1
            badge = " ".join(f'<span class="b" style="background:{COLORS[k]}">{k} {n}</span>'
                             for k, n in counts.items())
            rows.append(f'<tr class="g"><td colspan="5" id="g{g}">{e(g)}. {e(groups.get(g, ""))} {badge}</td></tr>')
        rows.append(
            f'<tr id="c{e(cid)}"><td class="id">{e(cid)}</td>'
            f'<td><span class="b" style="background:{COLORS.get(r["grade"], "#000")}">{e(r["grade"])}</span></td>'
            f'<td>{e(r["description"])}<div class="x">expects: {e(r.get("expectation", ""))}'
            f'{(" &middot; spec " + e(r["spec"])) if r.get("spec") else ""}</div></td>'
            f'<td class="d">{e(r.get("detail", ""))}</td><td class="ms">{r["duration_ms"]:.0f}</td></tr>')
    summary = " ".join(f'<span class="b" style="background:{c}">{g} {summ.get(g, 0)}</span>'
                       for g, c in COLORS.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>busgate conformance report</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}}
table{{border-collapse:collapse;width:100%}} td{{border-bottom:1px solid #ddd;padding:4px 6px;vertical-align:top}}
tr.g td{{background:#f3f3f3;font-weight:600;padding-top:10px}}
.b{{color:#fff;border-radius:3px;padding:1px 6px;font-size:12px;white-space:nowrap}}
.id{{font-family:monospace;white-space:nowrap}} .d{{font-family:monospace;font-size:12px;max-width:45em;word-break:break-word}}
.x{{color:#666;font-size:12px}} .ms{{text-align:right;color:#666}}
</style></head><body>
<h1>busgate conformance report</h1>
<p>Target <code>{e(meta.get("url", ""))}</code> {("WebSocket <code>" + e(meta["ws_url"]) + "</code>") if meta.get("ws_url") else "(no WebSocket URL)"}
&middot; cases <code>{e(meta.get("cases", "*"))}</code> &middot; {e(meta.get("started", ""))} &middot; {meta.get("duration_s", 0):.1f} s</p>
<p>{summary} &middot; total {summ.get("total", 0)}</p>
<table><tr><th>id</th><th>grade</th><th>case</th><th>detail</th><th>ms</th></tr>
{"".join(rows)}
</table>
<p class="x">Grades: OK = as specified; NON-STRICT = acceptable but not exactly as specified; UNIMPLEMENTED = the
gateway answers NOT_SUPPORTED or the endpoint is absent; FAILED = contradicts docs/protocol.md.
Generated {e(time.strftime("%Y-%m-%d %H:%M:%S"))}.</p>
</body></html>
"""
