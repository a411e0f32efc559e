"""Loading a task split (hub or local files) as a ``datasets.Dataset`` of (id, source, target);
``experiments.data.batches`` re-exports ``load_split`` and tokenises and batches what it returns.

Local sources (``load_split(task, split, source=...)``), one spec or a dict of specs keyed by split name:

* ``{"path": "x.jsonl", "columns": {"input": "article", "target": "highlights", "id": "id"}}`` — JSON lines;
  ``.csv`` / ``.tsv`` files are read the same way, with a header row (TSV fields are unquoted, as in the DiscoFuse
  and WikiSplit releases).  ``columns`` defaults to the task's hub columns; a column may be a list (joined with the
  task's ``input_join`` / ``target_join``) or a dotted path into nested JSON (``translation.en``).
* ``{"path": "validation.tsv", "format": "wikisplit"}`` — the WikiSplit release, ``complex<TAB>s1 <::::> s2`` without
  a header (the default for ``.tsv`` files of the wikisplit task when no columns are given).
* ``{"source_path": "src.txt", "target_path": "tgt.txt"}`` — parallel text, one example a line;
  ``"xml_unescape": true`` undoes the ``&apos;``/``&quot;`` escaping of Moses-processed WMT files.

Format is inferred from the suffix unless ``"format"`` (jsonl, csv, tsv, wikisplit, parallel) is given.  Bad input
raises ``ValueError`` naming the file and what was expected.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import logging
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import huggingface_hub
import numpy as np

from ..config.data_spec import FORMATS, SPEC_KEYS
from ..config.tasks import Task, get_task

# datasets is imported where it is used: importing it takes ~1.5 s (measured here), and the launcher's checks
# (pre-flight, prefetch) import this module without reading any data.

logger = logging.getLogger(__name__)

_COLUMN_KEYS = {"input", "target", "id"}
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}


# ----------------------------------------------------------------------------------------------------------------------
# the hub


@dataclass(frozen=True)
class HubRequest:
    """What will be fetched from the hub for one split: ``loader`` says which call ``kwargs`` are for."""

    loader: str  # "datasets.load_dataset" or "huggingface_hub.hf_hub_download"
    kwargs: dict[str, Any]
    members: tuple[str, ...] = ()  # files inside a downloaded archive (Gigaword: source and target text)


def hub_request(task: str | Task, split: str) -> HubRequest:
    """The exact hub call for ``split`` of ``task`` (kept separate from the download so it can be tested offline)."""
    task = get_task(task)
    if split not in task.splits:
        raise ValueError(f"task {task.name!r} has no split {split!r} on the hub: expected one of {sorted(task.splits)}")
    hub_split = task.splits[split]
    source = hub_split.source
    if source.loader == "datasets":
        kwargs: dict[str, Any] = {"path": source.dataset_id}
        if source.config is not None:
            kwargs["name"] = source.config
        if source.revision is not None:
            kwargs["revision"] = source.revision
        if source.data_dir is not None:
            kwargs["data_dir"] = source.data_dir
        kwargs["split"] = hub_split.split
        return HubRequest("datasets.load_dataset", kwargs)
    if source.loader == "gigaword_zip":
        kwargs = {"repo_id": source.dataset_id, "filename": "data/ggw_data.zip", "repo_type": "dataset"}
        if source.revision is not None:
            kwargs["revision"] = source.revision
        stem = f"org_data/{hub_split.split}"
        return HubRequest("huggingface_hub.hf_hub_download", kwargs, (f"{stem}.src.txt", f"{stem}.tgt.txt"))
    raise ValueError(f"task {task.name!r}: unknown hub loader {source.loader!r}")


def read_gigaword_zip(zip_path: str | Path, members: Sequence[str]) -> tuple[list[str], list[str], str]:
    """(documents, summaries, content hash) from the Gigaword archive's parallel ``.src.txt`` / ``.tgt.txt`` pair."""
    zip_path = Path(zip_path)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as error:
        raise ValueError(f"{zip_path}: cannot open as a zip archive ({error}); expected the Gigaword ggw_data.zip")
    with archive:
        names = set(archive.namelist())
        texts, digest = [], hashlib.sha256()
        for member in members:
            if member not in names:
                raise ValueError(f"{zip_path}: has no member {member!r}; "
                                 "expected Gigaword's org_data/<split>.src.txt and .tgt.txt")
            data = archive.read(member)
            digest.update(data)
            texts.append(_decode(data, f"{zip_path}:{member}", "UTF-8 text, one example a line"))
    documents, summaries = (_lines(t) for t in texts)
    _check_parallel(documents, summaries, f"{zip_path}:{members[0]}", f"{zip_path}:{members[1]}")
    return documents, summaries, digest.hexdigest()


