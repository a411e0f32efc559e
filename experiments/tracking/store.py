"""Where a study's MLflow runs go: the tracking URI (the grid's, ``$MLFLOW_TRACKING_URI``, else an embedded sqlite
store under the output root), its artifact location, and whether it can take runs now (``check_tracking``).
``experiments.tracking.runs`` re-exports these names.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any
import sqlite3
import time

from ..config.validate import Refusal, nearest_existing, short_text

# mlflow is imported where it is used: importing it takes ~3 s (measured here), which launch --dry-run, grid
# validation and every test that never tracks would pay for nothing.


class TrackingUnavailable(Refusal, RuntimeError):
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


# -- which filesystem ---------------------------------------------------------------------------------------------
MOUNTINFO = Path("/proc/self/mountinfo")  # Linux; elsewhere the filesystem is unknown and nothing is refused
# Filesystems shared over a network (mountinfo's type field → what to call it), where sqlite's POSIX locks are not
# to be trusted with concurrent writers (sqlite.org/faq.html#q5; MLflow: run a tracking server).
NETWORK_FILESYSTEMS = {
    "nfs": "NFS", "nfs4": "NFS", "lustre": "Lustre", "gpfs": "GPFS", "beegfs": "BeeGFS", "cifs": "CIFS/SMB",
    "smb3": "SMB", "smbfs": "SMB", "ceph": "CephFS", "fuse.ceph-fuse": "CephFS", "glusterfs": "GlusterFS",
    "fuse.glusterfs": "GlusterFS", "panfs": "PanFS", "wekafs": "WekaFS", "fuse.sshfs": "SSHFS",
}


def _unescape_mount(field: str) -> str:
    r"""mountinfo writes space, tab, newline and backslash in paths as ``\040``, ``\011``, ``\012``, ``\134``."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_of(path: Path, mountinfo: Path | None = None) -> tuple[Path, str] | None:
    """(mount point, filesystem type) of the mount holding ``path`` (or its nearest existing folder): the longest
    mount point in ``/proc/self/mountinfo`` that contains it (the last one listed, when one is mounted over
    another); None when mountinfo cannot be read."""
    try:
        lines = (mountinfo or MOUNTINFO).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    target = nearest_existing(Path(path).absolute()).resolve()
    best: tuple[Path, str] | None = None
    for line in lines:
        fields, _, rest = line.partition(" - ")
        fields, rest = fields.split(), rest.split()
        if len(fields) < 5 or not rest:
            continue
        point = Path(_unescape_mount(fields[4]))
        if (point == target or point in target.parents) and (best is None or len(point.parts) >= len(best[0].parts)):
            best = (point, rest[0])
    return best


def network_filesystem(path: Path, mountinfo: Path | None = None) -> tuple[str, str, Path] | None:
    """(name, type, mount point) when ``path`` lies on a network filesystem (NETWORK_FILESYSTEMS), else None."""
    found = mount_of(path, mountinfo)
    if found is None or found[1] not in NETWORK_FILESYSTEMS:
        return None
    return NETWORK_FILESYSTEMS[found[1]], found[1], found[0]


def artifact_location(uri: str) -> str | None:
    """Artifacts beside an embedded sqlite store (``<db dir>/mlartifacts``); a server decides for itself."""
    db = sqlite_path(uri)
    if db is None:
        return None
    return (db.parent / "mlartifacts").resolve().as_uri()


def experiment_id_for(client: Any, uri: str, name: str) -> str:
    """The id of experiment ``name`` in the store, created (artifacts beside a sqlite store) if missing.

    Refused with :class:`TrackingUnavailable` (one line): a deleted experiment, and a sqlite store whose experiment
    keeps its artifacts outside the store's folder: MLflow stores that location as an absolute path, so an
    ``outputs/`` copied elsewhere would go on writing artifacts into the original folder."""
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(name, artifact_location=artifact_location(uri))
    if found.lifecycle_stage == "deleted":
        raise TrackingUnavailable(f"MLflow experiment {name!r} is deleted; restore it or pick another name with "
                                  f"--set mlflow.experiment=<name>")
    db = sqlite_path(uri)
    location = found.artifact_location or ""
    if db is not None and location.startswith("file:"):
        where = Path(urllib.parse.unquote(urllib.parse.urlparse(location).path)).resolve()
        home = db.parent.resolve()
        if where != home and home not in where.parents:
            raise TrackingUnavailable(
                f"{db}: experiment {name!r} keeps its artifacts in {where}, outside this store's folder {home} (the "
                f"store was copied or moved?); run python -m experiments.tracking.relocate {home} to give the copy its own "
                f"artifacts, or use a new experiment (--set mlflow.experiment=<name>)")
    return found.experiment_id


