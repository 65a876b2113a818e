"""``sift train``: fine-tune a classifier's base encoder on a labeled file and register the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from infra.objectstore import ObjectStore
from infra.registry import Registry
from infra.settings import get_settings
from infra.tenants import TenantStore


def train_command(
    name: str,
    data: Path,
    *,
    epochs: int | None = None,
    max_length: int | None = None,
    layers: int | None = None,
    limit: int | None = None,
    make_champion_if_none: bool = True,
) -> dict[str, Any]:
    from retrain.dataio import load_labeled, stratified_sample

    rows = load_labeled(data)
    if limit:
        rows = stratified_sample(rows, limit, seed=0)
    return train_rows_command(name, rows, epochs=epochs, max_length=max_length, layers=layers,
                              make_champion_if_none=make_champion_if_none, source=str(data))


def train_rows_command(
    name: str,
    rows: list[Any],
    *,
    epochs: int | None = None,
    max_length: int | None = None,
    layers: int | None = None,
    make_champion_if_none: bool = True,
    source: str = "",
) -> dict[str, Any]:
    from retrain.assemble import split_for_training
    from retrain.seed import store_seed
    from retrain.tracking import train_and_register, train_spec

    settings = get_settings()
    store = ObjectStore(settings)
    store.ensure_bucket()
    cfg = TenantStore(store).require(name)
    spec = train_spec(cfg, epochs=epochs, max_length=max_length, num_hidden_layers=layers)
    spec.check_rows(rows, source=source or "the data")  # before the seed is stored
    # kept in the object store so every later retrain can rebuild the training set from it
    store_seed(store, name, rows, source=source)
    # the same hash rule as the retrain stage: the first champion never sees the evaluation texts
    train_rows, eval_rows = split_for_training(name, rows, cfg.retrain.eval_share)
    registered = train_and_register(
        cfg,
        train_rows,
        spec=spec,
        eval_rows=eval_rows or None,
        registry=Registry(settings),
        make_champion_if_none=make_champion_if_none,
        run_name=f"train-{name}",
    )
    return registered.model_dump(mode="json") if hasattr(registered, "model_dump") else dict(registered)
