"""A stand-in for `geeps server`: records itself, then serves nothing until SIGTERM.

FAKE_SERVER_EXIT=N makes server-0 exit with N once every peer has started.
"""
import os
import signal
import sys

import common


def stop(signum, frame):
    common.record(f"{common.name()}.stopped", signal.Signals(signum).name)
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
common.record_self()
code = os.environ.get("FAKE_SERVER_EXIT")
if code is not None and os.environ["GEEPS_RANK"] == "0":
    common.wait_for_peers()
    sys.exit(int(code))
while True:
    signal.pause()
