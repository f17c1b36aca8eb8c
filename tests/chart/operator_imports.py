"""Import the whole operator and run `geeps-operator --help` (the image's ENTRYPOINT):
run under `python -S` with a PYTHONPATH holding only the operator image's packages, so
that anything else (torch, numpy...) is absent, as in the image. Exit 0 when all
imports work.
"""
import importlib
import pkgutil
import sys

import geeps_operator

for info in pkgutil.iter_modules(geeps_operator.__path__):
    importlib.import_module(f"geeps_operator.{info.name}")

# The operator makes each job's CurveZMQ keys (imported lazily where a Secret is made).
import geeps.wire.curve  # noqa: E402,F401

import geeps.cli  # noqa: E402,F401  (`geeps operator` finds the operator by entry point)
from geeps_operator.main import main  # noqa: E402  (the console script's own path)

try:
    code = main(["--help"])
except SystemExit as e:        # argparse exits after printing help
    code = e.code
sys.exit(code or 0)
