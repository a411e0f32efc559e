"""What the Slurm cluster can give, asked of ``sinfo`` before a launch writes or submits anything.

``python -m experiments.launch GRID --executor slurm`` calls :func:`check_grid` right after the grid and its cells
passed the pre-flight: the grid's ``executor.slurm`` request is compared with the partition it names (or the
cluster's default partition) and an impossible request is refused in one line (exit status 2, no MLflow run, no
output directory) naming the key to change and a value that would fit, e.g.::

    grids/smoke.yaml: executor.slurm.gpus_per_node: 1 GPU per node requested, partition debug has no GPUs
    (gres: (null)); set --set executor.slurm.gpus_per_node=0

What is compared (one ``sinfo -N`` line per node and partition: CPUs, memory, GRES, features, time limit):

- ``partition``: exists; ``null`` needs a default partition (the one ``sinfo`` marks with ``*``);
- ``gpus_per_node``: at most the GPUs of the partition's best node (``gpu`` entries of its GRES, typed or not);
- ``cpus_per_task`` × ``tasks_per_node``: at most the CPUs of a node with enough GPUs;
- ``mem_gb`` (submitit writes ``--mem=<mem_gb>GB``; Slurm's GB is 1024 MB): at most a node's memory;
- ``nodes``: that many nodes that satisfy all of the above;
- ``timeout_min``: at most the partition's time limit;
- ``constraint``: when it is a single feature name, some node of the partition has it.

Accounts and QoS are not checked (``sinfo`` does not know them); sbatch's refusal of those is still one line
(:func:`submission_error`). The check asks the ``sinfo`` installed beside the ``sbatch`` that will submit: with no
``sinfo`` there, nothing is checked and the launcher says so.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config.validate import Refusal, short_text

SINFO_FORMAT = "%N|%P|%c|%m|%G|%l|%a|%t|%f"
SINFO_TIMEOUT_S = 20.0
MB_PER_GB = 1024  # Slurm's --mem=<n>G/GB


class SlurmQueryError(RuntimeError):
    """``sinfo`` could not be run or did not answer."""


class ResourceError(ValueError):
    """A request the cluster cannot give; ``key`` is the ``executor.slurm`` field to change."""

    def __init__(self, key: str, message: str):
        self.key, self.message = key, message
        super().__init__(f"executor.slurm.{key}: {message}")


@dataclass(frozen=True)
class Node:
    """One ``sinfo -N`` line: a node as one partition sees it."""

    name: str
    partition: str
    default: bool  # the cluster's default partition (``*``)
    cpus: int
    memory_mb: int
    gres: str
    gpus: int
    time_limit_min: int | None  # None: no limit
    available: bool  # the partition is up
    state: str
    features: tuple[str, ...] = field(default=())


# -- parsing ----------------------------------------------------------------------------------------------------------
def _leading_int(text: str) -> int:
    match = re.match(r"\s*(\d+)", text)
    return int(match.group(1)) if match else 0


def _split_gres(gres: str) -> list[str]:
    """Top-level comma-separated entries (commas inside ``(S:0,1)`` belong to their entry)."""
    items, depth, current = [], 0, ""
    for char in gres:
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(0, depth - 1)
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    return [item.strip() for item in items if item.strip()]


def gpus_in_gres(gres: str) -> int:
    """GPUs a node's GRES string offers: ``gpu:4``, ``gpu:a100:4(S:0-1)``, ``gpu:tesla:2,mps:100`` → 4, 4, 2;
    ``(null)`` → 0. Typed entries of the same node add up (``gpu:a100:2,gpu:v100:2`` → 4)."""
    total = 0
    for item in _split_gres(gres or ""):
        bare = re.sub(r"\(.*?\)", "", item)
        parts = bare.split(":")
        if parts[0].strip().lower() != "gpu":
            continue
        counts = [p for p in parts[1:] if re.fullmatch(r"\d+", p.strip())]
        total += int(counts[-1]) if counts else 1
    return total


def parse_time_limit(text: str) -> int | None:
    """Slurm's time formats in minutes (``infinite``/``UNLIMITED`` → None): ``30`` (minutes), ``30:00``
    (minutes:seconds), ``2:00:00``, ``1-00:00:00``, ``2-12``, ``2-12:30``."""
    text = text.strip()
    if text.lower() in ("infinite", "unlimited", "n/a", "none", ""):
        return None
    days = 0
    if "-" in text:
        day_text, text = text.split("-", 1)
        days = int(day_text)
        parts = [int(p) for p in text.split(":")]
        hours, minutes, seconds = (parts + [0, 0, 0])[:3]
    else:
        parts = [int(p) for p in text.split(":")]
        if len(parts) == 1:
            hours, minutes, seconds = 0, parts[0], 0
        elif len(parts) == 2:
            hours, (minutes, seconds) = 0, parts
        else:
            hours, minutes, seconds = parts[:3]
    return days * 1440 + hours * 60 + minutes  # seconds do not make a whole minute more


def parse_sinfo(text: str) -> list[Node]:
    """The lines of ``sinfo -h -N -o SINFO_FORMAT``."""
    nodes = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) < 8:
            raise SlurmQueryError(f"unexpected sinfo line {line!r} (format {SINFO_FORMAT})")
        name, partition, cpus, memory, gres, limit, avail, state = fields[:8]
        features = fields[8] if len(fields) > 8 else ""
        try:
            time_limit = parse_time_limit(limit)
        except ValueError:
            time_limit = None
        nodes.append(Node(
            name=name.strip(), partition=partition.strip().rstrip("*"), default=partition.strip().endswith("*"),
            cpus=_leading_int(cpus), memory_mb=_leading_int(memory), gres=gres.strip(), gpus=gpus_in_gres(gres),
            time_limit_min=time_limit, available=avail.strip().lower() == "up", state=state.strip(),
            features=tuple(f for f in re.split(r"[,&|]", features.strip()) if f and f != "(null)")))
    return nodes


# -- asking the cluster -----------------------------------------------------------------------------------------------
def sinfo_beside_sbatch() -> str | None:
    """The ``sinfo`` of the Slurm installation whose ``sbatch`` will submit (same directory), else None."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        return None
    candidate = Path(sbatch).resolve().parent / "sinfo"
    if candidate.is_file():
        return str(candidate)
    beside = Path(sbatch).parent / "sinfo"
    return str(beside) if beside.is_file() else None


Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def query_nodes(sinfo: str = "sinfo", runner: Runner = subprocess.run, timeout_s: float = SINFO_TIMEOUT_S) -> list[Node]:
    try:
        proc = runner([sinfo, "-h", "-N", "-o", SINFO_FORMAT], capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError) as err:
        raise SlurmQueryError(f"{sinfo} failed ({type(err).__name__}: {short_text(err, None)})") from None
    if proc.returncode != 0:
        said = " ".join((proc.stderr or proc.stdout or "").split())[:200]
        raise SlurmQueryError(f"{sinfo} exited with {proc.returncode}: {said or 'no output'}")
    nodes = parse_sinfo(proc.stdout)
    if not nodes:
        raise SlurmQueryError(f"{sinfo} lists no nodes")
    return nodes


