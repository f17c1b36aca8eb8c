"""The `geeps` command.

    geeps run examples/01-minimal/job.yaml          # a whole job on this machine
    geeps run --servers 2 --workers 2 -- python train.py
    geeps server                                     # one shard (reads GEEPS_*)
    geeps env                                        # the environment contract
    geeps bench                                      # the benchmarks (from a checkout)
    geeps lab status | cut HOST | loss HOST N | ...  # faults on a `geeps run --lab` job
    geeps servers list | add | remove ID             # change a running job's servers
    geeps coordinator                                # a coordinated job's membership, over
                                                     # HTTP (its pod on Kubernetes)
    geeps operator [--namespace NS]                  # the Kubernetes operator ([operator])
    geeps sandbox up|down                            # try kubectl apply on one machine:
                                                     # an API emulator, not a cluster
    geeps --version

`geeps COMMAND --help` says more about each.
"""
from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata

# Commands other distributions add (the operator's, from the [operator] extra): an entry
# point in this group, "name = module:function", so the runtime never imports them.
PLUGIN_GROUP = "geeps.commands"


def _plugins() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=PLUGIN_GROUP)}


def _usage() -> str:
    extra = sorted(set(_plugins()) - {"operator", "sandbox"})
    more = "".join(f"    geeps {name} ...\n" for name in extra)
    return __doc__ + (f"\nInstalled plugins:\n{more}" if more else "")


def _env(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print("geeps env: print the GEEPS_* environment contract as a Markdown table "
              "(docs/environment.md)")
        return 0
    from geeps.job.env import markdown_table
    sys.stdout.write(markdown_table())
    return 0


def _checkout() -> str | None:
    """The repository checkout whose bench/ to run: the current directory's, or the one
    this package was installed from in development mode."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for base in (os.getcwd(), here):
        if os.path.isfile(os.path.join(base, "bench", "cli.py")):
            return base
    return None


def _bench(argv: list[str]) -> int:
    repo = _checkout()
    if repo is None:
        print("geeps bench: no bench/ folder here; run it from a checkout of the repository",
              file=sys.stderr)
        return 2
    env = dict(os.environ)
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.call([sys.executable, "-m", "bench.cli", *argv], env=env)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from geeps import __version__
        print(f"geeps {__version__}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "run":
        from geeps.launch.launcher import main as run
        return run(rest)
    if cmd == "server":
        from geeps.server.server import main as server
        return server(rest)
    if cmd == "env":
        return _env(rest)
    if cmd == "bench":
        return _bench(rest)
    if cmd == "lab":
        from geeps.lab.cli import main as lab
        return lab(rest)
    if cmd == "coordinator":
        from geeps.launch.coordinator_http import main as coordinator
        return coordinator(rest)
    if cmd == "servers":
        from geeps.launch.control import main as servers
        return servers(rest)
    plugin = _plugins().get(cmd)
    if plugin is not None:
        try:
            func = plugin.load()
        except ImportError as e:
            print(f"geeps {cmd} needs what its extra installs: {e}", file=sys.stderr)
            return 2
        return func(rest)
    if cmd == "operator":
        print("geeps operator needs the [operator] extra (pip install 'geeps[operator]')",
              file=sys.stderr)
        return 2
    if cmd == "sandbox":
        print("geeps sandbox runs from a clone of the repository (it uses tests/e2e): "
              "pip install -e '.[operator,dev]' there, or run python -m geeps_sandbox",
              file=sys.stderr)
        return 2
    print(f"geeps: unknown command {cmd!r}\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
