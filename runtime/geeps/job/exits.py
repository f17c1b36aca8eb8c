"""What a process's exit status means, and whether restarting it can help.

`geeps run` (a Popen returncode: -N when killed by signal N) and the operator (a pod's
container exit code: 128+N when killed by signal N, None when there is none) restart a
failed process by the same rules, the role's restartPolicy:

    Never      no restart
    OnFailure  any failure
    ExitCode   only a failure that looks transient: killed by a signal (128-255: OOM
               kill 137, SIGTERM 143, node loss, preemption...), EX_TEMPFAIL (75),
               which a script can use to ask for a retry, or no exit status at all.
               Any other code (1, 2, ...) is the program's own verdict: a retry would
               fail the same way.

    retryable("ExitCode", shell_code(proc.returncode))   # True after SIGKILL (-9 -> 137)
    describe_exit(-9)                                    # 'killed by signal SIGKILL'
"""
from __future__ import annotations

import signal

EX_TEMPFAIL = 75                        # <sysexits.h>: "try again later"
# Exit statuses worth a retry under restartPolicy ExitCode, as a shell or a pod reports them.
RETRYABLE_EXIT_CODES = frozenset([EX_TEMPFAIL]) | frozenset(range(128, 256))
# The same set in words (the manifest schema's description of restartPolicy).
RETRYABLE_TEXT = "exit codes 128-255 (signals, OOM) and 75 (EX_TEMPFAIL)"
POLICIES = ("Never", "OnFailure", "ExitCode")


def shell_code(returncode: int) -> int:
    """A Popen returncode as a shell or a pod reports it: killed by signal N (-N) is 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def transient(code: int | None) -> bool:
    """Whether a failure with exit status `code` (shell or pod form; None: the process
    left none) may pass when the process is started again."""
    return code is None or code in RETRYABLE_EXIT_CODES


def retryable(policy: str, code: int | None) -> bool:
    """Whether restartPolicy `policy` restarts a process that failed with exit status
    `code` (shell or pod form, see `shell_code`; None: it left none)."""
    if policy == "Never":
        return False
    if policy == "OnFailure":
        return True
    return transient(code)                                      # ExitCode


def describe_exit(code: int) -> str:
    """'exit code 3' or 'killed by signal SIGKILL', from a Popen returncode."""
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