# -- comparing --------------------------------------------------------------------------------------------------------
def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _fix(key: str, value: Any) -> str:
    return f"set --set executor.slurm.{key}={value}"


def check_request(slurm: dict[str, Any], nodes: Sequence[Node]) -> str:
    """The partition the request goes to, or :class:`ResourceError` naming the first key the cluster cannot give."""
    partitions: dict[str, list[Node]] = {}
    for node in nodes:
        partitions.setdefault(node.partition, []).append(node)
    names = sorted(partitions)
    listing = ", ".join(n + ("*" if any(x.default for x in partitions[n]) else "") for n in names)
    wanted = slurm.get("partition")
    if wanted:
        chosen = [p for p in str(wanted).split(",") if p in partitions]
        if not chosen:
            raise ResourceError("partition", f"partition {wanted!r} does not exist on this cluster (partitions: "
                                             f"{listing}); {_fix('partition', names[0])}")
        name = chosen[0]
        members = [n for p in chosen for n in partitions[p]]
    else:
        defaults = sorted({n.partition for n in nodes if n.default})
        if not defaults:
            raise ResourceError("partition", f"null asks for the default partition and this cluster has none "
                                             f"(partitions: {listing}); {_fix('partition', names[0])}")
        name = defaults[0]
        members = partitions[name]
    label = f"partition {name}"

    gpus = int(slurm.get("gpus_per_node") or 0)
    best_gpus = max(n.gpus for n in members)
    if gpus > best_gpus:
        gres = ", ".join(sorted({n.gres for n in members}))
        have = "has no GPUs" if best_gpus == 0 else f"has at most {_plural(best_gpus, 'GPU')} per node"
        raise ResourceError("gpus_per_node", f"{_plural(gpus, 'GPU')} per node requested, {label} {have} "
                                             f"(gres: {gres}); {_fix('gpus_per_node', best_gpus)}")
    members = [n for n in members if n.gpus >= gpus]

    tasks = int(slurm.get("tasks_per_node") or 1)
    cpus_per_task = int(slurm.get("cpus_per_task") or 1)
    best_cpus = max(n.cpus for n in members)
    if cpus_per_task * tasks > best_cpus:
        with_gpus = f" with {_plural(gpus, 'GPU')}" if gpus else ""
        raise ResourceError("cpus_per_task", f"{cpus_per_task} CPUs per task x {_plural(tasks, 'task')} per node "
                                             f"requested, the nodes of {label}{with_gpus} have at most "
                                             f"{best_cpus} CPUs; {_fix('cpus_per_task', max(1, best_cpus // tasks))}")
    members = [n for n in members if n.cpus >= cpus_per_task * tasks]

    mem_gb = slurm.get("mem_gb")
    if mem_gb is not None:
        best_mb = max(n.memory_mb for n in members)
        if float(mem_gb) * MB_PER_GB > best_mb:
            raise ResourceError("mem_gb", f"{mem_gb:g} GB per node requested, the nodes of {label} that fit the "
                                          f"GPUs and CPUs have at most {best_mb} MB ({best_mb / MB_PER_GB:.1f} GB); "
                                          f"{_fix('mem_gb', max(1, best_mb // MB_PER_GB))}")
        members = [n for n in members if float(mem_gb) * MB_PER_GB <= n.memory_mb]

    constraint = slurm.get("constraint")
    if constraint and re.fullmatch(r"[A-Za-z0-9_.-]+", str(constraint)):
        featured = [n for n in members if constraint in n.features]
        if not featured:
            features = sorted({f for n in members for f in n.features}) or ["none"]
            raise ResourceError("constraint", f"feature {constraint!r} requested, no node of {label} that fits the "
                                              f"request has it (features: {', '.join(features)}); "
                                              f"{_fix('constraint', 'null')}")
        members = featured

    wanted_nodes = int(slurm.get("nodes") or 1)
    fitting = sorted({n.name for n in members})
    if wanted_nodes > len(fitting):
        raise ResourceError("nodes", f"{_plural(wanted_nodes, 'node')} requested, {label} has "
                                     f"{len(fitting)} that fit the per-node request; {_fix('nodes', len(fitting))}")

    limits = [n.time_limit_min for n in members if n.time_limit_min is not None]
    timeout = int(slurm.get("timeout_min") or 0)
    if limits and len(limits) == len(members) and timeout > max(limits):
        limit = max(limits)
        raise ResourceError("timeout_min", f"{timeout} minutes requested, {label} allows at most {limit} minutes; "
                                           f"{_fix('timeout_min', limit)} (cells checkpoint and requeue themselves)")
    return name


