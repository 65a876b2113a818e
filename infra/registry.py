"""The one owner of MLflow: the model registry (one registered model per classifier, alias
``champion`` serves) and run tracking (one experiment per classifier). No other module talks to
MLflow's client; model names and URIs are built here only.

A model version's artifacts are a plain directory (Hugging Face ``save_pretrained`` output plus
``sift_model.json``), so any replica can download and load it without MLflow-specific flavours.

Errors are errors: only MLflow's definite ``RESOURCE_DOES_NOT_EXIST`` reads as "no such model /
no champion"; anything else (server down, refused, 5xx) raises ``RegistryError``, so a flaky
registry can never look like "no champion yet" and let a candidate replace the real one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.settings import Settings, get_settings

COMPLETE = ".complete"  # written last by Registry.download: the version's folder is whole


def derived_dir(model_dir: str | Path) -> Path | None:
    """Where a replica keeps what it derives from a downloaded version (its ONNX graph): beside the
    version in the model cache; None for any folder the registry did not download."""
    folder = Path(model_dir).parent
    return folder / "onnx" if (folder / COMPLETE).exists() else None

CHAMPION = "champion"
PREVIOUS = "previous-champion"
ANY = object()
"""``set_champion(expected=ANY)``: move the alias whatever it points at now."""


class RegistryError(RuntimeError):
    """MLflow did not answer definitely (unreachable, refused, server error)."""


class ChampionMoved(RuntimeError):
    """Compare-and-set refused: the champion is not the version the caller decided against."""


def configure_mlflow(settings: Settings | None = None) -> None:
    """Point MLflow and its S3 artifact client at our stores (env vars are how MLflow reads them)."""
    s = settings or get_settings()
    import mlflow

    if s.s3_endpoint:
        os.environ["MLFLOW_S3_ENDPOINT_URL"] = s.s3_endpoint
    os.environ.setdefault("AWS_ACCESS_KEY_ID", s.s3_access_key)
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", s.s3_secret_key)
    os.environ.setdefault("AWS_DEFAULT_REGION", s.s3_region)
    # bounded HTTP calls: MLflow's defaults are 120 s per request and 7 retries with backoff 2,
    # minutes of a retrain worker or a model watcher stuck on a hung tracking server
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, round(s.mlflow_timeout_s))))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(s.mlflow_max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    mlflow.set_tracking_uri(s.mlflow_tracking_uri)


def model_name(classifier: str) -> str:
    return f"sift-{classifier}"


def model_uri(classifier: str, version: str) -> str:
    return f"models:/{model_name(classifier)}/{version}"


@dataclass(frozen=True)
class ModelRef:
    classifier: str
    version: str
    run_id: str | None
    source: str
    aliases: tuple[str, ...] = ()

    @property
    def uri(self) -> str:
        return model_uri(self.classifier, self.version)


def _not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


@contextlib.contextmanager
def _definite(what: str) -> Iterator[None]:
    """Turn any MLflow failure other than not-found into ``RegistryError``."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if _not_found(exc):
            raise
        raise RegistryError(f"the model registry could not {what}: {exc}") from exc


