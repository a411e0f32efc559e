"""Rendering the paper's tables (analysis.cells.TableResult) as markdown, LaTeX or CSV: each cell shows ours
(mean ± sd over seeds, [95% bootstrap CI]), the paper's number and the difference; bold marks a column's best and
``†`` a scheme significantly below it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from .cells import TableResult

MISSING = "—"
SIG_MARK = "†"
DEFAULT_FORMAT = "markdown"
FORMATS = ("markdown", "latex", "csv")
SUFFIX = {"markdown": "md", "latex": "tex", "csv": "csv"}


def _fmt(value: float, digits: int) -> str:
    return MISSING if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _fmt_diff(value: float, digits: int) -> str:
    return MISSING if not np.isfinite(value) else f"{value:+.{digits}f}"


def format_ours(cell: pd.Series, digits: int) -> str:
    """``63.2 ± 0.4 [62.1, 64.0] (n=3)†`` — or, without runs, why no cell runs it (``not_run``) or "—"."""
    if not np.isfinite(cell["mean"]):
        return cell.get("not_run") or MISSING
    text = _fmt(cell["mean"], digits)
    if np.isfinite(cell["sd"]):
        text += f" ± {_fmt(cell['sd'], digits)}"
    if np.isfinite(cell["ci_low"]):
        text += f" [{_fmt(cell['ci_low'], digits)}, {_fmt(cell['ci_high'], digits)}]"
    if cell["table"] != 1:
        text += f" (n={int(cell['n'])})"
    return text + cell["mark"]


def wide(result: TableResult) -> pd.DataFrame:
    """One line per row; per column three text cells: ours, paper, Δ."""
    cells = result.cells
    rows = list(dict.fromkeys(cells.row))
    data: dict[tuple[str, str], list[str]] = {}
    for col in result.spec.columns:
        digits = result.spec.digits if col.digits is None else col.digits
        sub = cells[cells.column == col.key].set_index("row")
        data[(col.label, "ours")] = [format_ours(sub.loc[r], digits) for r in rows]
        data[(col.label, "paper")] = [_fmt(sub.loc[r, "paper"], digits) for r in rows]
        data[(col.label, "Δ")] = [_fmt_diff(sub.loc[r, "diff"], digits) for r in rows]
    frame = pd.DataFrame(data, index=pd.Index(rows, name="system"))
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    return frame


def _bold_cells(result: TableResult) -> set[tuple[str, str]]:
    best = result.cells[result.cells.is_best.astype(bool)]
    return {(r, result.spec.columns[[c.key for c in result.spec.columns].index(k)].label)
            for r, k in zip(best.row, best.column)}


def to_markdown(result: TableResult) -> str:
    frame, bold = wide(result), _bold_cells(result)
    header = ["system"] + [f"{label} {part}" for label, part in frame.columns]
    lines = [f"**Table {result.spec.number}.** {result.spec.title}", "",
             "| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["--:"] * len(frame.columns)) + "|"]
    for row_label, values in frame.iterrows():
        texts = [f"**{v}**" if part == "ours" and (row_label, label) in bold else v
                 for (label, part), v in values.items()]
        lines.append("| " + " | ".join([str(row_label).replace("|", "\\|")] + texts) + " |")
    lines.append("")
    lines += [f"- {note}" for note in result.notes]
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "→": r"$\rightarrow$", "±": r"$\pm$", "—": "---", "−": "-", SIG_MARK: r"$^\dagger$", "Δ": r"$\Delta$",
                  "<": r"$<$", ">": r"$>$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def to_latex(result: TableResult) -> str:
    """A booktabs ``table`` with ours/paper/Δ sub-columns under each reported number."""
    frame, bold = wide(result), _bold_cells(result)
    labels = list(dict.fromkeys(label for label, _ in frame.columns))
    lines = [r"\begin{table}[ht]", r"\centering", r"\small",
             r"\begin{tabular}{l" + "rrr" * len(labels) + "}", r"\toprule",
             " & " + " & ".join(rf"\multicolumn{{3}}{{c}}{{{latex_escape(label)}}}" for label in labels) + r" \\",
             "".join(rf"\cmidrule(lr){{{2 + 3 * i}-{4 + 3 * i}}}" for i in range(len(labels))),
             "system & " + " & ".join(["ours & paper & $\\Delta$"] * len(labels)) + r" \\", r"\midrule"]
    for row_label, values in frame.iterrows():
        texts = []
        for (label, part), v in values.items():
            cell = latex_escape(v)
            texts.append(rf"\textbf{{{cell}}}" if part == "ours" and (row_label, label) in bold else cell)
        lines.append(" & ".join([latex_escape(row_label)] + texts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}",
              rf"\caption{{Table {result.spec.number}: {latex_escape(result.spec.title)}. "
              + " ".join(latex_escape(n) for n in result.notes) + "}",
              rf"\label{{tab:paper-{result.spec.number}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_csv(result: TableResult) -> str:
    """The long form: one line per cell with every number (mean, sd, n, CI, paper, diff, p-value)."""
    return result.cells.to_csv(index=False)


RENDERERS = {"markdown": to_markdown, "latex": to_latex, "csv": to_csv}


def render(result: TableResult, fmt: str = DEFAULT_FORMAT) -> str:
    if fmt not in RENDERERS:
        raise ValueError(f"format {fmt!r}: expected one of {list(RENDERERS)}")
    return RENDERERS[fmt](result)


# ---------------------------------------------------------------------------------------------------------------------
# Command line