def _nested(row: Mapping[str, Any], dotted: str, where: str) -> Any:
    value: Any = row
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            have = sorted(value) if isinstance(value, Mapping) else type(value).__name__
            raise ValueError(f"{where}: has no field {dotted!r} (available: {have})")
        value = value[part]
    return value


def _load_hub(task: Task, split: str, data_fraction: float, seed: int, max_examples: int | None):
    import datasets  # lazy: import cost (module imports)

    request = hub_request(task, split)
    if request.loader == "datasets.load_dataset":
        raw = datasets.load_dataset(**request.kwargs)
        where = f"hub dataset {request.kwargs['path']} split {request.kwargs['split']}"
        for column in (*task.input_columns, *task.target_columns, *([task.id_column] if task.id_column else [])):
            if column.split(".")[0] not in raw.column_names:
                raise ValueError(f"{where}: has no column {column!r}; columns are {raw.column_names}")
        indices = _subset_indices(len(raw), data_fraction, seed, max_examples)
        if indices is not None:
            raw = raw.select(indices)
        fingerprint = hash_parts("hub", raw._fingerprint, task.input_columns, task.target_columns, task.id_column,
                                   task.input_join, task.target_join, task.lowercase, split)

        def convert(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
            rows = [{k: batch[k][i] for k in batch} for i in range(len(indices))]
            return _rows_to_examples(rows, indices, task, split, task.id_column, task.input_columns,
                                     task.target_columns, where)

        return raw.map(convert, batched=True, with_indices=True, remove_columns=raw.column_names,
                       new_fingerprint=fingerprint, desc=f"{task.name}/{split}: source/target")

    zip_path = huggingface_hub.hf_hub_download(**request.kwargs)
    documents, summaries, digest = read_gigaword_zip(zip_path, request.members)
    rows = [{"document": d, "summary": s} for d, s in zip(documents, summaries)]
    return _finish_local(rows, task, split, None, task.input_columns, task.target_columns, zip_path, digest,
                         data_fraction, seed, max_examples)


# ----------------------------------------------------------------------------------------------------------------------
# local files


def _decode(data: bytes, where: str, expected: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{where}: not valid UTF-8 (byte {error.start}); expected {expected}") from None


def _read_file(path: Path, expected: str) -> tuple[str, str]:
    """(text, sha256) of a file that must exist, be UTF-8 and contain something."""
    if not path.is_file():
        raise ValueError(f"{path}: file not found; expected {expected}")
    data = path.read_bytes()
    text = _decode(data, str(path), expected)
    if not text.strip():
        raise ValueError(f"{path}: file is empty; expected {expected}")
    return text, hashlib.sha256(data).hexdigest()


def _lines(text: str) -> list[str]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def _check_parallel(sources: list[str], targets: list[str], source_name: str, target_name: str) -> None:
    if len(sources) != len(targets):
        raise ValueError(f"{target_name}: has {len(targets)} lines but {source_name} has {len(sources)}; "
                         "expected parallel files with one example a line")


def _read_jsonl(path: Path) -> tuple[list[dict], str]:
    text, digest = _read_file(path, "JSON lines (one object a line)")
    rows = []
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}: line {number} is not valid JSON ({error.msg}); expected one object a line"
            ) from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {number} is a JSON {type(row).__name__}; expected an object")
        rows.append(row)
    return rows, digest


def _read_delimited(path: Path, delimiter: str) -> tuple[list[dict], str]:
    kind = "TSV" if delimiter == "\t" else "CSV"
    text, digest = _read_file(path, f"{kind} with a header row")
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    header = next(reader)
    rows = []
    for fields in reader:
        if not fields or fields == [""]:
            continue
        if len(fields) != len(header):
            raise ValueError(f"{path}: line {reader.line_num} has {len(fields)} fields; expected {len(header)} "
                             f"as in the header {header}")
        rows.append(dict(zip(header, fields)))
    if not rows:
        raise ValueError(f"{path}: has a header but no rows; expected at least one example")
    return rows, digest


def _read_wikisplit(path: Path, target_join: str) -> tuple[list[dict], str]:
    text, digest = _read_file(path, "WikiSplit TSV (complex<TAB>simple1 <::::> simple2)")
    rows = []
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise ValueError(f"{path}: line {number} has {len(fields)} tab-separated fields; expected 2 "
                             "(complex<TAB>simple1 <::::> simple2)")
        parcels = [p.strip() for p in fields[1].split("<::::>") if p.strip()]
        rows.append({"complex_sentence": fields[0].strip(), "simple_sentences": target_join.join(parcels)})
    return rows, digest


