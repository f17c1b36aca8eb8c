"""A stand-in worker for tests/integration/test_run_ux.py: what a user's script does
that the launcher must handle well (serve metrics, report clocks, fail, wait for
Ctrl-C without handling it)."""
import argparse
import os
import signal
import time
import urllib.request

import common

import geeps
from geeps import metrics

p = argparse.ArgumentParser()
p.add_argument("--clocks", type=int, default=0, help="report this many clocks")
p.add_argument("--fail-after", action="store_true", help="raise after the clocks")
p.add_argument("--serve-metrics", action="store_true",
               help="serve GEEPS_METRICS_PORT, scrape it once, record the bound address")
p.add_argument("--wait", action="store_true", help="wait for a signal (default handlers)")
p.add_argument("--ignore-int", action="store_true", help="ignore SIGINT")
p.add_argument("--start-when", help="a slow start: report nothing until this file exists")
args = p.parse_args()

if args.ignore_int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
cfg = geeps.load_config()
if args.serve_metrics:
    server, _ = metrics.serve(cfg.metrics_port, cfg.metrics_addr)
    # A scrape the server closes first leaves its port in TIME_WAIT, as Prometheus'
    # scrapes of a finished run do.
    urllib.request.urlopen(f"http://127.0.0.1:{cfg.metrics_port}/metrics").read()
    common.record(f"{common.name()}.metrics", f"{server.server_address[0]}")
common.record_self()
while args.start_when and not os.path.exists(args.start_when):
    time.sleep(0.05)
for c in range(1, args.clocks + 1):
    geeps.report(clock=c, loss=1.0, samples=32, epoch=0)
if args.fail_after:
    raise RuntimeError(f"step {args.clocks} went wrong")
if args.wait:
    common.wait_for_peers()
    while True:
        signal.pause()
