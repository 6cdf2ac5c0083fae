"""The default lead-scoring model, trained once per test session and copied into the model
registry of every test that starts the sales service (no tests here).

A sales service starting on an empty registry trains the default model: seconds of CPU each time,
in every test process and in every ``ecosistema up`` child process a test runs. The copy is what
that first start registers and promotes: the product's own ``ensure_default_model`` trains it,
and the service checks its files against their manifest when it loads it. First start on an
empty registry keeps its own tests (``test_sales_first_start.py``, ``test_ml_lease.py``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # LightGBM and pandas load only in sessions that start the sales service
    from ecosistema.ml import ModelRegistry
    from ecosistema.platform.config import Settings


class DefaultModelCache:
    """A registry holding the default model, built on first use by one of the session's
    processes (the others wait for it), shared by all of them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "default-model-registry"
        self._built = False

    def registry(self) -> ModelRegistry:
        """The cache's registry, trained and promoted by whichever process asks first."""
        from ecosistema.ml import ModelRegistry, ensure_default_model

        if not self._built:
            self.root.mkdir(parents=True, exist_ok=True)
            with (self.root / "default-model.lock").open("w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
                if not self.path.exists():
                    staging = self.root / f"default-model-registry.{os.getpid()}"
                    shutil.rmtree(staging, ignore_errors=True)
                    ensure_default_model(ModelRegistry(staging))
                    staging.rename(self.path)  # whole or absent, should this process die
            self._built = True
        return ModelRegistry(self.path)

    def seed(self, settings: Settings) -> None:
        """Put the default model, serving, in the registry of a platform about to start with
        ``settings``, as first start would. Nothing when that start would train another model
        (``sales_macro_indicators`` set), none (``sales_train_default_model`` off), or finds a
        registry already there."""
        from fsspec.implementations.local import LocalFileSystem

        from ecosistema.ml import ModelRegistry

        if not settings.sales_train_default_model or settings.sales_macro_indicators:
            return
        target = ModelRegistry(settings.ml_registry_location())
        if not isinstance(target.fs, LocalFileSystem):
            raise ValueError(f"seeding supports registries on local paths, not {target.url}")
        if target.fs.exists(target.root):
            return
        shutil.copytree(self.registry().root, target.root)
