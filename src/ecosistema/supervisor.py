"""A process supervisor: start child processes, wait until they are ready, restart those that die
(with backoff), and stop them all cleanly.

Each child runs in its own session (process group), so a signal reaches every process it forked
(the gateway's workers, say), and it is asked to die with the supervisor (``PR_SET_PDEATHSIG`` on
Linux), so even a supervisor killed with SIGKILL leaves no orphans behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType

import structlog

log = structlog.get_logger("ecosistema.supervisor")

_PR_SET_PDEATHSIG = 1


class SupervisorError(RuntimeError):
    """A child could not be started or did not become ready."""


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """One supervised process: a name for the logs, its command line and environment, and the
    URL that answers 200 once it is ready (``None``: ready as soon as it runs)."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    ready_url: str | None = None
    # Start only once every process before it is ready (a gateway after its upstreams).
    after_previous_ready: bool = False


@dataclass(slots=True)
class _Child:
    spec: ProcessSpec
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    quick_deaths: int = 0
    restart_at: float | None = None
    ready: bool = False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def http_ready(url: str, timeout: float = 2.0) -> bool:
    """Whether ``GET url`` answers 200 (over HTTPS too, without checking the certificate)."""
    context = None
    if url.startswith("https://"):
        # A readiness probe of a child this supervisor started, on its own address: it sends
        # nothing secret and trusts nothing it reads, and a development certificate's CA need
        # not be in this machine's trust store.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:  # noqa: S310 - our URL
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class Supervisor:
    """Keeps a set of processes running until ``stop``.

    A process that exits is started again after ``backoff_base * 2**(n-1)`` seconds (at most
    ``backoff_cap``), where ``n`` counts the deaths that came less than ``stable_after`` seconds
    after a start; one that ran longer is restarted after ``backoff_base``. ``stop`` sends SIGTERM
    to every process group, waits ``stop_grace`` seconds, then sends SIGKILL to what is left.
    """

    def __init__(
        self,
        specs: Sequence[ProcessSpec],
        *,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        stable_after: float = 30.0,
        stop_grace: float = 15.0,
        on_event: Callable[[str, dict[str, object]], None] | None = None,
    ) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError("process names must be unique")
        self._children = {s.name: _Child(s) for s in specs}
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.stable_after = stable_after
        self.stop_grace = stop_grace
        self._on_event = on_event
        self._stopping = threading.Event()
        self._lock = threading.RLock()

    # --- inspection -------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """The supervised processes' names, in start order."""
        return list(self._children)

    def pid(self, name: str) -> int | None:
        """The current process id of ``name``, or ``None`` while it is not running."""
        process = self._children[name].process
        return process.pid if process is not None and process.poll() is None else None

    def restarts(self, name: str) -> int:
        """How many times ``name`` was started again after it died."""
        return self._children[name].restarts

    # --- life cycle -------------------------------------------------------------------------

    def start(self, *, ready_timeout: float = 90.0) -> None:
        """Start every process, then wait until each answers its ready URL; a process marked
        ``after_previous_ready`` starts once those before it are ready."""
        deadline = time.monotonic() + ready_timeout
        for child in self._children.values():
            if child.spec.after_previous_ready:
                self.wait_ready(max(0.0, deadline - time.monotonic()))
            self._spawn(child)
        self.wait_ready(max(0.0, deadline - time.monotonic()))

    def wait_ready(self, timeout: float) -> None:
        """Wait until every process answers its ready URL; ``SupervisorError`` if one exits
        first or the time runs out."""
        deadline = time.monotonic() + timeout
        pending = [
            c for c in self._children.values() if c.spec.ready_url and c.process and not c.ready
        ]
        while pending:
            for child in list(pending):
                process = child.process
                if process is None or process.poll() is not None:
                    code = None if process is None else process.returncode
                    raise SupervisorError(f"{child.spec.name} exited (code {code}) while starting")
                assert child.spec.ready_url is not None
                if http_ready(child.spec.ready_url, timeout=1.0):
                    child.ready = True
                    self._event("process_ready", child, url=child.spec.ready_url)
                    pending.remove(child)
            if pending and time.monotonic() > deadline:
                names = ", ".join(c.spec.name for c in pending)
                raise SupervisorError(f"not ready after {timeout:.0f} s: {names}")
            if pending:
                self._stopping.wait(0.2)
                if self._stopping.is_set():
                    raise SupervisorError("stopped while starting")

    def poll(self) -> None:
        """Notice processes that exited and start them again when their backoff has passed."""
        now = time.monotonic()
        with self._lock:
            if self._stopping.is_set():
                return
            for child in self._children.values():
                process = child.process
                if process is not None and process.poll() is not None:
                    self._schedule_restart(child, process.returncode, now)
                if child.restart_at is not None and now >= child.restart_at:
                    child.restart_at = None
                    child.restarts += 1
                    self._spawn(child)
                    self._event("process_restarted", child, restarts=child.restarts)

    def run(
        self,
        *,
        ready_timeout: float | None = None,
        on_ready: Callable[[], None] | None = None,
        interval: float = 0.2,
    ) -> None:
        """Supervise until ``request_stop`` or SIGTERM/SIGINT, then stop every child (SIGTERM,
        then SIGKILL after ``stop_grace``). With ``ready_timeout``, start the processes first and
        call ``on_ready`` once all are ready. Call from the main thread."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            if ready_timeout is not None:
                self.start(ready_timeout=ready_timeout)
                if on_ready is not None:
                    on_ready()
            while not self._stopping.is_set():
                self.poll()
                self._stopping.wait(interval)
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def request_stop(self) -> None:
        """Ask ``run`` to return (it stops every process first); safe from any thread."""
        self._stopping.set()

    def stop(self) -> None:
        """Stop every process: SIGTERM to each process group, SIGKILL after ``stop_grace``."""
        with self._lock:
            self._stopping.set()
            running = [c for c in reversed(self._children.values()) if c.process is not None]
            for child in running:
                self._signal(child, signal.SIGTERM)
            deadline = time.monotonic() + self.stop_grace
            for child in running:
                assert child.process is not None
                try:
                    child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self._event("process_killed", child, after_seconds=self.stop_grace)
                    self._signal(child, signal.SIGKILL)
                    child.process.wait()
                # Whatever the group leader left behind (forked workers) goes too.
                self._signal(child, signal.SIGKILL)
                self._event("process_stopped", child, code=child.process.returncode)
                child.process = None

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to one supervised process (tests and operators); returns its pid."""
        child = self._children[name]
        if child.process is None or child.process.poll() is not None:
            raise LookupError(f"{name} is not running")
        os.kill(child.process.pid, sig)
        return child.process.pid

    # --- internals --------------------------------------------------------------------------

    def _spawn(self, child: _Child) -> None:
        env = {**os.environ, **child.spec.env}
        try:
            child.process = subprocess.Popen(  # noqa: S603 - our own command lines
                list(child.spec.argv),
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            raise SupervisorError(f"cannot start {child.spec.name}: {exc}") from exc
        child.started_at = time.monotonic()
        child.ready = False
        self._event("process_started", child, pid=child.process.pid)

    def _schedule_restart(self, child: _Child, code: int, now: float) -> None:
        assert child.process is not None
        # Reap the group's leftovers (a gateway's workers) before starting anew.
        self._signal(child, signal.SIGKILL)
        child.process = None
        lived = now - child.started_at
        child.quick_deaths = child.quick_deaths + 1 if lived < self.stable_after else 1
        delay = min(self.backoff_cap, self.backoff_base * 2.0 ** (child.quick_deaths - 1))
        child.restart_at = now + delay
        self._event(
            "process_exited",
            child,
            code=code,
            lived_seconds=round(lived, 1),
            restart_in_seconds=round(delay, 2),
            level="warning",
        )

    @staticmethod
    def _signal(child: _Child, sig: int) -> None:
        if child.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, sig)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._event_raw("signal_received", {"signal": signal.Signals(signum).name})
        self._stopping.set()

    def _event(self, event: str, child: _Child, **fields: object) -> None:
        self._event_raw(event, {"process": child.spec.name, **fields})

    def _event_raw(self, event: str, fields: dict[str, object]) -> None:
        level = str(fields.pop("level", "info"))
        getattr(log, level)(event, **fields)
        if self._on_event is not None:
            self._on_event(event, fields)
