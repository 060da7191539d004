"""Writes the Grafana dashboard busgate.json (the gateway and the programs' runners):
    python3 deploy/helm/busgate/dashboards/generate.py > deploy/helm/busgate/dashboards/busgate.json
deploy/tests checks that the file is what this prints, and that every query names a metric the
gateway or a runner exports."""
import json
panels = []
y = 0
pid = 0
def row(title):
    global y, pid
    pid += 1
    panels.append({"type": "row", "title": title, "id": pid, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
    y += 1
col = 0
def ts(title, targets, unit="short", w=8, desc=""):
    global y, pid, col
    pid += 1
    if col + w > 24:
        col = 0; y += 8
    panels.append({
        "type": "timeseries", "title": title, "id": pid, "description": desc,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": w, "x": col, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi"}},
        "targets": [{"refId": chr(65 + i), "expr": e, "legendFormat": l,
                     "datasource": {"type": "prometheus", "uid": "${datasource}"}} for i, (e, l) in enumerate(targets)],
    })
    col += w
def endrow():
    global y, col
    if col:
        y += 8; col = 0
N = 'namespace=~"$namespace"'
T = N + ',tenant=~"$tenant"'
row("Gateway: tenants and traffic")
ts("Connections by tenant", [(f'sum by (tenant) (busgate_connections{{{T}}})', "{{tenant}}")])
ts("Messages in/s by tenant", [(f'sum by (tenant) (rate(busgate_messages_in_total{{{T}}}[$__rate_interval]))', "{{tenant}}")], "ops")
ts("Messages out/s by tenant", [(f'sum by (tenant) (rate(busgate_messages_out_total{{{T}}}[$__rate_interval]))', "{{tenant}}")], "ops")
ts("Bytes in/s by tenant", [(f'sum by (tenant) (rate(busgate_bytes_in_total{{{T}}}[$__rate_interval]))', "{{tenant}}")], "Bps")
ts("Bytes out/s by tenant", [(f'sum by (tenant) (rate(busgate_bytes_out_total{{{T}}}[$__rate_interval]))', "{{tenant}}")], "Bps")
ts("Requests in flight by tenant", [(f'sum by (tenant) (busgate_tenant_requests_inflight{{{T}}})', "{{tenant}}")], desc="Pinned at the tenant's max_inflight_requests means TOO_MANY_REQUESTS.")
endrow()
row("Gateway: requests and errors")
ts("Requests/s", [(f'sum by (tenant) (rate(busgate_requests_total{{{T}}}[$__rate_interval]))', "{{tenant}}")], "reqps")
ts("Request latency p50 / p99", [
    (f'histogram_quantile(0.5, sum by (le, tenant) (rate(busgate_request_duration_seconds_bucket{{{T}}}[$__rate_interval])))', "p50 {{tenant}}"),
    (f'histogram_quantile(0.99, sum by (le, tenant) (rate(busgate_request_duration_seconds_bucket{{{T}}}[$__rate_interval])))', "p99 {{tenant}}")], "s")
ts("Errors/s by name", [(f'sum by (tenant, name) (rate(busgate_errors_total{{{T}}}[$__rate_interval]))', "{{tenant}} {{name}}")], "ops")
ts("Slow consumers and flow control", [
    (f'sum by (tenant) (increase(busgate_slow_consumer_disconnects_total{{{T}}}[$__rate_interval]))', "slow consumer disconnects {{tenant}}"),
    (f'sum(increase(busgate_producer_paces_total{{{N}}}[$__rate_interval]))', "producer paces"),
    (f'sum(increase(busgate_backlog_drops_total{{{N}}}[$__rate_interval]))', "backlog drops"),
    (f'sum(increase(busgate_bus_congestion_pauses_total{{{N}}}[$__rate_interval]))', "bus congestion pauses")])
ts("Queued bytes by tenant", [(f'sum by (tenant) (busgate_tenant_queued_bytes{{{T}}})', "{{tenant}}"),
                              (f'max(busgate_queued_bytes{{{N}}})', "largest node, all tenants")], "bytes",
   desc="Bytes held for clients: outbound queues and delivery backlogs (limits.max_tenant_queued_bytes, limits.max_queued_bytes).")
ts("Bus", [(f'min by (pod) (busgate_bus_healthy{{{N}}})', "healthy {{pod}}"),
           (f'sum by (pod) (increase(busgate_bus_reconnects_total{{{N}}}[$__rate_interval]))', "reconnects {{pod}}"),
           (f'max by (pod) (busgate_draining{{{N}}})', "draining {{pod}}")])