def _has_field(row: Mapping[str, Any], dotted: str) -> bool:
    try:
        _nested(row, dotted, "")
    except ValueError:
        return False
    return True


def _column_spec(spec: Mapping[str, Any], task: Task, first_row: Mapping[str, Any], where: str):
    columns = spec.get("columns")
    if columns is None:
        # The task's hub columns; its id column only if the file has one (local copies often number examples).
        id_column = task.id_column if task.id_column and _has_field(first_row, task.id_column) else None
        return id_column, task.input_columns, task.target_columns
    if not isinstance(columns, Mapping) or not {"input", "target"} <= set(columns) or set(columns) - _COLUMN_KEYS:
        raise ValueError(f"{where}: columns must be a mapping with keys 'input', 'target' and optionally 'id' "
                         f"(got {columns!r})")

    def names(value) -> tuple[str, ...]:
        return (value,) if isinstance(value, str) else tuple(value)

    return columns.get("id"), names(columns["input"]), names(columns["target"])


def _join(parts: Sequence[Any], joiner: str, where: str, column: Sequence[str]) -> str:
    for part in parts:
        if part is not None and not isinstance(part, str):
            raise ValueError(f"{where}: field {list(column)} holds a {type(part).__name__}; expected text")
    return joiner.join(p.strip() for p in parts if p and p.strip())


def _rows_to_examples(rows, row_indices, task: Task, split: str, id_column, input_columns, target_columns, where):
    ids, sources, targets = [], [], []
    for row, index in zip(rows, row_indices):
        row_where = f"{where} (example {index})"
        source = _join([_nested(row, c, row_where) for c in input_columns], task.input_join, row_where, input_columns)
        target = _join([_nested(row, c, row_where) for c in target_columns], task.target_join, row_where,
                       target_columns)
        if task.lowercase:
            source, target = source.lower(), target.lower()
        ids.append(str(_nested(row, id_column, row_where)) if id_column else f"{split}-{index}")
        sources.append(source)
        targets.append(target)
    return {"id": ids, "source": sources, "target": targets}


def _finish_local(rows, task, split, id_column, input_columns, target_columns, where, digest, data_fraction, seed,
                  max_examples):
    import datasets  # lazy: import cost (module imports)

    if rows:  # fail on a missing column before touching every row
        first = rows[0]
        for column in (*input_columns, *target_columns, *([id_column] if id_column else [])):
            _nested(first, column, f"{where} (first example)")
    indices = _subset_indices(len(rows), data_fraction, seed, max_examples)
    kept = range(len(rows)) if indices is None else indices
    examples = _rows_to_examples([rows[i] for i in kept], kept, task, split, id_column, input_columns,
                                 target_columns, str(where))
    fingerprint = hash_parts("local", digest, id_column, input_columns, target_columns, task.input_join,
                               task.target_join, task.lowercase, split, data_fraction, seed, max_examples)
    table = datasets.table.InMemoryTable.from_pydict(examples)
    return datasets.Dataset(table, fingerprint=fingerprint)


