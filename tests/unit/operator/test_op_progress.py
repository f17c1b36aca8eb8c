"""Worker 0's progress as the operator reads it: geeps.report() -> the worker's
Prometheus exposition -> status.progress (rate and ETA from the launcher's board)."""
from __future__ import annotations

from prometheus_client import REGISTRY, generate_latest

from geeps.metrics import Metrics
from geeps_operator import progress


def _exposition(job: str, *reports: dict) -> str:
    m = Metrics(job, "worker", 0)
    for fields in reports:
        m.progress(fields)
    text = generate_latest(REGISTRY).decode()
    # Only this test's job: the registry is the process's.
    return "\n".join(line for line in text.splitlines()
                     if line.startswith("#") or f'job="{job}"' in line) + "\n"


def test_parse_reads_the_reported_fields_and_samples():
    text = _exposition("p1", {"clock": 3, "loss": 0.5, "samples": 64, "clocks": 10},
                       {"clock": 4, "samples": 64})
    assert progress.parse(text) == {"clock": 4.0, "loss": 0.5, "clocks": 10.0,
                                    "samples_total": 128.0}
    assert progress.parse("# nothing\n") == {}


def test_progress_gives_rate_and_eta_from_successive_scrapes():
    p = progress.Progress()
    p.feed({"clock": 2.0, "loss": 0.9, "clocks": 12.0, "samples_total": 100.0}, now=0.0)
    assert p.clock == 2 and "etaSeconds" not in p.status()
    p.feed({"clock": 4.0, "loss": 0.7, "clocks": 12.0, "samples_total": 300.0}, now=2.0)
    st = p.status()
    assert st["loss"] == 0.7 and st["clocks"] == 12.0
    assert st["samplesPerSecond"] == 100.0          # 200 samples in 2 s
    assert st["etaSeconds"] == 8                    # 8 clocks left at 1 clock/s


def test_a_servers_clock_stands_in_once_worker_0_is_gone():
    text = ("# TYPE geeps_server_clock gauge\n"
            'geeps_server_clock{job="j",role="server",rank="0"} 21.0\n'
            'geeps_server_clock{job="j",role="server",rank="1"} 20.0\n')
    fields = progress.parse(text)
    assert fields == {"server_clock": 20.0}
    p = progress.Progress()
    p.feed(fields, now=1.0)
    assert p.clock == 20
