"""Upload what cells could not send to MLflow while the tracking server was down.

    python -m experiments.tracking.sync DIR [--tracking-uri URI] [--dry-run]

DIR is a cell directory or any folder above (e.g. ``outputs``); every ``pending_metrics.jsonl`` below it is read.
Each line is one operation (metrics, tags, artifact, status) with the run id and tracking URI it was meant for
(``--tracking-uri`` sends them elsewhere, e.g. after the server moved). Operations are applied in file order, in
chunks; after each chunk the file is rewritten with only what is left, so an interrupted sync resumes where it
stopped and never uploads a chunk twice. A file that is fully sent is removed. A record that cannot be sent (not
JSON, a mapping as run_id, a metric that is not a number ...) is reported in one line and set aside in
``pending_metrics.jsonl.rejected``; the good ones go through. An artifact outside the cell directory means the file
was not written by its cell: that file is refused whole and left as it is. Exit status: 0 all sent, 1 something is
left for later (the server is down), 2 something was set aside or refused.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from ..cli import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, absolute_sqlite, add_tracking_uri, entry_point, refuse
from ..config.validate import Refusal, short_repr, short_text
from .runs import PENDING_FILE, send_operations
from .store import mlflow_client, quiet_http_retries

CHUNK_OPS = 200


def pending_files(root: Path) -> list[Path]:
    if root.is_file() and root.name == PENDING_FILE:
        return [root]
    return sorted(root.rglob(PENDING_FILE))


REJECTED_SUFFIX = ".rejected"
OPS = ("metrics", "tags", "artifact", "status")
STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and (
        not isinstance(value, int) or abs(value) <= 2**63)


def record_problem(record: object) -> str | None:
    """Why a pending record cannot be sent (expected ...), or None. Checks types only; where an artifact lives is
    :func:`read_pending`'s."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    run_id, op = record.get("run_id"), record.get("op")
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        return f"expected run_id to be an MLflow run id, got {short_repr(run_id, 60)}"
    if "tracking_uri" in record and not (isinstance(record["tracking_uri"], str) and len(record["tracking_uri"]) <= 4096
                                          and "\0" not in record["tracking_uri"]):
        return f"expected tracking_uri to be a URI, got {short_repr(record['tracking_uri'], 60)}"
    if op not in OPS:
        return f"expected op to be one of {list(OPS)}, got {short_repr(op, 60)}"
    if op == "metrics":
        rows = record.get("rows")
        if not isinstance(rows, list):
            return f"expected rows to be a list of [key, value, timestamp, step], got {short_repr(rows, 60)}"
        for row in rows:
            if not (isinstance(row, list) and len(row) == 4 and isinstance(row[0], str) and 0 < len(row[0]) <= 250
                    and _number(row[1]) and all(isinstance(x, int) and not isinstance(x, bool) and abs(x) <= 2**63
                                                for x in row[2:])):
                return f"expected each metric row to be [key, number, timestamp, step], got {short_repr(row, 60)}"
    elif op == "tags":
        tags = record.get("tags")
        if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in tags.items()):
            return f"expected tags to be a mapping of text to text, got {short_repr(tags, 60)}"
    elif op == "artifact":
        target = record.get("artifact_path")
        if not isinstance(record.get("path"), str) or not record["path"] or "\0" in record["path"]:
            return f"expected path to be a file path, got {short_repr(record.get('path'), 60)}"
        if target is not None and (not isinstance(target, str) or ".." in Path(target).parts
                                   or Path(target).is_absolute()):
            return ("expected artifact_path to be null or a relative folder without '..', got "
                    f"{short_repr(target, 60)}")
    elif op == "status":
        if record.get("status") not in STATUSES:
            return f"expected status to be one of {list(STATUSES)}, got {short_repr(record.get('status'), 60)}"
        end = record.get("end_time")
        if end is not None and (not isinstance(end, int) or isinstance(end, bool) or not 0 <= end <= 2**63):
            return f"expected end_time to be null or milliseconds, got {short_repr(end, 60)}"
    return None