ARTIFACTS_DIR = "mlartifacts"  # beside an embedded sqlite store (artifact_location)


def relocate_store(db: Path, dry_run: bool = False) -> list[tuple[str, str]]:
    """Point a copied (or moved) sqlite store's experiments and runs at the artifacts beside it.

    MLflow records ``file://<folder>/mlartifacts...`` locations as absolute paths; after ``cp -r outputs/ elsewhere``
    the copy's experiments and runs still name the original folder. Every location of the form
    ``file://<other folder>/mlartifacts/...`` is rewritten to ``file://<this folder>/mlartifacts/...`` (the
    experiments' ``artifact_location`` and the runs' ``artifact_uri``); nothing else is touched. Returns the
    (old, new) folder prefixes rewritten."""
    home = (db.parent.resolve() / ARTIFACTS_DIR).as_uri()
    con = sqlite3.connect(str(db))
    try:
        locations = [row[0] for row in con.execute("SELECT artifact_location FROM experiments")]
        locations += [row[0] for row in con.execute("SELECT artifact_uri FROM runs")]
        prefixes = set()
        for location in locations:
            if location and location.startswith("file:") and f"/{ARTIFACTS_DIR}" in location:
                prefix = location[:location.index(f"/{ARTIFACTS_DIR}") + len(ARTIFACTS_DIR) + 1]
                if prefix != home:
                    prefixes.add(prefix)
        if not dry_run:
            with con:
                for prefix in sorted(prefixes):
                    for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri")):
                        con.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # noqa: S608
                                    f"WHERE substr({column}, 1, ?) = ?", (home, len(prefix) + 1, len(prefix), prefix))
    finally:
        con.close()
    return [(prefix, home) for prefix in sorted(prefixes)]


PROBE_TIMEOUT_ENV = "BERTGEN_TRACKING_TIMEOUT_S"  # seconds one probe request may take (default 5)
PROBE_ATTEMPTS = 2  # tries of the API round trip when the server answers 5xx/429 or times out
SEARCH_ENDPOINT = "/api/2.0/mlflow/experiments/search"
MLFLOW_TABLES = ("experiments", "runs", "alembic_version")


def _probe_timeout(timeout_s: float | None) -> float:
    if timeout_s is not None:
        return timeout_s
    try:
        value = float(os.environ.get(PROBE_TIMEOUT_ENV, "5"))
    except ValueError:
        value = 5.0
    return value if 0.1 <= value <= 120 else 5.0


def check_tracking(uri: str, timeout_s: float | None = None) -> None:
    """Raise :class:`TrackingUnavailable` with a one-line reason unless ``uri`` can take runs now.

    Writes nothing. A server must answer ``/health`` and then one real API round trip (a search for experiments, with
    MLflow's own credentials from the environment), each request bounded by ``timeout_s`` (``$BERTGEN_TRACKING_
    TIMEOUT_S``, default 5 s) and retried at most PROBE_ATTEMPTS times in all: a server whose API answers 500, one
    that accepts connections and never answers, or one that is not MLflow is refused within about
    2 x timeout_s + 1 s. A sqlite store must be a writable place, and an existing database file must be an MLflow
    store (opened read-only: a file that is not a database, or another program's database, is refused, never
    migrated)."""
    timeout = _probe_timeout(timeout_s)
    if not isinstance(uri, str) or not uri.strip() or "\0" in uri or len(uri) > 4096:
        raise TrackingUnavailable(f"MLflow tracking URI {short_text(repr(uri))}: expected a tracking URI")
    if uri.startswith(("http://", "https://")):
        _check_server(uri, timeout)
        return
    db = sqlite_path(uri)
    if db is not None:
        _check_sqlite(uri, db, timeout)
        return
    if uri.startswith("sqlite:"):
        raise TrackingUnavailable(f"MLflow tracking URI {uri!r}: expected sqlite:///<absolute path>")
    try:
        mlflow_client(uri).search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 - any failure means the same to the user
        raise TrackingUnavailable(f"MLflow tracking URI {uri} does not answer ({type(err).__name__}: "
                                  f"{short_text(err)})") from None


def _check_server(uri: str, timeout: float) -> None:
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - the user's own server
            if response.status != 200:
                raise TrackingUnavailable(f"MLflow tracking server {uri} answered {response.status} on /health")
    except urllib.error.HTTPError as err:
        raise TrackingUnavailable(f"MLflow tracking server {uri} answered HTTP {err.code} on /health; expected an "
                                  "MLflow tracking server (nothing was submitted)") from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} is unreachable ({short_text(reason, 80)}); start it or pass "
            f"--set mlflow.tracking_uri=<uri> (nothing was submitted)") from None
    _api_round_trip(uri, timeout)


