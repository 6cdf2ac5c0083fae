"""Model registry: versioned artifacts under ``./data`` or any fsspec URL, and promotion.

Layout under the registry URL, one folder per model name::

    {url}/{name}/v{n}/model.txt        LightGBM's own text format (families "hybrid", "lightgbm")
    {url}/{name}/v{n}/linear.json      coefficients and scaling (families "hybrid", "logistic")
    {url}/{name}/v{n}/spec.json        the feature spec
    {url}/{name}/v{n}/pipeline.json    fitted feature state (category vocabularies, TF-IDF terms)
    {url}/{name}/v{n}/pipeline.npz     its arrays (IDF weights, SVD components), no pickle
    {url}/{name}/v{n}/reference.json   training distributions for drift monitoring
    {url}/{name}/v{n}/metrics.json     evaluation
    {url}/{name}/v{n}/manifest.json    written last: facts, data hash, sha256 of every file
    {url}/{name}/serving.json          which version serves, and the promotion history

Artifacts are code-adjacent (a LightGBM model file is parsed by native code): only point a
registry at storage you control; never at a URL someone else can write to.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fsspec
import lightgbm as lgb
import numpy as np
import structlog
from fsspec.spec import AbstractFileSystem

from ecosistema.ml.errors import ModelNotFound, PromotionRefused
from ecosistema.ml.evaluation import headline
from ecosistema.ml.features import FeaturePipeline
from ecosistema.ml.model import Family, LinearModel, TrainedModel
from ecosistema.ml.spec import FeatureSpec

log = structlog.get_logger(__name__)
DEFAULT_MODEL = "lead-scoring"
_VERSION = re.compile(r"^v(\d+)$")


@dataclass(frozen=True)
class ModelVersion:
    """A registered version's facts; :meth:`ModelRegistry.load` loads the model itself."""

    name: str
    version: str
    created_at: datetime
    trained_at: datetime
    data_hash: str
    rows: int
    positives: int
    training_seconds: float
    headline: float | None
    metrics: dict[str, Any]
    spec: FeatureSpec
    url: str

    @property
    def number(self) -> int:
        """The version's sequence number."""
        return int(self.version[1:])


@dataclass(frozen=True)
class Promotion:
    """One entry of the serving history."""

    version: str
    promoted_at: datetime
    forced: bool
    previous: str | None


