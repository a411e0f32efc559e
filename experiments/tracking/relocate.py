"""Give a copied or moved output folder its own artifacts: ``python -m experiments.tracking.relocate OUTPUT_ROOT``.

MLflow's embedded sqlite store (``<output_root>/mlflow.db``) records where each experiment and run keeps its
artifacts as an absolute ``file://`` path. After ``cp -r outputs/ /elsewhere/`` the copy's runs still point into the
original folder (the launch refuses to write through such a store). This rewrites those locations to the
``mlartifacts/`` folder beside the copy (:func:`experiments.tracking.store.relocate_store`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import EXIT_OK, entry_point
from ..config.validate import Refusal
from .store import relocate_store


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.tracking.relocate", description=__doc__.splitlines()[0])
    parser.add_argument("output_root", type=Path, help="the folder holding mlflow.db and mlartifacts/")
    parser.add_argument("--dry-run", action="store_true", help="say what would be rewritten, change nothing")
    args = parser.parse_args(argv)
    db = args.output_root / "mlflow.db"
    if not db.is_file():
        raise Refusal(f"{db}: no MLflow store there (expected <output_root>/mlflow.db)")
    moved = relocate_store(db, dry_run=args.dry_run)
    verb = "would point" if args.dry_run else "pointed"
    for old, new in moved:
        print(f"{verb} {old} -> {new}")
    if not moved:
        print(f"{db}: every artifact location is already beside the store")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