def _load_local(task: Task, split: str, spec: Mapping[str, Any], data_fraction, seed, max_examples):
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise ValueError(f"data source for {task.name}/{split}: unknown key(s) {sorted(unknown)}; "
                         f"expected some of {sorted(SPEC_KEYS)}")
    fmt = spec.get("format")
    if fmt is None:
        if "source_path" in spec or "target_path" in spec:
            fmt = "parallel"
        elif "path" in spec:
            suffix = Path(spec["path"]).suffix.lower()
            fmt = _SUFFIX_FORMATS.get(suffix)
            if fmt == "tsv" and task.name == "wikisplit" and "columns" not in spec:
                fmt = "wikisplit"
            if fmt is None:
                raise ValueError(f"{spec['path']}: cannot tell the format from the suffix {suffix!r}; "
                                 f"set 'format' to one of {sorted(FORMATS)}")
        else:
            raise ValueError(f"data source for {task.name}/{split}: expected 'path' or 'source_path'/'target_path' "
                             f"(got keys {sorted(spec)})")
    if fmt not in FORMATS:
        raise ValueError(f"data source for {task.name}/{split}: unknown format {fmt!r}; "
                         f"expected one of {sorted(FORMATS)}")

    if fmt == "parallel":
        if "source_path" not in spec or "target_path" not in spec:
            raise ValueError(f"data source for {task.name}/{split}: parallel text needs both 'source_path' and "
                             "'target_path'")
        source_path, target_path = Path(spec["source_path"]), Path(spec["target_path"])
        source_text, source_digest = _read_file(source_path, "UTF-8 text, one source sentence a line")
        target_text, target_digest = _read_file(target_path, "UTF-8 text, one target sentence a line")
        sources, targets = _lines(source_text), _lines(target_text)
        _check_parallel(sources, targets, str(source_path), str(target_path))
        if spec.get("xml_unescape"):
            sources, targets = [html.unescape(s) for s in sources], [html.unescape(t) for t in targets]
        rows = [{"source": s, "target": t} for s, t in zip(sources, targets)]
        digest = hash_parts(source_digest, target_digest, bool(spec.get("xml_unescape")))
        return _finish_local(rows, task, split, None, ("source",), ("target",), source_path, digest,
                             data_fraction, seed, max_examples)

    if "path" not in spec:
        raise ValueError(f"data source for {task.name}/{split}: format {fmt!r} needs 'path'")
    path = Path(spec["path"])
    if fmt == "wikisplit":
        rows, digest = _read_wikisplit(path, task.target_join)
        id_column, input_columns, target_columns = None, ("complex_sentence",), ("simple_sentences",)
    else:
        rows, digest = _read_jsonl(path) if fmt == "jsonl" else _read_delimited(path, "," if fmt == "csv" else "\t")
        if not rows:
            raise ValueError(f"{path}: has no examples; expected at least one")
        id_column, input_columns, target_columns = _column_spec(spec, task, rows[0], str(path))
    if spec.get("xml_unescape"):
        rows = [{k: html.unescape(v) if isinstance(v, str) else v for k, v in row.items()} for row in rows]
        digest = hash_parts(digest, "xml_unescape")
    return _finish_local(rows, task, split, id_column, input_columns, target_columns, path, digest,
                         data_fraction, seed, max_examples)


# ----------------------------------------------------------------------------------------------------------------------
# load_split


def hash_parts(*parts: Any) -> str:
    from datasets.fingerprint import Hasher  # lazy: import cost (module imports)

    return Hasher.hash(list(parts))


def _subset_indices(n: int, data_fraction: float | None, seed: int, max_examples: int | None) -> list[int] | None:
    """Rows kept by ``data_fraction`` (a seeded random subset, in file order) and then ``max_examples`` (the first N).

    The subset is a prefix of one seeded permutation, so with the same seed the 1% subset lies inside the 10% one.
    """
    if data_fraction is not None and not 0.0 < data_fraction <= 1.0:
        raise ValueError(f"data_fraction must be in (0, 1], got {data_fraction}")
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be a positive integer, got {max_examples}")
    indices = None
    if data_fraction is not None and data_fraction < 1.0:
        keep = max(1, round(data_fraction * n))
        indices = sorted(np.random.default_rng(seed).permutation(n)[:keep].tolist())
    if max_examples is not None and max_examples < (n if indices is None else len(indices)):
        indices = list(range(max_examples)) if indices is None else indices[:max_examples]
    return indices


def _spec_for_split(source: Any, split: str, task: Task) -> Mapping[str, Any]:
    if isinstance(source, (str, Path)):
        return {"path": str(source)}
    if not isinstance(source, Mapping):
        raise ValueError(f"data source for {task.name}/{split}: expected None, a path or a mapping, "
                         f"got {type(source).__name__}")
    if split in source and not (set(source) & SPEC_KEYS):
        return _spec_for_split(source[split], split, task)
    if set(source) & SPEC_KEYS:
        return source
    raise ValueError(f"data source for {task.name}: no entry for split {split!r} (have {sorted(source)})")


def load_split(
    task: str | Task,
    split: str,
    source: Any = None,
    *,
    data_fraction: float | None = None,
    seed: int = 0,
    max_examples: int | None = None,
):
    """One split of a task as a ``datasets.Dataset`` with string columns ``id``, ``source``, ``target``.

    ``source=None`` loads from the hub (see :func:`hub_request`); otherwise a local spec (module docstring), or a
    dict of specs keyed by split name.  ``data_fraction`` keeps a seeded random subset (the paper's 1%/10%
    DiscoFuse), ``max_examples`` then keeps the first N (smoke runs, quick evaluations).
    """
    task = get_task(task)
    if source is None:
        dataset = _load_hub(task, split, data_fraction, seed, max_examples)
    else:
        dataset = _load_local(task, split, _spec_for_split(source, split, task), data_fraction, seed, max_examples)
    if len(dataset) == 0:
        raise ValueError(f"{task.name}/{split}: no examples left after data_fraction={data_fraction}, "
                         f"max_examples={max_examples}")
    logger.info("%s/%s: %d examples", task.name, split, len(dataset))
    return dataset
