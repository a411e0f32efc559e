"""Where a study's MLflow runs go: the tracking URI (the grid's, ``$MLFLOW_TRACKING_URI``, else an embedded sqlite
store under the output root), its artifact location, and whether it can take runs now (``check_tracking``).
``experiments.tracking`` re-exports these names.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

# mlflow is imported where it is used: importing it takes ~3 s (measured here), which launch --dry-run, grid
# validation and every test that never tracks would pay for nothing.


class TrackingUnavailable(RuntimeError):
    """The tracking URI does not answer (or cannot be written): nothing may be submitted."""


# -- where --------------------------------------------------------------------------------------------------------
def resolve_tracking_uri(grid_uri: str | None, output_root: str | os.PathLike) -> str:
    """The grid's URI, else $MLFLOW_TRACKING_URI, else the embedded sqlite store under the output root."""
    if grid_uri:
        return grid_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(output_root).resolve() / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for any other kind)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


def artifact_location(uri: str) -> str | None:
    """Artifacts beside an embedded sqlite store (``<db dir>/mlartifacts``); a server decides for itself."""
    db = sqlite_path(uri)
    if db is None:
        return None
    return (db.parent / "mlartifacts").resolve().as_uri()


def check_tracking(uri: str, timeout_s: float = 5.0) -> None:
    """Raise :class:`TrackingUnavailable` with a one-line reason unless ``uri`` can take runs now."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - the user's own server
                if response.status != 200:
                    raise TrackingUnavailable(f"MLflow tracking server {uri} answered {response.status} on /health")
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise TrackingUnavailable(
                f"MLflow tracking server {uri} is unreachable ({reason}); start it or pass "
                f"--set mlflow.tracking_uri=<uri> (nothing was submitted)") from None
        return
    db = sqlite_path(uri)
    if db is not None:
        parent = db.parent
        probe = parent
        while not probe.exists():
            probe = probe.parent
        if not os.access(probe, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise TrackingUnavailable(f"MLflow store {uri}: {db} is not writable (nothing was submitted)")
        return
    if uri.startswith("sqlite:"):
        raise TrackingUnavailable(f"MLflow tracking URI {uri!r}: expected sqlite:///<absolute path>")
    try:
        _client(uri).search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 - any failure means the same to the user
        raise TrackingUnavailable(f"MLflow tracking URI {uri} does not answer ({type(err).__name__}: {err})") from None


def _client(uri: str):
    from mlflow.tracking import MlflowClient  # lazy: import cost (module imports)

    return MlflowClient(tracking_uri=uri)


def quiet_http_retries() -> None:
    """MLflow's own HTTP retries block for minutes; the callers here retry on their own schedule instead."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