def scan_pending(path: Path) -> tuple[list[dict], list[tuple[int, str, bytes]]]:
    """(records that can be sent, (line number, why, raw line) of those that cannot). Reads, never writes.

    A bad line (not UTF-8, not JSON, a record of the wrong shape: a mapping as run_id, a metric that is not a
    number, an unknown op) is one rejected entry; the others are kept. A line cut short at the very end (a crash
    while appending) is dropped silently: nothing of it was sent either way. An artifact outside the cell directory
    means the file was not written by the cell: ValueError, and the whole file is left alone."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and not lines[-1].strip():
        lines.pop()
    records: list[dict] = []
    rejected: list[tuple[int, str, bytes]] = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            rejected.append((number, "expected UTF-8 text", raw))
            continue
        except (ValueError, RecursionError):
            if number == len(lines) and not data.endswith(b"\n"):
                continue  # cut short by a crash while appending
            rejected.append((number, "expected one JSON object per line", raw))
            continue
        problem = record_problem(record)
        if problem is not None:
            rejected.append((number, problem, raw))
            continue
        if record["op"] == "artifact" and not _inside(record["path"], path.parent):
            # a cell only parks files of its own directory; anything else in this file was not written by it
            raise ValueError(f"{path}:{number}: artifact {short_repr(record['path'], 120)} is outside {path.parent}; "
                             "expected a file of the cell directory (nothing was uploaded)")
        records.append(record)
    return records, rejected


def read_pending(path: Path) -> list[dict]:
    """The records of a pending file that can be sent (see :func:`scan_pending`); ValueError on the first bad
    one (the launcher's pre-flight: nothing is written while a cell folder holds one)."""
    records, rejected = scan_pending(path)
    if rejected:
        number, why, _ = rejected[0]
        raise ValueError(f"{path}:{number}: {why}; run python -m experiments.tracking.sync {path.parent} to set "
                         f"{len(rejected)} bad record(s) aside")
    return records


def set_aside(path: Path, rejected: list[tuple[int, str, bytes]], records: list[dict]) -> Path:
    """Append the rejected lines to ``<file>.rejected`` (kept for a person to look at) and leave only the good
    records in the pending file, so a bad record never blocks the rest again."""
    aside = path.with_name(path.name + REJECTED_SUFFIX)
    with open(aside, "ab") as fh:
        for _, _, raw in rejected:
            fh.write(raw.rstrip(b"\r") + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    _rewrite(path, records)
    return aside


def _inside(file: object, directory: Path) -> bool:
    return isinstance(file, str) and bool(file) and Path(file).resolve().is_relative_to(directory.resolve())


def _rewrite(path: Path, records: list[dict]) -> None:
    if not records:
        path.unlink()
        return
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _groups(records: list[dict]) -> list[tuple[str, str, list[dict]]]:
    """Consecutive records of one (uri, run) in chunks of at most CHUNK_OPS, in file order."""
    groups: list[tuple[str, str, list[dict]]] = []
    for record in records:
        key = (record.get("tracking_uri", ""), record["run_id"])
        if groups and groups[-1][:2] == key and len(groups[-1][2]) < CHUNK_OPS:
            groups[-1][2].append(record)
        else:
            groups.append((key[0], key[1], [record]))
    return groups


def sync_file(path: Path, tracking_uri: str | None = None) -> tuple[int, int]:
    """Send one pending file; returns (operations sent, operations left). Bad records are set aside first."""
    return sync_file_report(path, tracking_uri)[:2]


def sync_file_report(path: Path, tracking_uri: str | None = None) -> tuple[int, int, int]:
    """(operations sent, operations left, records set aside) of one pending file."""
    records, rejected = scan_pending(path)
    if rejected:
        aside = set_aside(path, rejected, records)
        for number, why, _ in rejected:
            print(f"{path}:{number}: {why}; set aside in {aside.name}", file=sys.stderr)
    sent, left = _send_file(path, records, tracking_uri)
    return sent, left, len(rejected)


def _send_file(path: Path, records: list[dict], tracking_uri: str | None) -> tuple[int, int]:
    sent = 0
    clients: dict[str, object] = {}
    for uri, run_id, chunk in _groups(records):
        uri = tracking_uri or uri
        if not uri:
            raise ValueError(f"{path}: a record has no tracking_uri; pass --tracking-uri")
        client = clients.setdefault(uri, mlflow_client(uri))
        ops = [{k: v for k, v in record.items() if k not in ("tracking_uri", "run_id")} for record in chunk]
        try:
            send_operations(client, run_id, ops)
        except Exception as err:  # noqa: BLE001
            print(f"{path}: stopped after {sent} operations ({type(err).__name__}: {str(err)[:200]})",
                  file=sys.stderr)
            return sent, len(records) - sent
        sent += len(chunk)
        _rewrite(path, records[sent:])
    if sent and records:
        try:  # the run no longer misses anything: drop the warning tag CellLogger left
            run_ids = {r["run_id"] for r in records}
            uri = tracking_uri or records[0].get("tracking_uri")
            for run_id in run_ids:
                clients.setdefault(uri, mlflow_client(uri)).set_tag(run_id, "pending_sync", "0")
        except Exception:  # noqa: BLE001 - cosmetic
            pass
    return sent, 0


def sync_tree(root: Path, tracking_uri: str | None = None) -> tuple[int, int, int]:
    """(sent, left, set aside) over every pending file under ``root``; a file that was not written by its cell
    (ValueError) is reported and left alone, counted as set aside."""
    total_sent = total_left = total_rejected = 0
    for path in pending_files(root):
        try:
            sent, left, rejected = sync_file_report(path, tracking_uri)
        except (ValueError, OSError) as err:
            print(short_text(err, 500), file=sys.stderr)
            total_rejected += 1
            continue
        print(f"{path}: {sent} operations sent" + (f", {left} left" if left else "")
              + (f", {rejected} set aside" if rejected else ""))
        total_sent += sent
        total_left += left
        total_rejected += rejected
    return total_sent, total_left, total_rejected


@entry_point
def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 everything sent; 1 some operations could not be sent now (the server is down: run it again);
    2 some records were bad and set aside (``<file>.rejected``) or a file was refused: a person should look."""
    parser = argparse.ArgumentParser(prog="python -m experiments.tracking.sync", description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="a cell directory or a folder above (e.g. outputs)")
    add_tracking_uri(parser, "send to this URI instead of the one each record names")
    parser.add_argument("--dry-run", action="store_true", help="only count what is pending (writes nothing)")
    args = parser.parse_args(argv)
    if not args.directory.exists():
        raise Refusal(f"{args.directory}: no such file or directory")
    quiet_http_retries()
    if args.dry_run:
        bad = 0
        for path in pending_files(args.directory):
            try:
                records, rejected = scan_pending(path)
            except (ValueError, OSError) as err:
                print(short_text(err, 500), file=sys.stderr)
                bad += 1
                continue
            for number, why, _ in rejected:
                print(f"{path}:{number}: {why}; would be set aside", file=sys.stderr)
            bad += len(rejected)
            print(f"{path}: {len(records)} operations pending" + (f", {len(rejected)} bad" if rejected else ""))
        return EXIT_REFUSED if bad else EXIT_OK
    uri = absolute_sqlite(args.tracking_uri) if args.tracking_uri else None
    try:
        sent, left, rejected = sync_tree(args.directory, uri)
    except (ValueError, OSError) as err:
        return refuse(short_text(err, 500))
    print(f"{sent} operations sent, {left} left" + (f", {rejected} set aside" if rejected else ""))
    return EXIT_REFUSED if rejected else EXIT_FAILED if left else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
