"""A job's progress, read over HTTP from worker 0's metrics endpoint (not pods/log).

    fields = parse(text_of_worker0_metrics)          # {"clock": 12, "loss": 0.4, ...}
    p = Progress(); p.feed(fields, now=time.monotonic())
    p.status()      # {"loss": 0.4, "samplesPerSecond": 530.0, "etaSeconds": 95, ...}

A training script calls geeps.report(clock=..., loss=..., samples=..., clocks=...),
which worker 0 exports as geeps_progress{field} and geeps_progress_samples_total on
its metrics port (geeps.metrics). The operator scrapes that on its periodic
reconciles, so it needs no RBAC on pods/log and no log parsing; rates and the ETA
come from the launcher's own ProgressBoard (geeps.job.board), fed with what each
scrape saw, so `geeps run` and the job's status agree on what they mean. When worker 0
has finished, a shard server still running gives the final clock (geeps_server_clock).
"""
from __future__ import annotations

import math

from geeps.job.board import ProgressBoard

FIELDS = ("clock", "loss", "accuracy", "epoch", "clocks", "epochs")
GAUGE = "geeps_progress"
SAMPLES = "geeps_progress_samples_total"
SERVER_CLOCK = "geeps_server_clock"     # a shard's minimum clock over the workers


def parse(text: str) -> dict:
    """The progress fields in a Prometheus exposition (worker 0's /metrics), with
    `samples_total` the samples reported so far; {} if the script reports none."""
    from prometheus_client.parser import text_string_to_metric_families
    out: dict = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == GAUGE and sample.labels.get("field") in FIELDS:
                out[sample.labels["field"]] = sample.value
            elif sample.name == SAMPLES:
                out["samples_total"] = out.get("samples_total", 0.0) + sample.value
            elif sample.name == SERVER_CLOCK:
                out["server_clock"] = min(out.get("server_clock", sample.value), sample.value)
    return {k: v for k, v in out.items() if math.isfinite(v)}


class Progress:
    """What successive scrapes of one job's worker 0 add up to."""

    def __init__(self):
        self.board = ProgressBoard(1)
        self._samples: float | None = None

    def feed(self, fields: dict, now: float) -> None:
        report = {k: fields[k] for k in FIELDS if k in fields}
        if "clock" not in report and "server_clock" in fields:
            # A server's view: every worker has reached it (a job shorter than one
            # resync ends before worker 0 is ever scraped; its servers still run).
            report["clock"] = fields["server_clock"]
        total = fields.get("samples_total")
        if total is not None:
            if self._samples is not None and total >= self._samples:
                report["samples"] = total - self._samples
            elif self._samples is None:
                report["samples"] = total       # the board starts its rate from here
            self._samples = total
        if report:
            self.board.update(0, report, now)

    @property
    def clock(self) -> int | None:
        c = self.board.workers[0].clock
        return int(c) if c is not None else None

    def status(self) -> dict:
        """status.progress: the figures known so far (none is invented)."""
        w = self.board.workers[0]
        out = {"loss": w.loss, "accuracy": w.accuracy, "epoch": w.epoch,
               "clocks": self.board.total_clocks, "epochs": self.board.total_epochs,
               "samplesPerSecond": self.board.rate()}
        eta = self.board.eta()
        if eta is not None:
            out["etaSeconds"] = int(round(eta))
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in out.items()
                if v is not None}