class ModelRegistry:
    """Versioned models of one name, at a local path or any fsspec URL (s3://, gs://, memory://)."""

    def __init__(self, url: str | Path, name: str = DEFAULT_MODEL) -> None:
        self.url = str(url).rstrip("/")
        self.name = name
        fs, root = fsspec.core.url_to_fs(self.url)
        self.fs: AbstractFileSystem = fs
        self.root = f"{root.rstrip('/')}/{name}"

    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _write(self, path: str, data: bytes) -> None:
        """Write via a temporary name and a rename, so readers never see half a file."""
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        temporary = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        self.fs.pipe_file(temporary, data)
        self.fs.mv(temporary, path)

    def _read(self, path: str) -> bytes:
        data: bytes = self.fs.cat_file(path)
        return data

    def register(self, model: TrainedModel) -> ModelVersion:
        """Store a trained model as the next version; it does not serve until promoted."""
        numbers = [v.number for v in self._versions_raw()]
        version = f"v{max(numbers, default=0) + 1}"
        state, arrays = model.pipeline.state()
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        files: dict[str, bytes] = {}
        if model.linear is not None:
            files["linear.json"] = json.dumps(model.linear.state()).encode()
        if model.booster is not None:
            files["model.txt"] = model.booster.model_to_string().encode()
        files |= {
            "spec.json": model.spec.to_json().encode(),
            "pipeline.json": json.dumps(state, sort_keys=True).encode(),
            "pipeline.npz": buffer.getvalue(),
            "reference.json": json.dumps(model.drift_reference).encode(),
            "metrics.json": json.dumps(model.metrics, indent=2, sort_keys=True).encode(),
        }
        for filename, data in files.items():
            self._write(self._path(version, filename), data)
        manifest = {
            "name": self.name,
            "version": version,
            "created_at": datetime.now(UTC).isoformat(),
            "trained_at": model.trained_at.isoformat(),
            "data_hash": model.data_hash,
            "rows": model.rows,
            "positives": model.positives,
            "training_seconds": model.training_seconds,
            "family": model.family,
            "rounds": model.rounds,
            "calibration": list(model.calibration),
            "params": model.params,
            "score_percentiles": model.score_percentiles,
            "headline": headline(model.metrics),
            "lightgbm": lgb.__version__,
            "files": {k: hashlib.sha256(v).hexdigest() for k, v in files.items()},
        }
        self._write(self._path(version, "manifest.json"), json.dumps(manifest, indent=2).encode())
        model.version = version
        log.info(
            "ml.model_registered", model=self.name, version=version, headline=manifest["headline"]
        )
        return self.get(version)

    def _versions_raw(self) -> list[ModelVersion]:
        if not self.fs.exists(self.root):
            return []
        found: list[ModelVersion] = []
        for entry in self.fs.ls(self.root, detail=False):
            folder = str(entry).rstrip("/").rsplit("/", 1)[-1]
            if _VERSION.match(folder) and self.fs.exists(self._path(folder, "manifest.json")):
                found.append(self.get(folder))
        return sorted(found, key=lambda v: v.number)

    def list(self) -> builtins.list[ModelVersion]:
        """Every complete version, oldest first."""
        return self._versions_raw()

    def get(self, version: str) -> ModelVersion:
        """A version's facts; ``ModelNotFound`` when absent."""
        version = _normalise(version)
        try:
            manifest = json.loads(self._read(self._path(version, "manifest.json")))
            metrics = json.loads(self._read(self._path(version, "metrics.json")))
            spec = FeatureSpec.from_json(self._read(self._path(version, "spec.json")).decode())
        except FileNotFoundError as exc:
            raise ModelNotFound(f"model {self.name} has no version {version}") from exc
        return ModelVersion(
            name=self.name,
            version=version,
            created_at=datetime.fromisoformat(manifest["created_at"]),
            trained_at=datetime.fromisoformat(manifest["trained_at"]),
            data_hash=manifest["data_hash"],
            rows=int(manifest["rows"]),
            positives=int(manifest["positives"]),
            training_seconds=float(manifest["training_seconds"]),
            headline=manifest.get("headline"),
            metrics=metrics,
            spec=spec,
            url=f"{self.url}/{self.name}/{version}",
        )

    def load(self, version: str) -> TrainedModel:
        """The model of a version, ready to score; file hashes are checked against the manifest."""
        version = _normalise(version)
        facts = self.get(version)
        manifest = json.loads(self._read(self._path(version, "manifest.json")))
        files: dict[str, bytes] = {}
        for filename, digest in manifest["files"].items():
            data = self._read(self._path(version, filename))
            if hashlib.sha256(data).hexdigest() != digest:
                raise ValueError(f"{self.name} {version}: {filename} does not match its manifest")
            files[filename] = data
        with np.load(io.BytesIO(files["pipeline.npz"]), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        pipeline = FeaturePipeline.from_state(
            facts.spec, json.loads(files["pipeline.json"]), arrays
        )
        booster = linear = None
        if "linear.json" in files:
            linear = LinearModel.from_state(json.loads(files["linear.json"]))
        if "model.txt" in files:
            booster = lgb.Booster(model_str=files["model.txt"].decode())
        family: Family = "hybrid" if booster is not None and linear is not None else "lightgbm"
        if booster is None:
            family = "logistic"
        a, b = manifest["calibration"]
        return TrainedModel(
            spec=facts.spec,
            pipeline=pipeline,
            booster=booster,
            calibration=(float(a), float(b)),
            params=manifest["params"],
            rounds=int(manifest["rounds"]),
            rows=facts.rows,
            positives=facts.positives,
            data_hash=facts.data_hash,
            trained_at=facts.trained_at,
            training_seconds=facts.training_seconds,
            score_percentiles=[float(x) for x in manifest["score_percentiles"]],
            metrics=facts.metrics,
            drift_reference=json.loads(files["reference.json"]),
            version=version,
            linear=linear,
            family=family,
        )

    def history(self) -> builtins.list[Promotion]:
        """Promotions, oldest first."""
        record = self._serving_record()
        return [
            Promotion(
                version=h["version"],
                promoted_at=datetime.fromisoformat(h["promoted_at"]),
                forced=bool(h["forced"]),
                previous=h.get("previous"),
            )
            for h in record.get("history", [])
        ]

    def _serving_record(self) -> dict[str, Any]:
        try:
            record: dict[str, Any] = json.loads(self._read(self._path("serving.json")))
        except FileNotFoundError:
            return {}
        return record

    def serving(self) -> ModelVersion | None:
        """The version that serves now, if any."""
        version = self._serving_record().get("version")
        return self.get(version) if version else None

    def promote(self, version: str, *, force: bool = False) -> ModelVersion:
        """Make a version serve, only if it beats the serving one on the hold-out (or ``force``)."""
        candidate = self.get(version)
        current = self.serving()
        if current is not None and current.version == candidate.version:
            return candidate
        if current is not None and not force:
            mine, theirs = candidate.headline, current.headline
            if mine is None or theirs is None or mine <= theirs:
                raise PromotionRefused(
                    f"{self.name} {candidate.version} (hold-out ROC-AUC {_fmt(mine)}) does not "
                    f"beat serving {current.version} ({_fmt(theirs)}); use force to promote anyway"
                )
        record = self._serving_record()
        history = record.get("history", [])
        history.append(
            {
                "version": candidate.version,
                "promoted_at": datetime.now(UTC).isoformat(),
                "forced": force,
                "previous": current.version if current else None,
            }
        )
        self._write(
            self._path("serving.json"),
            json.dumps({"version": candidate.version, "history": history}, indent=2).encode(),
        )
        log.info(
            "ml.model_promoted",
            model=self.name,
            version=candidate.version,
            previous=current.version if current else None,
            forced=force,
        )
        return candidate

    def load_serving(self) -> TrainedModel | None:
        """The serving model, loaded, or None when nothing is promoted."""
        current = self.serving()
        return self.load(current.version) if current else None


def _normalise(version: str) -> str:
    text = str(version).strip()
    return text if text.startswith("v") else f"v{text}"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
