"""MLflow model registry client: one registered model per classifier, alias ``champion`` serves.

A model version's artifacts are a plain directory (Hugging Face ``save_pretrained`` output plus
``sift_model.json``), so any replica can download and load it without MLflow-specific flavours.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.settings import Settings, get_settings

CHAMPION = "champion"
PREVIOUS = "previous-champion"


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


@dataclass(frozen=True)
class ModelRef:
    classifier: str
    version: str
    run_id: str | None
    source: str
    aliases: tuple[str, ...] = ()

    @property
    def uri(self) -> str:
        return f"models:/sift-{self.classifier}/{self.version}"


class Registry:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        configure_mlflow(self.settings)
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.settings.mlflow_tracking_uri)

    @staticmethod
    def model_name(classifier: str) -> str:
        return f"sift-{classifier}"

    def _ensure_registered(self, classifier: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.model_name(classifier))
        except MlflowException:
            with contextlib.suppress(MlflowException):  # created concurrently
                self.client.create_registered_model(self.model_name(classifier))

    def register(self, classifier: str, run_id: str, artifact_path: str = "model",
                 tags: dict[str, str] | None = None) -> ModelRef:
        """Register the model directory logged under ``artifact_path`` of ``run_id`` as a new version."""
        self._ensure_registered(classifier)
        run = self.client.get_run(run_id)
        source = f"{run.info.artifact_uri}/{artifact_path}"
        mv = self.client.create_model_version(
            self.model_name(classifier), source=source, run_id=run_id, tags=tags or {}
        )
        return ModelRef(classifier, str(mv.version), run_id, source)

    def versions(self, classifier: str) -> list[ModelRef]:
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name='{self.model_name(classifier)}'")
        except MlflowException:
            return []
        refs = [
            ModelRef(classifier, str(v.version), v.run_id, v.source, tuple(getattr(v, "aliases", []) or []))
            for v in found
        ]
        return sorted(refs, key=lambda r: int(r.version))

    def get_alias(self, classifier: str, alias: str = CHAMPION) -> ModelRef | None:
        from mlflow.exceptions import MlflowException

        try:
            v = self.client.get_model_version_by_alias(self.model_name(classifier), alias)
        except MlflowException:
            return None
        return ModelRef(classifier, str(v.version), v.run_id, v.source, tuple(v.aliases or []))

    def champion(self, classifier: str) -> ModelRef | None:
        return self.get_alias(classifier, CHAMPION)

    def set_champion(self, classifier: str, version: str) -> ModelRef | None:
        """Move ``champion`` to ``version``; the old champion keeps alias ``previous-champion``.

        Returns the former champion (None on the first promotion).
        """
        old = self.champion(classifier)
        name = self.model_name(classifier)
        if old is not None and old.version != version:
            self.client.set_registered_model_alias(name, PREVIOUS, old.version)
        self.client.set_registered_model_alias(name, CHAMPION, str(version))
        return old

    def version_tags(self, classifier: str, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(self.model_name(classifier), str(version)).tags or {})

    def set_version_tag(self, classifier: str, version: str, key: str, value: str) -> None:
        self.client.set_model_version_tag(self.model_name(classifier), str(version), key, value)

    def download(self, ref: ModelRef, cache_dir: Path | None = None) -> Path:
        """Download a version's model directory into the local cache (reused when present)."""
        import mlflow

        cache = (cache_dir or self.settings.model_cache_dir) / ref.classifier / ref.version
        marker = cache / ".complete"
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

    def delete_classifier(self, classifier: str) -> None:
        from mlflow.exceptions import MlflowException

        with contextlib.suppress(MlflowException):
            self.client.delete_registered_model(self.model_name(classifier))

    def run_info(self, run_id: str) -> dict[str, Any]:
        run = self.client.get_run(run_id)
        return {"params": dict(run.data.params), "metrics": dict(run.data.metrics), "tags": dict(run.data.tags)}
