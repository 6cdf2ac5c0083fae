"""The compiled gateway hot path: used only when its build matches the sources, off on request,
and the same behaviour interpreted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ecosistema.gateway import native

ROOT = Path(__file__).resolve().parents[2]


def _fake_build(directory: Path, sources: dict[str, str] | None = None) -> None:
    """A build directory as ``native.build`` leaves it (empty stand-ins for the libraries)."""
    gateway = directory / "ecosistema" / "gateway"
    gateway.mkdir(parents=True)
    for name in native.MODULES:
        (gateway / f"{name}.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    manifest = {
        "python": sys.implementation.cache_tag,
        "sources": native.digests() if sources is None else sources,
        "modules": native.MODULES,
    }
    (directory / native.MANIFEST).write_text(json.dumps(manifest))


def test_a_build_matching_every_source_is_current_and_goes_first_on_the_package_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECOSISTEMA_NATIVE_DIR", str(tmp_path))
    monkeypatch.delenv("ECOSISTEMA_NATIVE", raising=False)
    _fake_build(tmp_path)
    assert native.status() == ("current", str(tmp_path))
    package_path = ["/src/ecosistema/gateway"]
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert native.activate(package_path)
    assert package_path == [str(tmp_path / "ecosistema" / "gateway"), "/src/ecosistema/gateway"]
    assert str(tmp_path) in sys.path  # where the modules' shared runtime library is found


def test_a_build_of_older_sources_is_stale_and_never_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECOSISTEMA_NATIVE_DIR", str(tmp_path))
    monkeypatch.delenv("ECOSISTEMA_NATIVE", raising=False)
    sources = native.digests()
    sources["proxy"] = "0" * 64  # proxy.py was edited after the build
    _fake_build(tmp_path, sources)
    state, why = native.status()
    assert state == "stale" and "proxy" in why
    package_path = ["/src/ecosistema/gateway"]
    assert not native.activate(package_path)
    assert package_path == ["/src/ecosistema/gateway"]


def test_a_build_for_another_python_or_with_a_module_missing_is_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECOSISTEMA_NATIVE_DIR", str(tmp_path))
    monkeypatch.delenv("ECOSISTEMA_NATIVE", raising=False)
    _fake_build(tmp_path)
    next(tmp_path.glob("ecosistema/gateway/upstream.*.so")).unlink()
    assert native.status() == ("stale", "compiled module missing: upstream")
    manifest = json.loads((tmp_path / native.MANIFEST).read_text())
    (tmp_path / native.MANIFEST).write_text(json.dumps({**manifest, "python": "cpython-00"}))
    assert native.status() == ("stale", "built for cpython-00")


def test_no_build_is_absent_and_the_switch_turns_a_current_build_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECOSISTEMA_NATIVE_DIR", str(tmp_path / "nothing"))
    monkeypatch.delenv("ECOSISTEMA_NATIVE", raising=False)
    assert native.status()[0] == "absent"
    monkeypatch.setenv("ECOSISTEMA_NATIVE_DIR", str(tmp_path))
    _fake_build(tmp_path)
    for off in ("0", "false", "Off"):
        monkeypatch.setenv("ECOSISTEMA_NATIVE", off)
        assert native.status()[0] == "disabled"
        assert not native.activate([])


def test_this_run_uses_the_compiled_hot_path_whenever_a_current_build_exists() -> None:
    import ecosistema.gateway.proxy as proxy

    state, why = native.status()
    if state != "current":
        pytest.skip(f"hot path not compiled here ({state}: {why}); tests run it interpreted")
    assert native.active()
    assert not proxy.__file__ or not proxy.__file__.endswith(".py")


def test_the_hot_path_behaves_the_same_interpreted() -> None:
    """The compiled build is what runs; the same tests pass on the sources it came from."""
    env = {**os.environ, "ECOSISTEMA_NATIVE": "0"}
    env.pop("PYTEST_XDIST_WORKER", None)
    check = subprocess.run(
        [sys.executable, "-c", "import ecosistema.gateway.proxy as p; print(p.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert check.stdout.strip().endswith("proxy.py")
    run = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"),
            str(ROOT / "tests" / "unit" / "test_gateway_hotpath.py"),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]


def test_the_status_command_says_why_and_fails_only_when_a_build_is_wanted_but_unusable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from ecosistema.cli import app

    runner = CliRunner()
    monkeypatch.setenv("ECOSISTEMA_NATIVE_DIR", str(tmp_path))
    monkeypatch.delenv("ECOSISTEMA_NATIVE", raising=False)
    absent = runner.invoke(app, ["native", "status"])
    assert absent.exit_code == 1 and absent.output.startswith("absent: no build in ")
    _fake_build(tmp_path)
    current = runner.invoke(app, ["native", "status"])
    assert current.exit_code == 0 and current.output.strip() == f"current: {tmp_path}"
    monkeypatch.setenv("ECOSISTEMA_NATIVE", "0")
    disabled = runner.invoke(app, ["native", "status"])
    assert disabled.exit_code == 0 and disabled.output.startswith("disabled:")


def test_the_build_compiles_a_copy_of_the_python_files_only(tmp_path: Path) -> None:
    """An installed package is compiled from a copy (mypy must not take site-packages for a
    source tree); only sources, the typing marker and directories are copied."""
    for name in ("a.py", "py.typed", "data.csv", "model.joblib"):
        (tmp_path / name).write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "__pycache__").mkdir()
    names = ["a.py", "py.typed", "data.csv", "model.joblib", "sub", "__pycache__"]
    assert native._not_python(str(tmp_path), names) == {"data.csv", "model.joblib", "__pycache__"}
