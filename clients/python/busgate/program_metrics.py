"""Prometheus metrics of a running busgate program (served on ``GET /metrics`` with ``--http``).

Every series has the labels ``program`` and ``command``; the per-handler ones also ``consumer`` (the
handler's function name: a consumer, a service, or the command of a triggered command run with
``--listen``):

    busgate_program_taken_total        counter    messages taken from the subscription (each one is run)
    busgate_program_done_total         counter    handler runs that returned
    busgate_program_failed_total       counter    handler runs that raised (or were cancelled)
    busgate_program_retried_total      counter    durable deliveries taken with attempt > 1
    busgate_program_inflight           gauge      handlers running now
    busgate_program_handler_duration_seconds  histogram  handler run time, 1 ms .. 600 s
    busgate_program_ready              gauge      1 while /readyz answers 200, else 0
    busgate_program_connected          gauge      1 while every connection of the command is connected
    busgate_program_command_runs_total counter    runs of a plain or triggered command, label
                                                  outcome="ok|failed"
    busgate_program_info               gauge      1, label version (the busgate package's version)

plus the process collector of ``prometheus_client`` (``process_resident_memory_bytes``,
``process_cpu_seconds_total``, ``process_open_fds``, ...). Each program has its own registry.

The counters are read from the runner's own counters when scraped (the figures ``program.stop``
logs), so the logs and the metrics always agree. The histogram is observed in the same step that
counts a run as done or failed: its ``_count`` equals done + failed.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

INSTALL_HINT = "pip install 'busgate[program]'"
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0, 600.0)


class MetricsUnavailable(RuntimeError):
    """The prometheus_client library is not installed."""


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise MetricsUnavailable(
            f"--http needs the prometheus_client library; install it with: {INSTALL_HINT}") from None
    return prometheus_client


class ProgramMetrics:
    """The registry of one program's command.

    ``handlers()`` returns ``[(consumer_name, ConsumerStats)]``; ``runs()`` the command's run
    counts ``{"ok": n, "failed": n}`` or None for a command that is not a plain or triggered one;
    ``ready()`` and ``connected()`` the gauges' truth."""

    def __init__(self, program: str, command: str, version: str, *,
                 handlers: Callable[[], list[tuple[str, Any]]], runs: Callable[[], dict[str, int] | None],
                 ready: Callable[[], bool], connected: Callable[[], bool]) -> None:
        pc = _prometheus()
        self._pc = pc
        self.registry = pc.CollectorRegistry()
        pc.ProcessCollector(registry=self.registry)
        self.durations = pc.Histogram(
            "busgate_program_handler_duration_seconds", "Handler run time in seconds",
            ["program", "command", "consumer"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.registry.register(_RunnerCollector(program, command, version, handlers, runs, ready, connected))
        self._program = program
        self._command = command
        self._children: dict[str, Any] = {}

    def observe(self, consumer: str, seconds: float) -> None:
        child = self._children.get(consumer)
        if child is None:
            child = self._children[consumer] = self.durations.labels(self._program, self._command, consumer)
        child.observe(seconds)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """(body, content type): the format the Accept header asks for (OpenMetrics or the text
        format 0.0.4, the default)."""
        from prometheus_client.exposition import choose_encoder
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class _RunnerCollector:
    """Reads the runner's counters and state at scrape time."""

    def __init__(self, program: str, command: str, version: str, handlers: Callable[[], list[tuple[str, Any]]],
                 runs: Callable[[], dict[str, int] | None], ready: Callable[[], bool],
                 connected: Callable[[], bool]) -> None:
        self.program = program
        self.command = command
        self.version = version
        self.handlers = handlers
        self.runs = runs
        self.ready = ready
        self.connected = connected

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["program", "command", "consumer"]
        fams = {
            "taken": CounterMetricFamily("busgate_program_taken", "Messages taken from the subscription", labels=labels),
            "done": CounterMetricFamily("busgate_program_done", "Handler runs that returned", labels=labels),
            "failed": CounterMetricFamily("busgate_program_failed", "Handler runs that raised", labels=labels),
            "redelivered": CounterMetricFamily(
                "busgate_program_retried", "Durable deliveries taken with attempt > 1", labels=labels),
        }
        inflight = GaugeMetricFamily("busgate_program_inflight", "Handlers running now", labels=labels)
        for name, st in self.handlers():
            lv = [self.program, self.command, name]
            for attr, fam in fams.items():
                fam.add_metric(lv, float(getattr(st, attr)))
            inflight.add_metric(lv, float(st.in_flight))
        yield from fams.values()
        yield inflight
        pc = [self.program, self.command]
        ready = GaugeMetricFamily("busgate_program_ready", "1 when the command is ready (/readyz 200)",
                                  labels=["program", "command"])
        ready.add_metric(pc, 1.0 if self.ready() else 0.0)
        yield ready
        connected = GaugeMetricFamily("busgate_program_connected",
                                      "1 when every connection of the command is connected",
                                      labels=["program", "command"])
        connected.add_metric(pc, 1.0 if self.connected() else 0.0)
        yield connected
        runs = self.runs()
        if runs is not None:
            fam = CounterMetricFamily("busgate_program_command_runs", "Runs of a plain or triggered command",
                                      labels=["program", "command", "outcome"])
            for outcome in ("ok", "failed"):
                fam.add_metric(pc + [outcome], float(runs.get(outcome, 0)))
            yield fam
        info = GaugeMetricFamily("busgate_program_info", "The program, its command and the busgate version",
                                 labels=["program", "command", "version"])
        info.add_metric(pc + [self.version], 1.0)
        yield info
