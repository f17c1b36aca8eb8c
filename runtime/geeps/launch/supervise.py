"""Runs the processes of a launch plan on this host and watches them until the job ends.

One thread does everything: a selector waits on every child's stdout and stderr (and
on a pidfd per child, so an exit is seen at once), which keeps signal handling simple
(the handlers only set a flag) and output in order. Every child leads its own process
group, so stopping a child stops whatever it started too. A failed process is
restarted by its role's restartPolicy within runPolicy.backoffLimit, as the operator
restarts pods (geeps.job.exits), except a failure a restart would repeat
(Supervisor._will_recur); workers' progress lines go to the ProgressBoard
(geeps.job.board), drawn as a live status line.

    sup = Supervisor(plan, cwd=".", timeout=3600)
    code = sup.run()      # blocks until the job ends; 0 ok, 1 failed, 124 timed out,
                          # 128+signal when the launcher was interrupted
"""
from __future__ import annotations

import atexit
import collections
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from typing import IO

from geeps.job import progress
from geeps.job.exits import EX_TEMPFAIL, describe_exit, retryable, shell_code
from geeps.job.board import ProgressBoard, format_number
from geeps.launch.plan import LaunchPlan, ProcessSpec

EXIT_OK, EXIT_FAILED, EXIT_TIMEOUT = 0, 1, 124   # 124 as in coreutils timeout(1)
GRACE = 5.0                 # s a stopped process gets between its signal and SIGKILL
INTERRUPT_GRACE = 1.0       # s the same after Ctrl-C: a person is waiting
TTY_REFRESH = 0.1           # s between redraws of the live status line
PLAIN_REFRESH = 2.0         # s between progress lines when stderr is not a terminal
MAX_LINE = 64 * 1024        # bytes; a longer unterminated line is shown in pieces

# The last stderr line of a failure that a restart would only repeat.
_RECURRING = (
    (re.compile(r"^(ModuleNotFoundError|ImportError): "), "an import failed"),
    (re.compile(r"^SyntaxError: "), "its code does not parse"),
    (re.compile(r"can't open file .*No such file or directory"), "its script does not exist"),
)


class _Child:
    def __init__(self, spec: ProcessSpec, proc: subprocess.Popen):
        self.spec, self.proc = spec, proc
        self.name, self.pid = spec.name, proc.pid
        self.code: int | None = None            # returncode once reaped
        self.partial = {"out": bytearray(), "err": bytearray()}
        self.fds: dict[int, tuple[str, IO[bytes]]] = {}    # open pipe fd -> stream, file
        self.pidfd: int | None = None
        self.clock_at_start: float | None = None     # the job's highest clock then
        self.err_tail: collections.deque[str] = collections.deque(maxlen=20)
        self.held: list[str] = []       # stderr after the launcher was interrupted
        self.traceback: list[str] | None = None     # a Python traceback being read


