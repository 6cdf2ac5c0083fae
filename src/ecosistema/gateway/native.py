"""The gateway's hot path compiled to C with mypyc, used only while it matches the sources.

The modules in ``MODULES`` are ordinary, type-checked Python. ``build()`` compiles them with
mypyc (it comes with mypy) into a directory of their own, next to a manifest of the sources'
SHA-256 digests. ``activate()``, called when ``ecosistema.gateway`` is imported, puts that
directory first on the package's search path only when every digest still matches the source it
would replace; otherwise, or when ``ECOSISTEMA_NATIVE=0``, the same modules run interpreted. An
edited source therefore never runs as its stale compiled copy.

    ecosistema native build    # compile (make up and make test do it)
    ecosistema native status   # current, stale, absent or disabled, and why
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import MutableSequence
from pathlib import Path
from typing import Any

# The modules every proxied request runs through. own.py (static assets located through its
# __file__), auth.py (JWT verification, mostly in the cryptography library) and the configuration
# models (pydantic) stay interpreted.
MODULES = ("balancer", "metrics", "proxy", "ratelimit", "routing", "upstream")
MANIFEST = "manifest.json"
_PACKAGE_DIR = Path(__file__).resolve().parent


def enabled() -> bool:
    """False when ``ECOSISTEMA_NATIVE`` is set to 0, false, no or off."""
    return os.environ.get("ECOSISTEMA_NATIVE", "1").strip().lower() not in (
        "0",
        "false",
        "no",
        "off",
    )


def native_dir() -> Path:
    """Where the compiled modules live: ``ECOSISTEMA_NATIVE_DIR``, else under the environment's
    prefix (the virtualenv's, in a checkout), one directory per Python version."""
    configured = os.environ.get("ECOSISTEMA_NATIVE_DIR")
    if configured:
        return Path(configured)
    return Path(sys.prefix) / "share" / "ecosistema" / "native" / sys.implementation.cache_tag


def digests(package_dir: Path = _PACKAGE_DIR) -> dict[str, str]:
    """SHA-256 of each compiled module's source."""
    return {
        name: hashlib.sha256((package_dir / f"{name}.py").read_bytes()).hexdigest()
        for name in MODULES
    }


def status(directory: Path | None = None, package_dir: Path = _PACKAGE_DIR) -> tuple[str, str]:
    """``("current" | "stale" | "absent" | "disabled", why)`` for the compiled modules."""
    if not enabled():
        return "disabled", "ECOSISTEMA_NATIVE is off"
    directory = directory or native_dir()
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return "absent", f"no build in {directory}"
    if manifest.get("python") != sys.implementation.cache_tag:
        return "stale", f"built for {manifest.get('python')}"
    try:
        current = digests(package_dir)
    except OSError as exc:
        return "stale", f"source unreadable: {exc}"
    changed = sorted(
        name for name in MODULES if manifest.get("sources", {}).get(name) != current[name]
    )
    if changed:
        return "stale", f"changed since the build: {', '.join(changed)}"
    missing = [name for name in MODULES if not _compiled(directory, name)]
    if missing:
        return "stale", f"compiled module missing: {', '.join(missing)}"
    return "current", str(directory)


def _compiled(directory: Path, name: str) -> bool:
    return any((directory / "ecosistema" / "gateway").glob(f"{name}.*.so")) or any(
        (directory / "ecosistema" / "gateway").glob(f"{name}.*.pyd")
    )


def activate(package_path: MutableSequence[str]) -> bool:
    """Put the compiled modules ahead of the sources on ``package_path`` (the gateway package's
    ``__path__``) when they are current; returns whether they are."""
    state, _ = status()
    if state != "current":
        return False
    directory = native_dir()
    overlay = str(directory / "ecosistema" / "gateway")
    if overlay not in package_path:
        package_path.insert(0, overlay)
    if str(directory) not in sys.path:
        sys.path.append(str(directory))  # the modules' shared runtime library
    return True


def active() -> bool:
    """Whether the gateway's hot path runs compiled in this process."""
    module = sys.modules.get("ecosistema.gateway.proxy")
    return module is not None and not str(getattr(module, "__file__", "")).endswith(".py")


def build(directory: Path | None = None, *, quiet: bool = True) -> Path:
    """Compile ``MODULES`` with mypyc into ``directory`` (replacing what was there)."""
    from mypyc.build import mypycify  # mypy's compiler; a development dependency
    from setuptools import Distribution

    directory = directory or native_dir()
    before = digests()
    with tempfile.TemporaryDirectory(prefix="ecosistema-native-") as tmp:
        work = Path(tmp)
        # Compiled from a copy of the package's Python files: an installed package sits in
        # site-packages, which mypy must not take for a source tree of its own.
        package = work / "src" / "ecosistema"
        shutil.copytree(_PACKAGE_DIR.parent, package, ignore=_not_python)
        if digests(package / "gateway") != before:
            raise RuntimeError("the sources changed while being copied; build again")
        sources = [str(package / "gateway" / f"{name}.py") for name in MODULES]
        # Errors outside the compiled modules, and libraries without type information, are not
        # the build's concern: they run interpreted either way.
        flags = ["--ignore-missing-imports", "--follow-imports=silent"]
        cwd = Path.cwd()
        os.chdir(work)  # mypy's cache and the generated C stay out of the source tree
        try:
            log = work / "build.log"
            with log.open("w") as out, _redirect(out if quiet else None):
                extensions = mypycify([*flags, *sources], opt_level="3")
                dist = Distribution({"name": "ecosistema-native", "ext_modules": extensions})
                command: Any = dist.get_command_obj("build_ext")
                command.build_lib = str(work / "out")
                command.build_temp = str(work / "temp")
                command.inplace = False
                dist.run_command("build_ext")
        except BaseException:
            if quiet and (work / "build.log").exists():
                sys.stderr.write((work / "build.log").read_text()[-4000:])
            raise
        finally:
            os.chdir(cwd)
        staging = directory.with_name(directory.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(work / "out", staging)
        (staging / MANIFEST).write_text(
            json.dumps(
                {"python": sys.implementation.cache_tag, "sources": before, "modules": MODULES},
                indent=2,
            )
        )
    shutil.rmtree(directory, ignore_errors=True)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(directory)
    return directory


def _not_python(directory: str, names: list[str]) -> set[str]:
    """For copytree: leave out everything but Python sources, their marker and directories."""
    kept = {name for name in names if name.endswith(".py") or name == "py.typed"}
    kept |= {name for name in names if os.path.isdir(os.path.join(directory, name))}
    return set(names) - kept | {"__pycache__"}


class _redirect:
    """Send file descriptors 1 and 2 (the C compiler's output too) to ``out`` for a while."""

    def __init__(self, out: Any) -> None:
        self._out = out
        self._saved: list[int] = []

    def __enter__(self) -> None:
        if self._out is None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = [os.dup(1), os.dup(2)]
        os.dup2(self._out.fileno(), 1)
        os.dup2(self._out.fileno(), 2)

    def __exit__(self, *exc: object) -> None:
        if not self._saved:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
