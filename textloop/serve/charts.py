"""Inline SVG charts for the dashboard, drawn with matplotlib's object API (offline, no JS)."""

from __future__ import annotations

import html
import io
from collections.abc import Sequence

import matplotlib

_RC = {"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
       "axes.spines.right": False}


def line_chart(x: Sequence[str], series: dict[str, Sequence[float | None]], title: str,
               highlight: int | None = None, y_label: str = "") -> str:
    """A small line chart as an <svg> string; None values are gaps; `highlight` circles a point."""
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(5.2, 2.4))
        ax = fig.subplots()
        pos = list(range(len(x)))
        for name, values in series.items():
            ys = [float("nan") if v is None else float(v) for v in values]
            ax.plot(pos, ys, marker="o", markersize=3, label=name)
            if highlight is not None and 0 <= highlight < len(ys):
                ax.plot([highlight], [ys[highlight]], marker="o", markersize=10,
                        fillstyle="none", color="crimson")
        _axes(ax, x, title, y_label, legend=len(series) > 1)
        return _svg(fig)


def _axes(ax: object, x: Sequence[str], title: str, y_label: str, legend: bool) -> None:
    """Ticks (thinned to ~8 labels), title, labels, legend."""
    step = max(1, -(-len(x) // 6))  # at most ~6 labels
    ax.set_xticks(list(range(0, len(x), step)), [x[i] for i in range(0, len(x), step)],
                  rotation=20, ha="right")
    ax.set_title(title)
    ax.set_ylabel(y_label)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7)


def _svg(fig: object) -> str:
    """The figure as an inline <svg> element (XML prolog and DOCTYPE dropped)."""
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg"):]


def empty_chart(message: str) -> str:
    """A placeholder when there is nothing to plot yet."""
    return (f'<svg width="420" height="60" role="img"><text x="10" y="35" fill="#666">'
            f"{html.escape(message)}</text></svg>")