class Supervisor:
    """Starts a plan's processes, relays their output, and ends the job as one unit.

    Not thread-safe; run() belongs to the thread that made it (the main thread, if
    signals are to be forwarded). run() blocks until every child is gone."""

    def __init__(self, plan: LaunchPlan, *, cwd: str = ".", timeout: float | None = None,
                 timeout_source: str = "--timeout", grace: float = GRACE, quiet: bool = False,
                 out: IO[str] | None = None, err: IO[str] | None = None,
                 base_env: dict[str, str] | None = None, elastic=None):
        self.plan, self.cwd, self.grace, self.quiet = plan, cwd, grace, quiet
        self.timeout, self.timeout_source = timeout, timeout_source
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.tty = _isatty(self.err) and not quiet
        self.children: list[_Child] = []
        self.board = ProgressBoard(plan.job.workers.replicas)
        self.sel = selectors.DefaultSelector()
        self.restarts = 0                       # restarts so far, against backoffLimit
        self.signum: int | None = None          # a signal the launcher got
        self.hurry = False                      # a second one: skip the grace period
        self.stopping = False                   # _stop() is under way
        self.status_shown = ""
        self.last_draw, self.drawn_version = 0.0, 0
        self.t0 = time.monotonic()
        self.said_waiting = False       # the plain "waiting for the first progress" line
        self.tracebacks: dict[tuple[str, ...], str] = {}  # shown once: text -> process
        self.max_clock: float | None = None     # the highest clock a worker reported
        # geeps.launch.elastic.Elastic when the servers run under the coordinator
        # (failover, joiners, drains); None: a lost server restarts and workers roll back
        self.elastic = elastic
        self.failed_over: set[str] = set()     # servers whose exit the coordinator handled

    # ---- output ----------------------------------------------------------------------

    def say(self, text: str) -> None:
        """A message of the launcher itself, on stderr."""
        self._write(self.err, f"geeps run: {text}\n")

    def _write(self, stream: IO[str], text: str) -> None:
        self._clear_status()
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):
            pass                                # a closed terminal must not stop the job
        self._draw_status(force=True)

    def _clear_status(self) -> None:
        if self.status_shown:
            try:
                self.err.write("\r\x1b[K")
                self.err.flush()
            except (OSError, ValueError):
                pass
            self.status_shown = ""

    def _draw_status(self, force: bool = False) -> None:
        if self.quiet or self.stopping:
            return
        now = time.monotonic()
        if self.tty:
            first_progress = self.board.version and not self.drawn_version
            if not force and not first_progress and now - self.last_draw < TTY_REFRESH:
                return
            self.drawn_version = self.board.version
            width = shutil.get_terminal_size((100, 20)).columns - 1
            text = f"[{_elapsed(now - self.t0)}] {self.board.status()}"[:max(width, 10)]
            try:
                self.err.write("\r\x1b[K" + text)
                self.err.flush()
            except (OSError, ValueError):
                return
            self.status_shown, self.last_draw = text, now
        elif not force and self.board.version == 0:
            # A start-up (torch imports, connecting) can take seconds: say what runs.
            if not self.said_waiting and now - self.t0 >= PLAIN_REFRESH:
                self.said_waiting = True
                self._status_line(now)
        elif not force and self.board.version != self.drawn_version \
                and now - self.last_draw >= PLAIN_REFRESH:
            self.last_draw, self.drawn_version = now, self.board.version
            self._status_line(now)

    def _status_line(self, now: float) -> None:
        """The board's status as one plain line (no terminal to redraw in)."""
        try:
            self.err.write(f"geeps run: [{_elapsed(now - self.t0)}] {self.board.status()}\n")
            self.err.flush()
        except (OSError, ValueError):
            pass

    def _line(self, child: _Child, stream: str, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        if child.spec.role == "worker":
            fields = progress.parse(text)
            if fields is not None:
                if isinstance(fields.get("clock"), (int, float)):
                    self.max_clock = max(self.max_clock or 0, fields["clock"])
                self.board.update(child.spec.rank, fields, time.monotonic())
                self._draw_status()
                return
        if stream == "err":
            child.err_tail.append(text)
            if self.signum is not None:
                child.held.append(text)     # shown at its exit, unless only Ctrl-C's echo
                return
            if self._traceback_line(child, text):
                return
        self._write(self.out if stream == "out" else self.err, f"[{child.name}] {text}\n")

    # ---- children --------------------------------------------------------------------

    def _start(self, spec: ProcessSpec) -> _Child:
        proc = subprocess.Popen(
            spec.argv, cwd=self.cwd, env={**self.base_env, **spec.env},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,     # its own process group: killpg reaches its children
            preexec_fn=_die_with(os.getpid()))
        child = _Child(spec, proc)
        child.clock_at_start = self.max_clock
        self.children.append(child)
        for stream, f in (("out", proc.stdout), ("err", proc.stderr)):
            fd = f.fileno()
            os.set_blocking(fd, False)
            child.fds[fd] = (stream, f)
            self.sel.register(fd, selectors.EVENT_READ, (child, stream))
        try:
            child.pidfd = os.pidfd_open(proc.pid)
            self.sel.register(child.pidfd, selectors.EVENT_READ, (child, "exit"))
        except (AttributeError, OSError):
            child.pidfd = None          # no pidfd here: exits are seen on the next tick
        if spec.role == "worker":
            self.board.started(spec.rank, time.monotonic())
        return child

    def _read(self, child: _Child, fd: int) -> None:
        stream, f = child.fds[fd]
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            buf = child.partial[stream]
            if not data:
                if buf:
                    self._line(child, stream, bytes(buf))
                    buf.clear()
                self.sel.unregister(fd)
                del child.fds[fd]
                f.close()
                return
            buf.extend(data)
            while True:
                nl = buf.find(b"\n")
                if nl < 0:
                    if len(buf) >= MAX_LINE:
                        self._line(child, stream, bytes(buf))
                        buf.clear()
                    break
                self._line(child, stream, bytes(buf[:nl + 1]))
                del buf[:nl + 1]

    def _pump(self, timeout: float) -> None:
        """Relay output for up to `timeout` s, returning early when a child exits."""
        for key, _ in self.sel.select(max(0.0, timeout)):
            child, what = key.data
            if what == "control":
                self.elastic.control.serve_one(self.elastic.handle)
            elif what == "exit":
                self.sel.unregister(key.fd)
                os.close(key.fd)
                child.pidfd = None
            elif key.fd in child.fds:
                self._read(child, key.fd)

    def _reap(self) -> list[_Child]:
        """Children that exited since the last call, their final output relayed."""
        done = []
        for c in self.children:
            if c.code is None and c.proc.poll() is not None:
                c.code = c.proc.returncode
                for fd in list(c.fds):
                    self._read(c, fd)       # what it wrote before dying comes first
                self._show_traceback(c)     # one cut short by the exit
                self._release_held(c)
                done.append(c)
        return done

    def _signal_groups(self, sig: int, children) -> None:
        for c in children:
            try:
                os.killpg(c.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass                        # the whole group is gone already

    # ---- the job ---------------------------------------------------------------------

    def _on_signal(self, signum, frame) -> None:
        if self.signum is not None or self.stopping:
            self.hurry = True           # asked twice, or while stopping: no more grace
        if self.signum is None:
            self.signum = signum

    def run(self) -> int:
        """Start the plan, supervise it, and return the launcher's exit code."""
        handlers = {}
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            try:
                handlers[sig] = signal.signal(sig, self._on_signal)
            except ValueError:
                pass                        # not the main thread: nothing to forward
        atexit.register(self.kill_all)
        reaper = _set_subreaper(True)
        try:
            return self._run()
        finally:
            if self.elastic is not None:
                self.elastic.close()
            self.kill_all()
            atexit.unregister(self.kill_all)
            if reaper:
                _set_subreaper(False)
            for sig, h in handlers.items():
                signal.signal(sig, h)
            self._clear_status()
            self.sel.close()

    def _run(self) -> int:
        for spec in self.plan.processes:        # servers come first in the plan
            if self.signum is not None:
                break
            try:
                self._start(spec)
            except OSError as e:
                self.say(f"{spec.name}: cannot start {spec.argv[0]}: {e.strerror or e}")
                self._stop(signal.SIGTERM)
                return EXIT_FAILED
        if self.signum is None:
            self.say("pids: " + ", ".join(f"{c.name} {c.pid}" for c in self.children))
            if self.elastic is not None:
                self._start_elastic()
        deadline = None if self.timeout is None else self.t0 + self.timeout
        workers = [c for c in self.children if c.spec.role == "worker"]
        while True:
            now = time.monotonic()
            if self.signum is not None:
                return self._interrupted()
            if deadline is not None and now >= deadline:
                self.say(f"job {self.plan.job.name} ran past its time limit of "
                         f"{self.timeout:g} s ({self.timeout_source}); stopping it")
                self._stop(signal.SIGTERM)
                return EXIT_TIMEOUT
            for c in self._reap():
                if self._elastic_exit(c, workers):
                    continue
                replacement = self._maybe_restart(c, workers)
                if replacement is not None:
                    if c in workers:
                        workers[workers.index(c)] = replacement
                    continue
                failure = self._failure(c, workers)
                if failure:
                    self.say(f"{failure}; stopping the other processes")
                    self._stop(signal.SIGTERM)
                    self.say(f"job {self.plan.job.name} failed: {failure}")
                    return EXIT_FAILED
            if all(c.code == 0 for c in workers):
                return self._finish()
            if self.elastic is not None:
                self._watch_servers()
            wait = 0.25 if deadline is None else min(0.25, deadline - now)
            self._pump(wait)
            self._draw_status()

    # ---- servers under the coordinator (geeps.launch.elastic) ------------------------

    def _start_elastic(self) -> None:
        for c in self.children:
            if c.spec.role == "server":
                self.elastic.started(c.name, c.spec.rank, c.pid)
        self.elastic.start_process = self._start
        self.sel.register(self.elastic.control.fileno(), selectors.EVENT_READ,
                          (None, "control"))
        self.elastic.start()

    def _elastic_exit(self, c: _Child, workers: list[_Child]) -> bool:
        """Whether the coordinator took care of server `c`'s exit (failed over, or
        drained); False: the usual restart and failure rules apply."""
        if self.elastic is None or c.spec.role != "server" or self.stopping:
            return False
        running = any(w.code is None for w in workers)
        what = self.elastic.on_exit(c.name, c.code, running,
                                    lambda: self._take_restart(c, "server"))
        if what != "rollback":
            self.failed_over.add(c.name)
        return what != "rollback"

    def _take_restart(self, c: _Child, role_name: str) -> bool:
        limit = self.plan.job.run_policy.get("backoffLimit", 0)
        if self.restarts >= limit:
            self.say(f"{c.name}: backoffLimit {limit} reached, not replacing it")
            return False
        self.restarts += 1
        return True

    def _watch_servers(self) -> None:
        """Fence joiners that never answered; stop servers that were drained."""
        self.elastic.fence_overdue()
        for name in self.elastic.to_stop():
            live = [c for c in self.children if c.name == name and c.code is None]
            if live:
                self.say(f"{name} holds no rows any more; stopping it")
                self._signal_groups(signal.SIGTERM, live)

    def _maybe_restart(self, c: _Child, workers: list[_Child]) -> _Child | None:
        """Restart a failed process as the operator would: per role restartPolicy,
        within runPolicy.backoffLimit (restarts counted over the whole job)."""
        if c.code == 0 or self.stopping or self.signum is not None:
            return None
        if c.spec.role == "server" and all(w.code is not None for w in workers):
            return None
        role = self.plan.job.servers if c.spec.role == "server" else self.plan.job.workers
        if not retryable(role.restart_policy, shell_code(c.code)):
            return None
        why = self._will_recur(c)
        if why:
            self.say(f"{c.name} (pid {c.pid}) failed with {describe_exit(c.code)}; not "
                     f"restarting it ({role.restart_policy}): {why}, a restart would fail "
                     f"the same way")
            return None
        limit = self.plan.job.run_policy.get("backoffLimit", 0)
        if self.restarts >= limit:
            self.say(f"{c.name} (pid {c.pid}) failed with {describe_exit(c.code)}; "
                     f"backoffLimit {limit} reached, no more restarts")
            return None
        self.restarts += 1
        self.say(f"{c.name} (pid {c.pid}) failed with {describe_exit(c.code)}; restarting it "
                 f"({role.restart_policy}, restart {self.restarts} of {limit})")
        self.children.remove(c)         # its successor stands for it from now on
        return self._start(c.spec)

    def _will_recur(self, c: _Child) -> str | None:
        """Why a failure would happen again on a restart, or None when it may not.

        Locally a restart is the same program on the same files: an import error, a
        missing script, or an exit before any worker made progress comes back each
        time, and so does one after progress when the processes restarted since (it
        failed the same way) took the job no further. Signals (a kill, the OOM killer)
        and EX_TEMPFAIL say nothing about the program, and a failure after new progress
        may be a lost peer: those are retried."""
        code = shell_code(c.code)
        if code >= 128 or code == EX_TEMPFAIL:
            return None
        if code in (126, 127):
            return "its command cannot be run"
        last = next((line for line in reversed(c.err_tail) if line.strip()), "")
        for pattern, why in _RECURRING:
            if pattern.search(last):
                return why
        if self.max_clock is None:
            return "it exited before any worker reported a clock"
        if c.clock_at_start is not None and self.max_clock <= c.clock_at_start:
            return (f"the job got no further than clock {format_number(self.max_clock)} "
                    f"since it was restarted")
        return None

    def _failure(self, c: _Child, workers: list[_Child]) -> str | None:
        if c.spec.role == "worker" and c.code == 0:
            return None
        if c.spec.role == "server" and c.code == 0:
            running = sum(1 for w in workers if w.code is None)
            if running == 0:
                return None             # it went with the last worker: nothing was lost
            return f"{c.name} (pid {c.pid}) exited while {running} workers were running"
        return f"{c.name} (pid {c.pid}) failed with {describe_exit(c.code)}" if c.code > 0 \
            else f"{c.name} (pid {c.pid}) failed: {describe_exit(c.code)}"

    def _finish(self) -> int:
        """Every worker exited 0: stop the servers and sum up."""
        elapsed = time.monotonic() - self.t0
        servers = [c for c in self.children if c.spec.role == "server"]
        killed = self._stop(signal.SIGTERM)
        bad = [c for c in servers if c.code not in (0, -signal.SIGTERM)
               and c.name not in self.failed_over]     # its replicas took over
        for c in bad:
            if c in killed:
                self.say(f"{c.name} (pid {c.pid}) did not stop within {self.grace:g} s "
                         f"of SIGTERM; killed it")
            else:
                self.say(f"{c.name} (pid {c.pid}) failed while stopping: "
                         f"{describe_exit(c.code)}")
        self.say(self._summary(elapsed, ok=not bad))
        return EXIT_FAILED if bad else EXIT_OK

    def _interrupted(self) -> int:
        """The launcher got a signal: forward it, stop everything, say how far it got."""
        name = signal.Signals(self.signum).name
        interactive = self.signum == signal.SIGINT
        self.say(f"got {name}; stopping {self._running_count()} processes" +
                 (" (Ctrl-C again kills them at once)" if interactive else ""))
        self._stop(self.signum, INTERRUPT_GRACE if interactive else None)
        self.say(self._progress_summary(f"interrupted by {name}"))
        return 128 + self.signum

    def _progress_summary(self, what: str) -> str:
        job = self.plan.job
        elapsed = time.monotonic() - self.t0
        head = (f"job {job.name} {what} after {elapsed:.1f} s ({job.workers.replicas} "
                f"workers, {self.plan.shard_layout()})")
        c = self.board.clocks()
        return head + (f": reached clock {format_number(c[1])}" if c
                       else ": no worker had reported progress")

    def _traceback_line(self, child: _Child, text: str) -> bool:
        """Collect a Python traceback and show it once per job: every worker running
        the same broken script prints the same one. True when `text` was taken."""
        if child.traceback is None:
            if not text.startswith("Traceback (most recent call last):"):
                return False
            child.traceback = [text]
            return True
        child.traceback.append(text)
        if text[:1].isspace() or not text:
            return True
        # The exception line ends it.
        self._show_traceback(child)
        return True

    def _show_traceback(self, child: _Child) -> None:
        lines, child.traceback = tuple(child.traceback or ()), None
        if not lines:
            return
        first = self.tracebacks.get(lines)
        if first is not None and first != child.name:
            self._write(self.err, f"[{child.name}] {lines[-1]} (the same traceback as "
                                  f"{first})\n")
            return
        self.tracebacks.setdefault(lines, child.name)
        self._write(self.err, "".join(f"[{child.name}] {line}\n" for line in lines))

    def _release_held(self, c: _Child) -> None:
        # A Python child stopped by the forwarded SIGINT prints a KeyboardInterrupt
        # traceback: the echo of the user's own Ctrl-C, not news. Anything else shows.
        held, c.held = c.held, []
        if any(line.strip().startswith("KeyboardInterrupt") for line in held):
            return
        for line in held:
            self._write(self.err, f"[{c.name}] {line}\n")

    def _summary(self, elapsed: float, ok: bool) -> str:
        job = self.plan.job
        head = f"job {job.name} {'succeeded' if ok else 'finished, but a server failed'} " \
               f"in {elapsed:.1f} s ({job.workers.replicas} workers, " \
               f"{self.plan.shard_layout()})"
        c, n = self.board.clocks(), self.board.total_samples
        extra = []
        if c:
            extra.append(f"clock {format_number(c[1])}")
        if n:
            extra.append(f"{n:,.0f} samples, {n / max(elapsed, 1e-9):,.0f} samples/s")
        loss = self.board.mean("loss")
        if loss is not None:
            extra.append(f"final loss {loss:.4g}")
        return head + (": " + "; ".join(extra) if extra else "")

    def _running_count(self) -> int:
        return sum(1 for c in self.children if c.code is None and c.proc.poll() is None)

    def _stop(self, sig: int, grace: float | None = None) -> set[_Child]:
        """Signal every process group, wait up to the grace period, then SIGKILL.

        Groups whose leader already exited are signalled too: what a finished
        worker left behind must not outlive the job. Returns the children that
        needed SIGKILL."""
        self.stopping = True
        self._signal_groups(sig, self.children)
        deadline = time.monotonic() + (self.grace if grace is None else min(grace, self.grace))
        while not self.hurry and any(c.code is None for c in self.children):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._pump(min(left, 0.25))
            self._reap()
        killed = {c for c in self.children if c.code is None}
        self.kill_all()
        return killed

    def kill_all(self) -> None:
        """SIGKILL every child's process group, reap the children and relay their last
        output. Safe to call more than once (it is also an atexit hook)."""
        self._signal_groups(signal.SIGKILL, self.children)
        for c in self.children:
            if c.code is None:
                try:
                    c.proc.wait(5)
                except subprocess.TimeoutExpired:
                    continue                # stuck in the kernel; nothing more to do
        self._reap()
        self._reap_orphans()
        # A grandchild that escaped into its own session may hold a pipe open; its
        # output is not worth hanging for.
        end = time.monotonic() + 1.0
        while any(c.fds for c in self.children) and time.monotonic() < end:
            self._pump(0.05)
        for c in self.children:
            self._show_traceback(c)
            self._release_held(c)
            for fd, (_, f) in list(c.fds.items()):
                self.sel.unregister(fd)
                f.close()
            c.fds.clear()
            if c.pidfd is not None:
                self.sel.unregister(c.pidfd)
                os.close(c.pidfd)
                c.pidfd = None


    def _reap_orphans(self, timeout: float = 2.0) -> None:
        """Wait for what the children started, once they are killed.

        As a child subreaper the launcher inherits the orphans of its children, so it
        can wait for them: when run() returns, nothing of the job is alive, not even
        a zombie. Only groups whose leader is reaped are waited on (a waitpid on the
        group must not steal a leader's exit status from Popen)."""
        groups = {c.pid for c in self.children if c.code is not None}
        deadline = time.monotonic() + timeout
        while groups and time.monotonic() < deadline:
            for pgid in list(groups):
                try:
                    while os.waitpid(-pgid, os.WNOHANG)[0]:
                        pass
                except ChildProcessError:
                    groups.discard(pgid)        # none of ours left in it
            if groups:
                time.sleep(0.01)                # SIGKILLed members take a moment to die


PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36    # from <linux/prctl.h>


def _prctl():
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None                     # not Linux


def _set_subreaper(on: bool) -> bool:
    """Make this process the reaper of its descendants' orphans (Linux); False if not."""
    prctl = _prctl()
    return prctl is not None and prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0


def _die_with(launcher: int):
    """A preexec_fn: the child is SIGKILLed if the launcher dies, even by SIGKILL, when
    no handler of ours can run. (Safe here: the launcher has no other threads.)"""
    prctl = _prctl()        # looked up before fork: the child only makes the call
    if prctl is None:
        return None

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != launcher:    # it died before the line above took effect
            os.kill(os.getpid(), signal.SIGKILL)
    return arm


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _elapsed(s: float) -> str:
    m, s = divmod(int(s), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
