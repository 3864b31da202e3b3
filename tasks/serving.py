"""Tasks around online serving: telling the model server of a promotion, and reading back
what it served (the prediction log) for the `serving_report` flow."""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from mlsys.data.catalog import online_predictions_prefix
from mlsys.data.s3 import get_bytes, list_keys
from mlsys.data.sources import read_parquet_bytes
from mlsys.settings import Settings
from tasks.retry import outage_tolerant, tolerant

# A promotion never waits long on a server: one that does not answer in time still
# follows the alias by polling the registry.
_RELOAD_TIMEOUT_S = 30.0


@task(name="reload-model-server", cache_policy=NO_CACHE)
def reload_model_server(settings: Settings, model_name: str) -> str | None:
    """Ask the model server (``settings.serving_url``) to re-resolve its alias now,
    after ``model_name`` was promoted; the version it serves then, or None.

    Nothing fails the run here: where no server listens (the stack runs none), the key
    is missing, or the server refuses, the reason is logged and the server (if any)
    picks the promotion up at its next poll of the registry.
    """
    import httpx

    logger = get_run_logger()
    url = f"{settings.serving_url}/admin/reload"
    if settings.serve_key is None:
        logger.info(
            "no model server key (MLSYS_SERVE_KEY); servers follow %s by polling", model_name
        )
        return None
    headers = {"Authorization": f"Bearer {settings.serve_key.get_secret_value()}"}
    try:
        response = httpx.post(url, headers=headers, timeout=_RELOAD_TIMEOUT_S)
    except httpx.ConnectError:
        logger.info("no model server at %s; nothing to reload", settings.serving_url)
        return None
    except httpx.HTTPError as exc:
        logger.warning("model server at %s did not answer the reload: %s", url, exc)
        return None
    if response.status_code != 200:
        logger.warning(
            "model server at %s refused the reload: HTTP %d %s",
            url,
            response.status_code,
            response.text[:200],
        )
        return None
    body: dict[str, Any] = response.json()
    version = body.get("version")
    logger.info(
        "model server at %s serves %s version %s",
        settings.serving_url,
        body.get("model", model_name),
        version,
    )
    return None if version is None else str(version)


@task(name="read-prediction-log", cache_policy=NO_CACHE)
@outage_tolerant
def read_prediction_log(settings: Settings, dataset: str, day: str) -> tuple[pd.DataFrame, int]:
    """Every part of the online prediction log of ``dataset`` for ``day`` (YYYY-MM-DD),
    in key order, as one frame; and how many parts there were.

    Raises:
        FileNotFoundError: no part under the day's prefix (the message names it).
    """
    client = tolerant(settings.s3_client())
    prefix = online_predictions_prefix(dataset, day)
    keys = sorted(key for _, key in list_keys(client, settings.bucket, prefix, ".parquet"))
    if not keys:
        raise FileNotFoundError(
            f"no prediction log under {settings.s3_uri(prefix)}: nothing was served for "
            f"{dataset} on {day} (or the server runs with --no-log)"
        )
    frames = [read_parquet_bytes(get_bytes(client, settings.s3_uri(key))) for key in keys]
    return pd.concat(frames, ignore_index=True), len(keys)
