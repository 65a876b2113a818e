"""``sift feedback upload NAME FILE``: send a batch feedback file, with a progress bar.

Default route: through the API (``POST /v1/classifiers/NAME/feedback/batch``) — it needs only the
classifier's API key, and the per-row report comes back in the response. The file is streamed
from disk in chunks by httpx's multipart encoder, so a 100k-row file never sits in memory.

``--drop-folder`` instead puts the file straight into ``s3://<bucket>/feedback-uploads/NAME/``
(S3 credentials from SIFT_* settings; multipart upload) for the drop-folder worker; ``--wait``
then polls for the report the worker writes next to the file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import IO, Any

import typer
from tqdm import tqdm

app = typer.Typer(help="Send feedback: batch files through the API or the S3 drop folder.", no_args_is_help=True)


class _ProgressReader:
    """File proxy that advances a progress bar as the HTTP client reads it."""

    def __init__(self, f: IO[bytes], bar: tqdm) -> None:
        self._f = f
        self._bar = bar

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._bar.update(len(data))
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def upload_via_api(api_url: str, api_key: str, name: str, path: Path, *, idempotency_key: str | None = None,
                   timeout_s: float = 600.0, progress: bool = True) -> tuple[int, dict[str, Any]]:
    """POST the file as multipart; returns (status code, JSON body)."""
    import httpx

    headers = {"x-api-key": api_key}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    size = path.stat().st_size
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"upload {path.name}",
                                     disable=not progress) as bar:
        reader = _ProgressReader(f, bar)
        response = httpx.post(
            f"{api_url.rstrip('/')}/v1/classifiers/{name}/feedback/batch",
            headers=headers,
            files={"file": (path.name, reader, "application/octet-stream")},
            timeout=httpx.Timeout(timeout_s, connect=10.0),
        )
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text}
    return response.status_code, body


def upload_to_drop_folder(name: str, path: Path, *, wait_s: float = 0.0, progress: bool = True) -> dict[str, Any]:
    from feedback.uploads import prefix_for, report_key, safe_filename
    from infra.objectstore import ObjectStore
    from infra.settings import get_settings

    store = ObjectStore(get_settings())
    key = f"{prefix_for(name)}{time.strftime('%Y%m%dT%H%M%S')}-{safe_filename(path.name)}"
    with tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=f"upload {path.name}",
              disable=not progress) as bar:
        store.upload_file(str(path), key, progress=bar.update)
    result: dict[str, Any] = {"source_key": key, "report_key": report_key(key)}
    deadline = time.monotonic() + wait_s
    while wait_s and time.monotonic() < deadline:
        report = store.get_json(report_key(key))
        if report is not None:
            return report
        time.sleep(1.0)
    return result


@app.command("upload")
def upload(
    name: str = typer.Argument(..., help="classifier name"),
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="CSV, JSONL or JSON file"),
    api_url: str = typer.Option(None, help="Sift API base URL [default: SIFT_PUBLIC_API_URL]"),
    api_key: str = typer.Option(None, envvar="SIFT_API_KEY", help="the classifier's API key"),
    idempotency_key: str = typer.Option(None, help="retry-safe key: the same key gives the same event ids"),
    drop_folder: bool = typer.Option(False, "--drop-folder", help="put the file in the S3 drop folder instead"),
    wait: float = typer.Option(0.0, help="with --drop-folder: seconds to wait for the worker's report"),
) -> None:
    """Upload a batch feedback file; prints the report (rows accepted / rejected with reasons)."""
    if drop_folder:
        result = upload_to_drop_folder(name, file, wait_s=wait)
        typer.echo(json.dumps(result, indent=2, default=str))
        return
    if not api_key:
        raise typer.BadParameter("pass --api-key or set SIFT_API_KEY", param_hint="--api-key")
    if api_url is None:
        from infra.settings import get_settings

        api_url = os.environ.get("SIFT_API_URL") or get_settings().public_api_url
    status, body = upload_via_api(api_url, api_key, name, file, idempotency_key=idempotency_key)
    if status >= 400:
        typer.echo(f"error {status}: {body.get('detail', body)}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{body['rows_accepted']} rows accepted, {body['rows_rejected']} rejected "
               f"(of {body['rows_total']}); report at {body['source_key']}.report.json")
    for rej in body.get("rejected", []):
        typer.echo(f"  row {rej['row']}: {rej['reason']}")
    if body.get("rejected_truncated"):
        typer.echo(f"  … {body['rows_rejected'] - len(body['rejected'])} more in the report")
