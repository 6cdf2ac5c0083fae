"""The process supervisor with real processes: readiness, restarts with backoff, clean stops,
signals passed on, and no orphans even when the supervisor itself is killed."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ecosistema.supervisor import ProcessSpec, Supervisor, SupervisorError

PY = sys.executable

# A tiny HTTP server answering /readyz, optionally forking a grandchild that writes its pid.
SERVER = textwrap.dedent(
    """
    import http.server, os, signal, subprocess, sys
    port, pidfile, ignore_term = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
    if ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(pidfile, "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
        def log_message(self, *a):
            pass
    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(step)


def server_spec(name: str, tmp: Path, *, ignore_term: bool = False) -> tuple[ProcessSpec, Path]:
    port = free_port()
    pidfile = tmp / f"{name}.pids"
    spec = ProcessSpec(
        name=name,
        argv=[PY, "-c", SERVER, str(port), str(pidfile), "1" if ignore_term else "0"],
        ready_url=f"http://127.0.0.1:{port}/readyz",
    )
    return spec, pidfile


def pids(pidfile: Path) -> tuple[int, int]:
    first, second = pidfile.read_text().split()
    return int(first), int(second)


@pytest.fixture
def events() -> list[tuple[str, dict[str, object]]]:
    return []


@pytest.fixture
def supervised(
    tmp_path: Path, events: list[tuple[str, dict[str, object]]]
) -> Iterator[Callable[..., Supervisor]]:
    made: list[Supervisor] = []

    def make(specs: list[ProcessSpec], **options: float) -> Supervisor:
        sup = Supervisor(specs, on_event=lambda e, f: events.append((e, f)), **options)
        made.append(sup)
        return sup

    yield make
    for sup in made:
        sup.stop()


def test_processes_are_started_and_waited_for_until_ready(
    tmp_path: Path,
    supervised: Callable[..., Supervisor],
    events: list[tuple[str, dict[str, object]]],
) -> None:
    a, _ = server_spec("a", tmp_path)
    b, _ = server_spec("b", tmp_path)
    sup = supervised([a, b])
    sup.start(ready_timeout=30)
    assert sup.pid("a") and sup.pid("b")
    assert [f["process"] for e, f in events if e == "process_ready"] == ["a", "b"]


def test_a_process_marked_after_previous_ready_starts_once_the_others_are_ready(
    tmp_path: Path,
    supervised: Callable[..., Supervisor],
    events: list[tuple[str, dict[str, object]]],
) -> None:
    upstream, _ = server_spec("upstream", tmp_path)
    edge, _ = server_spec("edge", tmp_path)
    sup = supervised([upstream, dataclasses.replace(edge, after_previous_ready=True)])
    sup.start(ready_timeout=30)
    order = [(e, f["process"]) for e, f in events if e in ("process_started", "process_ready")]
    assert order == [
        ("process_started", "upstream"),
        ("process_ready", "upstream"),
        ("process_started", "edge"),
        ("process_ready", "edge"),
    ]


def test_a_process_that_dies_is_started_again_and_logged(
    tmp_path: Path,
    supervised: Callable[..., Supervisor],
    events: list[tuple[str, dict[str, object]]],
) -> None:
    spec, pidfile = server_spec("svc", tmp_path)
    sup = supervised([spec], backoff_base=0.05)
    sup.start(ready_timeout=30)
    first, grandchild = pids(pidfile)
    sup.kill("svc", signal.SIGKILL)

    def restarted() -> bool:
        sup.poll()
        pid = sup.pid("svc")
        return pid is not None and pid != first

    wait_for(restarted)
    sup.wait_ready(30)
    assert sup.restarts("svc") == 1
    exited = [f for e, f in events if e == "process_exited"]
    assert exited[0]["process"] == "svc" and exited[0]["code"] == -signal.SIGKILL
    # What the dead process had forked is cleaned up before the new one starts.
    wait_for(lambda: not alive(grandchild))


def test_quick_deaths_back_off_exponentially_up_to_the_cap(
    supervised: Callable[..., Supervisor], events: list[tuple[str, dict[str, object]]]
) -> None:
    crash = ProcessSpec("crash", [PY, "-c", "raise SystemExit(3)"])
    sup = supervised([crash], backoff_base=0.02, backoff_cap=0.08, stable_after=60)
    sup.start(ready_timeout=5)

    def exits() -> list[dict[str, object]]:
        sup.poll()
        return [f for e, f in events if e == "process_exited"]

    wait_for(lambda: len(exits()) >= 5, timeout=60, step=0.01)
    delays = [f["restart_in_seconds"] for f in exits()[:5]]
    assert delays == [0.02, 0.04, 0.08, 0.08, 0.08]
    assert all(f["code"] == 3 for f in exits())


def test_stop_ends_every_process_and_what_it_forked(
    tmp_path: Path, supervised: Callable[..., Supervisor]
) -> None:
    spec, pidfile = server_spec("svc", tmp_path)
    sup = supervised([spec])
    sup.start(ready_timeout=30)
    leader, grandchild = pids(pidfile)
    sup.stop()
    assert not alive(leader)
    wait_for(lambda: not alive(grandchild))
    assert sup.pid("svc") is None


def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period(
    tmp_path: Path,
    supervised: Callable[..., Supervisor],
    events: list[tuple[str, dict[str, object]]],
) -> None:
    spec, pidfile = server_spec("stubborn", tmp_path, ignore_term=True)
    sup = supervised([spec], stop_grace=0.5)
    sup.start(ready_timeout=30)
    leader, grandchild = pids(pidfile)
    sup.stop()
    assert not alive(leader)
    wait_for(lambda: not alive(grandchild))
    assert any(e == "process_killed" for e, _ in events)


def test_a_process_exiting_while_starting_fails_the_start(
    supervised: Callable[..., Supervisor],
) -> None:
    spec = ProcessSpec("broken", [PY, "-c", "raise SystemExit(2)"], ready_url="http://127.0.0.1:9/")
    sup = supervised([spec])
    with pytest.raises(SupervisorError, match="broken exited"):
        sup.start(ready_timeout=30)


RUNNER = textwrap.dedent(
    """
    import sys
    from ecosistema.supervisor import ProcessSpec, Supervisor
    spec = ProcessSpec("svc", [sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3], "0"],
                       ready_url=f"http://127.0.0.1:{sys.argv[2]}/readyz")
    Supervisor([spec]).run(ready_timeout=30, on_ready=lambda: print("ready", flush=True))
    """
)


def _run_supervisor(tmp_path: Path) -> tuple[subprocess.Popen[str], tuple[int, int]]:
    pidfile = tmp_path / "svc.pids"
    runner = subprocess.Popen(
        [PY, "-c", RUNNER, SERVER, str(free_port()), str(pidfile)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert runner.stdout is not None
    for line in runner.stdout:  # structlog's lines come first
        if line.strip() == "ready":
            break
    else:
        raise AssertionError("the supervisor never got ready")
    return runner, pids(pidfile)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_supervisor_stops_everything_and_exits(
    tmp_path: Path, sig: signal.Signals
) -> None:
    runner, (leader, grandchild) = _run_supervisor(tmp_path)
    runner.send_signal(sig)
    assert runner.wait(timeout=30) == 0
    assert not alive(leader)
    wait_for(lambda: not alive(grandchild))


def test_a_supervisor_killed_outright_leaves_no_orphans(tmp_path: Path) -> None:
    runner, (leader, _) = _run_supervisor(tmp_path)
    runner.kill()
    runner.wait(timeout=10)
    # The child dies with its parent; its own child is then reaped by init, not left running.
    wait_for(lambda: not alive(leader))