endrow()
row("Durable consumers")
C = T
ts("Backlog (pending)", [(f'max by (tenant, stream, consumer) (busgate_consumer_pending{{{C}}})', "{{tenant}}/{{consumer}}")], w=12,
   desc="Stored messages not yet delivered: what KEDA scales the consumer's runners on.")
ts("Running (ack pending) vs cap", [
    (f'max by (tenant, consumer) (busgate_consumer_ack_pending{{{C}}})', "running {{tenant}}/{{consumer}}"),
    (f'max by (tenant, consumer) (busgate_consumer_max_inflight{{{C}}})', "cap {{tenant}}/{{consumer}}")], w=12)
ts("Redelivered/s", [(f'sum by (tenant, consumer) (rate(busgate_consumer_redelivered_total{{{C}}}[$__rate_interval]))', "{{tenant}}/{{consumer}}")], "ops", w=12)
ts("Dead-lettered", [(f'sum by (tenant, consumer) (increase(busgate_consumer_dead_lettered_total{{{C}}}[$__rate_interval]))', "{{tenant}}/{{consumer}}")], w=12)
endrow()
row("Programs")
P = N + ',program=~"$program"'
ts("Taken/s", [(f'sum by (program, command, consumer) (rate(busgate_program_taken_total{{{P}}}[$__rate_interval]))', "{{program}} {{command}}/{{consumer}}")], "ops")
ts("Failed/s", [(f'sum by (program, command, consumer) (rate(busgate_program_failed_total{{{P}}}[$__rate_interval]))', "{{program}} {{command}}/{{consumer}}"),
                (f'sum by (program, command, consumer) (rate(busgate_program_retried_total{{{P}}}[$__rate_interval]))', "retried {{program}} {{command}}/{{consumer}}")], "ops")
ts("In flight", [(f'sum by (program, command, consumer) (busgate_program_inflight{{{P}}})', "{{program}} {{command}}/{{consumer}}")])
ts("Handler latency p95", [(f'histogram_quantile(0.95, sum by (le, program, consumer) (rate(busgate_program_handler_duration_seconds_bucket{{{P}}}[$__rate_interval])))', "{{program}}/{{consumer}}")], "s")
ts("Done/s", [(f'sum by (program, command, consumer) (rate(busgate_program_done_total{{{P}}}[$__rate_interval]))', "{{program}} {{command}}/{{consumer}}")], "ops")
ts("Runners ready", [(f'sum by (program, command) (busgate_program_ready{{{P}}})', "{{program}} {{command}}"),
                     (f'sum by (program, command, outcome) (increase(busgate_program_command_runs_total{{{P}}}[$__rate_interval]))', "runs {{program}} {{command}} {{outcome}}")])
endrow()
row("Processes")
# only the gateways' and the runners' processes: every scraped target exports process_*
OURS = f'on (namespace, pod) group_left () (group by (namespace, pod) (busgate_bus_healthy{{{N}}}) or group by (namespace, pod) (busgate_program_info{{{N}}}))'
ts("Resident memory", [(f'sum by (pod) (process_resident_memory_bytes{{{N}}} * {OURS})', "{{pod}}")], "bytes", w=12)
ts("CPU", [(f'sum by (pod) (rate(process_cpu_seconds_total{{{N}}}[$__rate_interval]) * {OURS})', "{{pod}}")], "percentunit", w=12)
endrow()

def var(name, query, multi=True):
    return {"name": name, "label": name, "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": query, "refId": name}, "definition": query, "refresh": 2, "multi": multi, "includeAll": True,
            "allValue": ".*", "current": {"text": "All", "value": "$__all"}}
dash = {
    "title": "busgate", "uid": "busgate-overview", "tags": ["busgate"], "timezone": "browser",
    "schemaVersion": 39, "version": 1, "editable": True, "refresh": "30s",
    "time": {"from": "now-1h", "to": "now"},
    "templating": {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0},
        var("namespace", "label_values(busgate_bus_healthy, namespace)"),
        var("tenant", "label_values(busgate_tenant_connections{namespace=~\"$namespace\"}, tenant)"),
        var("program", "label_values(busgate_program_ready{namespace=~\"$namespace\"}, program)"),
    ]},
    "annotations": {"list": []},
    "panels": panels,
}
print(json.dumps(dash, indent=2))
