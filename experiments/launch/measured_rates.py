"""The measured-rates file: training tokens/s that ``experiments.launch.rehearse`` measured, keyed by (shape label, source
length, target length, dtype, device), read by ``experiments.launch.compute_plan`` in place of its FLOPs estimate.

``$BERTGEN_MEASURED_RATES``, else ``~/.cache/bertgen/measured_rates.json``: a JSON list of records (shape, source,
target, dtype, device, tokens_per_s, machine, micro_batch, measured_at). A cache of measurements on the machine (or
shared home) where a rehearsal ran, written whole and renamed, never half-written.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from ..config.validate import short_text

RateKey = tuple[str, int, int, str, str]
MEASURED_RATES_VARIABLE = "BERTGEN_MEASURED_RATES"


def measured_rates_file() -> Path:
    """Where experiments.launch.rehearse records measured rates and the plan reads them."""
    configured = os.environ.get(MEASURED_RATES_VARIABLE)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "bertgen" / "measured_rates.json"


def rate_record_key(record: dict[str, Any]) -> RateKey:
    return (str(record["shape"]), int(record["source"]), int(record["target"]), str(record["dtype"]),
            str(record["device"]))


_FILE_RATES: dict[tuple[str, int], dict[RateKey, dict[str, Any]]] = {}


def recorded_rates(path: Path | None = None) -> dict[RateKey, dict[str, Any]]:
    """The measured-rates file's records by key ({} when there is none). A file that is not a JSON list of records
    is ignored with one warning naming it: it is a cache of measurements, never a reason to stop a plan."""
    path = path or measured_rates_file()
    try:
        stamp = (str(path), path.stat().st_mtime_ns)
    except OSError:
        return {}
    if stamp not in _FILE_RATES:
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
            _FILE_RATES[stamp] = {rate_record_key(r): r for r in records if float(r["tokens_per_s"]) > 0}
        except (OSError, ValueError, TypeError, KeyError) as err:
            print(f"warning: {path}: not a list of measured rates from experiments.launch.rehearse ({short_text(err, 80)}); "
                  "ignored, the plan estimates", file=sys.stderr)
            _FILE_RATES[stamp] = {}
    return _FILE_RATES[stamp]


def record_rates(records: list[dict[str, Any]], path: Path | None = None) -> Path:
    """Add ``records`` (shape, source, target, dtype, device, tokens_per_s, machine, ...) to the measured-rates file,
    replacing records of the same key; written whole to a temporary file and renamed (never half-written)."""
    path = path or measured_rates_file()
    merged = {**recorded_rates(path), **{rate_record_key(r): r for r in records}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(list(merged.values()), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
