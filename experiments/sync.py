"""Upload what cells could not send to MLflow while the tracking server was down.

    python -m experiments.sync DIR [--tracking-uri URI] [--dry-run]

DIR is a cell directory or any folder above (e.g. ``outputs``); every ``pending_metrics.jsonl`` below it is read.
Each line is one operation (metrics, tags, artifact, status) with the run id and tracking URI it was meant for
(``--tracking-uri`` sends them elsewhere, e.g. after the server moved). Operations are applied in file order, in
chunks; after each chunk the file is rewritten with only what is left, so an interrupted sync resumes where it
stopped and never uploads a chunk twice. A file that is fully sent is removed. Exit status 1 when anything is left.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .tracking import PENDING_FILE, _client, quiet_http_retries, send_operations

CHUNK_OPS = 200


def pending_files(root: Path) -> list[Path]:
    if root.is_file() and root.name == PENDING_FILE:
        return [root]
    return sorted(root.rglob(PENDING_FILE))


def read_pending(path: Path) -> list[dict]:
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue  # a line cut short by a crash while appending: nothing of it was sent either way
            raise ValueError(f"{path}:{number}: expected one JSON object per line") from None
        if not isinstance(record, dict) or not {"run_id", "op"} <= record.keys():
            raise ValueError(f"{path}:{number}: expected an object with run_id and op")
        if record["op"] == "artifact" and not _inside(record.get("path"), path.parent):
            # a cell only parks files of its own directory; anything else in this file was not written by it
            raise ValueError(f"{path}:{number}: artifact {record.get('path')!r} is outside {path.parent}; expected "
                             "a file of the cell directory (nothing was uploaded)")
        records.append(record)
    return records


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
    """Send one pending file; returns (operations sent, operations left)."""
    records = read_pending(path)
    sent = 0
    clients: dict[str, object] = {}
    for uri, run_id, chunk in _groups(records):
        uri = tracking_uri or uri
        if not uri:
            raise ValueError(f"{path}: a record has no tracking_uri; pass --tracking-uri")
        client = clients.setdefault(uri, _client(uri))
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
                clients.setdefault(uri, _client(uri)).set_tag(run_id, "pending_sync", "0")
        except Exception:  # noqa: BLE001 - cosmetic
            pass
    return sent, 0


def sync_tree(root: Path, tracking_uri: str | None = None) -> tuple[int, int]:
    total_sent = total_left = 0
    for path in pending_files(root):
        sent, left = sync_file(path, tracking_uri)
        print(f"{path}: {sent} operations sent" + (f", {left} left" if left else ""))
        total_sent += sent
        total_left += left
    return total_sent, total_left


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.sync", description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="a cell directory or a folder above (e.g. outputs)")
    parser.add_argument("--tracking-uri", help="send to this URI instead of the one each record names")
    parser.add_argument("--dry-run", action="store_true", help="only count what is pending")
    args = parser.parse_args(argv)
    if not args.directory.exists():
        print(f"{args.directory}: no such file or directory", file=sys.stderr)
        return 2
    quiet_http_retries()
    if args.dry_run:
        for path in pending_files(args.directory):
            print(f"{path}: {len(read_pending(path))} operations pending")
        return 0
    try:
        sent, left = sync_tree(args.directory, args.tracking_uri)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    print(f"{sent} operations sent, {left} left")
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