def check_grid(grid: Any, sinfo: str | None = None, runner: Runner = subprocess.run) -> list[str]:
    """Notes for the launcher; raises :class:`ResourceError` for a request the cluster cannot give and
    :class:`SlurmQueryError` when ``sinfo`` does not answer."""
    sinfo = sinfo or sinfo_beside_sbatch()
    if sinfo is None:
        return ["no sinfo beside sbatch: the Slurm request was not checked against the cluster"]
    s = grid.executor["slurm"]
    partition = check_request(s, query_nodes(sinfo, runner))
    return [f"Slurm: partition {partition} can give {s['nodes']}x({s['tasks_per_node']} tasks x "
            f"{s['cpus_per_task']} CPUs, {s['gpus_per_node']} GPUs, {s['mem_gb']:g} GB) for {s['timeout_min']} min"]


def submission_error(err: BaseException) -> str:
    """One line from what sbatch (through submitit) said when it refused a submission."""
    text = short_text(err, None) or type(err).__name__
    match = re.search(r"sbatch: error: (.*?)(?= sbatch: error:|$)", text)
    return (match.group(1) if match else text)[:400]


def launch_check(grid: Any, dry_run: bool, sinfo: str | None = None) -> None:
    """What ``experiments.launch.launcher`` runs for ``--executor slurm`` before it writes anything: prints the notes, or
    raises the :class:`~experiments.config.validate.Refusal` (a dry run prints it as a warning and goes on)."""
    try:
        notes = check_grid(grid, sinfo)
    except (ResourceError, SlurmQueryError) as err:
        where = grid.path if not isinstance(err, SlurmQueryError) else "slurm"
        text = f"{where}: {err}" + ("" if isinstance(err, ResourceError) else
                                    "; is the Slurm controller up? (or --executor local)")
        if not dry_run:
            raise Refusal(text) from None
        print(f"warning: {text} (a launch would refuse this)", file=sys.stderr)
        return
    for note in notes:
        print(f"note: {note}")
