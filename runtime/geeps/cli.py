"""The `geeps` command.

    geeps run examples/01-minimal/job.yaml          # a whole job on this machine
    geeps run --servers 2 --workers 2 -- python train.py
    geeps server                                     # one shard (reads GEEPS_*)
    geeps operator [--namespace NS]                  # the Kubernetes operator
    geeps env                                        # the environment contract
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "run":
        from .launcher import main as run
        return run(rest)
    if cmd == "server":
        from .server import main as server
        return server(rest)
    if cmd == "operator":
        try:
            from geeps_operator.main import main as operator
        except ImportError as e:
            print(f"geeps operator needs the [operator] extra: {e}", file=sys.stderr)
            return 2
        return operator(rest)
    if cmd == "env":
        from .config import markdown_table
        sys.stdout.write(markdown_table())
        return 0
    if cmd == "bench":
        from .benchcli import main as bench
        return bench(rest)
    print(f"geeps: unknown command {cmd!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