def _api_round_trip(uri: str, timeout: float) -> None:
    """POST experiments/search once (twice on a 5xx, 429 or timeout), with MLflow's credentials and no retries of
    its own; the answer must be MLflow's JSON."""
    from mlflow.utils.credentials import get_default_host_creds  # lazy: import cost
    from mlflow.utils.rest_utils import http_request  # lazy: loads mlflow (~4 s), which this module does not otherwise

    creds = get_default_host_creds(uri)
    problem = ""
    for attempt in range(PROBE_ATTEMPTS):
        if attempt:
            time.sleep(0.5)
        try:
            response = http_request(creds, SEARCH_ENDPOINT, "POST", max_retries=0, backoff_factor=0,
                                    timeout=timeout, raise_on_status=False, json={"max_results": 1})
        except Exception as err:  # noqa: BLE001 - timeouts, refused or reset connections
            problem = f"no answer within {timeout:g} s" if "timed out" in str(err).lower() or "timeout" in \
                type(err).__name__.lower() else f"{type(err).__name__}: {short_text(err, 80)}"
            continue
        status = response.status_code
        if status == 200:
            try:
                body = response.json()
            except ValueError:
                body = None
            if isinstance(body, dict) and (not body or "experiments" in body or "next_page_token" in body):
                return
            raise TrackingUnavailable(f"MLflow tracking server {uri}: {SEARCH_ENDPOINT} answered 200 with "
                                      f"{short_text(repr(response.text[:200]), 60)}; expected MLflow's JSON (is it an "
                                      "MLflow server?) (nothing was submitted)")
        problem = f"HTTP {status}"
        if status in (401, 403):
            raise TrackingUnavailable(f"MLflow tracking server {uri}: {SEARCH_ENDPOINT} answered {problem}; "
                                      "expected credentials in MLFLOW_TRACKING_USERNAME/PASSWORD or "
                                      "MLFLOW_TRACKING_TOKEN (nothing was submitted)")
        if status < 500 and status != 429:
            raise TrackingUnavailable(f"MLflow tracking server {uri}: {SEARCH_ENDPOINT} answered {problem}; "
                                      "expected an MLflow tracking server (nothing was submitted)")
    raise TrackingUnavailable(f"MLflow tracking server {uri} answers /health but not its API ({problem}, "
                              f"{PROBE_ATTEMPTS} tries); expected a working MLflow server (nothing was submitted)")


def _check_sqlite(uri: str, db: Path, timeout: float) -> None:
    probe = nearest_existing(db.parent)
    if not probe.is_dir():
        raise TrackingUnavailable(f"MLflow store {uri}: {probe} is not a directory; expected a writable directory "
                                  "for the database (nothing was submitted)")
    if not os.access(probe, os.W_OK | os.X_OK) or (db.exists() and not os.access(db, os.W_OK)):
        raise TrackingUnavailable(f"MLflow store {uri}: {db} is not writable (nothing was submitted)")
    if not db.exists():
        return
    if not db.is_file():
        raise TrackingUnavailable(f"MLflow store {uri}: {db} is not a file; expected an MLflow sqlite database "
                                  "(nothing was submitted)")
    if db.stat().st_size == 0:
        return  # an empty file is an empty database: MLflow creates its tables
    try:
        # absolute(): sqlite:///outputs/mlflow.db is relative to the working directory, as MLflow reads it
        connection = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True, timeout=timeout)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if set(MLFLOW_TABLES) <= tables:
                connection.execute("SELECT experiment_id FROM experiments LIMIT 1").fetchall()
        finally:
            connection.close()
    except sqlite3.Error as err:
        raise TrackingUnavailable(f"MLflow store {db}: not a usable sqlite database ({short_text(err, 80)}); expected "
                                  "an MLflow store or no file (nothing was submitted)") from None
    if not set(MLFLOW_TABLES) <= tables:
        raise TrackingUnavailable(f"MLflow store {db}: a sqlite database without MLflow's tables "
                                  f"({', '.join(sorted(tables)[:5]) or 'none'}); expected an MLflow store (it is "
                                  "not migrated: nothing was written)")


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient  # lazy: import cost (module imports)

    return MlflowClient(tracking_uri=uri)


def quiet_http_retries() -> None:
    """MLflow's own HTTP retries block for minutes; the callers here retry on their own schedule instead."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