class Registry:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        configure_mlflow(self.settings)
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=self.settings.mlflow_tracking_uri)

    # ---- registry: versions and aliases ------------------------------------------------------------

    def _ensure_registered(self, classifier: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self._client.get_registered_model(model_name(classifier))
        except MlflowException as exc:
            if not _not_found(exc):
                raise
            with contextlib.suppress(MlflowException):  # created concurrently
                self._client.create_registered_model(model_name(classifier))

    def register(self, classifier: str, run_id: str, artifact_path: str = "model",
                 tags: dict[str, str] | None = None) -> ModelRef:
        """Register the model directory logged under ``artifact_path`` of ``run_id`` as a new version."""
        self._ensure_registered(classifier)
        run = self._client.get_run(run_id)
        source = f"{run.info.artifact_uri}/{artifact_path}"
        mv = self._client.create_model_version(model_name(classifier), source=source, run_id=run_id,
                                               tags=tags or {})
        return ModelRef(classifier, str(mv.version), run_id, source)

    def model_versions(self, classifier: str) -> list[Any]:
        """MLflow's version objects (tags, timestamps), oldest first; [] for an unknown classifier."""
        from mlflow.exceptions import MlflowException

        try:
            with _definite("list model versions"):
                found = self._client.search_model_versions(f"name='{model_name(classifier)}'")
        except MlflowException:
            return []
        return sorted(found, key=lambda v: int(v.version))

    def versions(self, classifier: str) -> list[ModelRef]:
        return [ModelRef(classifier, str(v.version), v.run_id, v.source, tuple(getattr(v, "aliases", []) or []))
                for v in self.model_versions(classifier)]

    def model_version(self, classifier: str, version: str) -> Any:
        return self._client.get_model_version(model_name(classifier), str(version))

    def ref(self, classifier: str, version: str) -> ModelRef:
        mv = self.model_version(classifier, version)
        return ModelRef(classifier, str(mv.version), mv.run_id, mv.source, tuple(mv.aliases or []))

    def aliases(self, classifier: str) -> dict[str, str]:
        """alias -> version; {} for an unknown classifier."""
        from mlflow.exceptions import MlflowException

        try:
            with _definite("read aliases"):
                return {a: str(v) for a, v in (self._client.get_registered_model(model_name(classifier)).aliases
                                               or {}).items()}
        except MlflowException:
            return {}

    def get_alias(self, classifier: str, alias: str = CHAMPION) -> ModelRef | None:
        """The version behind ``alias``; None only when MLflow says the model or alias does not exist.

        Read from the registered model's alias map: MLflow answers a missing alias by name with
        INVALID_PARAMETER_VALUE, which also means other things, so it cannot be read as "none".
        """
        from mlflow.exceptions import MlflowException

        version = self.aliases(classifier).get(alias)
        if version is None:
            return None
        try:
            with _definite(f"read version {version} of {classifier!r}"):
                v = self.model_version(classifier, version)
        except MlflowException:  # deleted since the alias map was read
            return None
        return ModelRef(classifier, str(v.version), v.run_id, v.source, tuple(v.aliases or []))

    def champion(self, classifier: str) -> ModelRef | None:
        return self.get_alias(classifier, CHAMPION)

    def set_champion(self, classifier: str, version: str, *, expected: str | None | object = ANY) -> ModelRef | None:
        """Move ``champion`` to ``version``; the old champion keeps alias ``previous-champion``.

        ``expected`` makes it compare-and-set: the champion must still be that version (None: there
        must be none), else ``ChampionMoved``. MLflow has no atomic alias swap, so the check and the
        move are two calls; callers serialise them with the classifier's retrain lease.
        Returns the former champion (None on the first promotion).
        """
        old = self.champion(classifier)
        if expected is not ANY and (old.version if old else None) != expected:
            raise ChampionMoved(f"the champion of {classifier!r} is {'v' + old.version if old else 'unset'}, "
                                f"not {'v' + str(expected) if expected else 'unset'} as expected")
        if old is not None and old.version != version:
            self.set_alias(classifier, PREVIOUS, old.version)
        self.set_alias(classifier, CHAMPION, str(version))
        return old

    def set_alias(self, classifier: str, alias: str, version: str) -> None:
        self._client.set_registered_model_alias(model_name(classifier), alias, str(version))

    def delete_alias(self, classifier: str, alias: str) -> None:
        self._client.delete_registered_model_alias(model_name(classifier), alias)

    def delete_version(self, classifier: str, version: str) -> None:
        """Remove a version from the registry (retention); its run and artifacts stay in MLflow."""
        self._client.delete_model_version(model_name(classifier), str(version))

    def version_tags(self, classifier: str, version: str) -> dict[str, str]:
        return dict(self.model_version(classifier, version).tags or {})

    def set_version_tag(self, classifier: str, version: str, key: str, value: str) -> None:
        self._client.set_model_version_tag(model_name(classifier), str(version), key, value)

    def download(self, ref: ModelRef, cache_dir: Path | None = None) -> Path:
        """Download a version's model directory into the local cache (reused when present)."""
        import mlflow

        cache = (cache_dir or self.settings.model_cache_dir) / ref.classifier / ref.version
        marker = cache / COMPLETE
        if marker.exists():
            return cache / "model"
        if cache.exists():
            shutil.rmtree(cache)
        cache.mkdir(parents=True)
        mlflow.artifacts.download_artifacts(artifact_uri=ref.source, dst_path=str(cache))
        downloaded = cache / Path(ref.source.rstrip("/")).name
        if downloaded != cache / "model":
            downloaded.rename(cache / "model")
        marker.touch()
        return cache / "model"

    # ---- tracking: runs ----------------------------------------------------------------------------

    def experiment_id(self, classifier: str, artifact_location: str | None = None) -> str:
        """The classifier's experiment ``sift-<name>``, created on first use."""
        from mlflow.exceptions import MlflowException

        name = model_name(classifier)
        exp = self._client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self._client.create_experiment(name, artifact_location=artifact_location,
                                                  tags={"sift.classifier": classifier})
        except MlflowException:  # created concurrently
            exp = self._client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def has_experiment(self, classifier: str) -> bool:
        return self._client.get_experiment_by_name(model_name(classifier)) is not None

    def create_run(self, classifier: str, *, run_name: str | None, tags: dict[str, str],
                   artifact_location: str | None = None) -> str:
        exp_id = self.experiment_id(classifier, artifact_location)
        return self._client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id

    def log_params(self, run_id: str, values: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self._client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in values.items() if v is not None])

    def log_metrics(self, run_id: str, values: dict[str, float], step: int = 0) -> None:
        """Finite values only (NaN is skipped: MLflow would store it, charts would break)."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._client.log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v in values.items()
                                                if v is not None and v == v])

    def log_artifacts(self, run_id: str, local_dir: str | Path, artifact_path: str) -> None:
        self._client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_dict(self, run_id: str, obj: Any, artifact_file: str) -> None:
        self._client.log_dict(run_id, obj, artifact_file)

    def load_dict(self, run_id: str, artifact_file: str) -> Any | None:
        """A JSON artifact of a run; None when the run has none."""
        import mlflow

        try:
            return mlflow.artifacts.load_dict(f"runs:/{run_id}/{artifact_file}")
        except Exception:  # MLflow raises several types for a missing artifact
            return None

    def set_run_tag(self, run_id: str, key: str, value: str) -> None:
        self._client.set_tag(run_id, key, value)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self._client.set_terminated(run_id, status)

    def run(self, run_id: str) -> Any:
        return self._client.get_run(run_id)

    def list_artifacts(self, run_id: str, path: str) -> list[str]:
        return [a.path for a in self._client.list_artifacts(run_id, path)]

    def run_url(self, run_id: str) -> str:
        exp = self.run(run_id).info.experiment_id
        return f"{self.settings.mlflow_tracking_uri.rstrip('/')}/#/experiments/{exp}/runs/{run_id}"

    def run_info(self, run_id: str) -> dict[str, Any]:
        run = self.run(run_id)
        return {"params": dict(run.data.params), "metrics": dict(run.data.metrics), "tags": dict(run.data.tags)}
