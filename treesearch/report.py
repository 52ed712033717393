"""Plots and a self-contained ``report.html`` for a comparison (matplotlib, Agg backend).

Four figures, from the seed-pooled rows of :func:`treesearch.compare.pool_seeds`:

- ``accuracy_vs_compute.png``: accuracy (solid, 95% Wilson CI bars) and coverage (dashed)
  against realised compute per problem, log x;
- ``coverage_vs_accuracy.png``: each algorithm x budget as a point; the distance below the
  diagonal is the selection gap (coverage the verifier failed to turn into accuracy);
- ``token_efficiency.png``: accuracy per 1k counted tokens (policy + PRM) against the budget;
- ``verifier_vs_accuracy.png``: mean verifier score of the chosen answer against its true
  accuracy; points far right of the diagonal are a verifier being exploited.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from treesearch.compare import COLUMNS, label, pool_seeds

FIGURES = (
    ("accuracy_vs_compute.png", "Accuracy vs compute"),
    ("coverage_vs_accuracy.png", "Coverage vs accuracy"),
    ("token_efficiency.png", "Token efficiency"),
    ("verifier_vs_accuracy.png", "Verifier score vs true accuracy"),
)


def _by_algorithm(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: (label(r), r["budget"])):
        out.setdefault(label(r), []).append(r)
    return out


class _Figures:
    """The four figures of a comparison, one method each (:func:`plot`)."""

    def __init__(self, rows: list[dict[str, Any]], out: Path, title: str):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt, self.out, self.title = plt, out, title
        self.pooled = pool_seeds(rows)
        self.groups = _by_algorithm(self.pooled)
        self.unit = self.pooled[0]["budget_unit"] if self.pooled else "budget"
        self.colors = {a: f"C{i}" for i, a in enumerate(self.groups)}
        self.paths: list[Path] = []

    def finish(
        self, fig: Any, ax: Any, name: str, labels: tuple[str, str, str], square: bool, ncol: int = 1
    ) -> None:
        """Labels (x, y, title), legend and grid, then saves; ``square``: both axes are
        fractions in [0, 1]."""
        xlabel, ylabel, title = labels
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if square:
            ax.set_xlim(0, 1.02)
            ax.set_ylim(0, 1.02)
        ax.set_title(title)
        ax.legend(fontsize=7, ncol=ncol)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(self.out / name, dpi=110)
        self.plt.close(fig)
        self.paths.append(self.out / name)

    def accuracy_vs_compute(self) -> None:
        fig, ax = self.plt.subplots(figsize=(6.4, 4.4))
        for algo, rs in self.groups.items():
            x, y, c = [r["realised_mean"] for r in rs], [r["accuracy"] for r in rs], self.colors[algo]
            err = [
                [r["accuracy"] - r["accuracy_lo"] for r in rs],
                [r["accuracy_hi"] - r["accuracy"] for r in rs],
            ]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=c, label=f"{algo} accuracy")
            ax.plot(
                x, [r["coverage"] for r in rs], "--", marker="x", color=c, alpha=0.6, label=f"{algo} coverage"
            )
        front = sorted((r for r in self.pooled if r.get("frontier")), key=lambda r: r["realised_mean"])
        if front:  # the accuracy-vs-compute frontier (treesearch.compare.mark_frontier)
            ax.step([r["realised_mean"] for r in front], [r["accuracy"] for r in front], where="post",
                    color="black", lw=1, alpha=0.7, label="frontier")  # fmt: skip
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        labels = (f"realised {self.unit} per problem (log)", "fraction of problems",
                  f"Accuracy (95% CI) and coverage vs compute{self.title}")  # fmt: skip
        self.finish(fig, ax, FIGURES[0][0], labels, square=False, ncol=2)

    def coverage_vs_accuracy(self) -> None:
        fig, ax = self.plt.subplots(figsize=(5.2, 4.6))
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, label="no selection gap")
        for algo, rs in self.groups.items():
            ax.scatter(
                [r["coverage"] for r in rs], [r["accuracy"] for r in rs], color=self.colors[algo], label=algo
            )
            for r in rs:
                ax.annotate(f"{r['budget']:g}", (r["coverage"], r["accuracy"]), fontsize=6,
                            xytext=(3, -8), textcoords="offset points")  # fmt: skip
        labels = ("coverage (a correct chain exists in the tree)", "accuracy (the chosen answer is correct)",
                  "Coverage vs accuracy (labels: budget)")  # fmt: skip
        self.finish(fig, ax, FIGURES[1][0], labels, square=True)

    def token_efficiency(self) -> None:
        fig, ax = self.plt.subplots(figsize=(6.4, 4.2))
        for algo, rs in self.groups.items():
            ax.plot([r["budget"] for r in rs], [r["accuracy_per_1k_tokens"] for r in rs], marker="o",
                    color=self.colors[algo], label=algo)  # fmt: skip
        ax.set_xscale("log")
        labels = (f"budget ({self.unit} per problem, log)", "accuracy per 1k tokens (policy + PRM)",
                  "Token efficiency")  # fmt: skip
        self.finish(fig, ax, FIGURES[2][0], labels, square=False)

    def calibration(self) -> None:
        fig, ax = self.plt.subplots(figsize=(5.2, 4.6))
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, label="calibrated")
        for algo, rs in self.groups.items():
            x, y = [r["chosen_score_mean"] for r in rs], [r["accuracy"] for r in rs]
            ax.scatter(x, y, color=self.colors[algo], label=algo)
        labels = (
            "mean verifier score of the chosen answer",
            "true accuracy",
            "Verifier score vs true accuracy",
        )
        self.finish(fig, ax, FIGURES[3][0], labels, square=True)


def plot(rows: list[dict[str, Any]], out: Path, title: str = "") -> list[Path]:
    """Writes the four PNGs into ``out``; returns their paths."""
    figures = _Figures(rows, out, title)
    figures.accuracy_vs_compute()
    figures.coverage_vs_accuracy()
    figures.token_efficiency()
    figures.calibration()
    return figures.paths


def _table(rows: list[dict[str, Any]]) -> str:
    cols = [c for c in COLUMNS if c != "seed"] + ["seeds"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"<td>{v:.4g}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def write_report(rows: list[dict[str, Any]], out: Path, command: str, note: str = "") -> Path:
    """Plots, then ``report.html`` with the PNGs inlined (base64) and the pooled table."""
    paths = plot(rows, out)
    figures = "".join(
        f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{html.escape(t)}</figcaption></figure>'
        for p, (_, t) in zip(paths, FIGURES, strict=True)
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>treesearch comparison</title>
<style>body{{font:14px system-ui,sans-serif;margin:24px}}figure{{display:inline-block;margin:8px}}
table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}
code{{background:#f4f4f4;padding:2px 4px}}</style></head><body>
<h1>Search algorithms at matched compute</h1>
<p><code>{html.escape(command)}</code></p><p>{html.escape(note)}</p>
{figures}
<h2>Seeds pooled (95% Wilson intervals over problems x seeds)</h2>{_table(pool_seeds(rows))}
<p>Per-seed rows: comparison.csv / comparison.json. Run dirs: runs/.</p></body></html>
"""
    path = out / "report.html"
    path.write_text(page)
    return path
