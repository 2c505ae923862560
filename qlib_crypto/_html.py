"""Self-contained HTML reports: no network needed to view them.

Interactive figures are plotly figures (the library Qlib's ``qlib.contrib.report`` draws with); plotly.js is
embedded inline once per page. Static figures (the cost sweep) are matplotlib PNGs embedded as base64.
Figures get fixed element ids, so the same inputs give the same bytes.
"""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any, Iterable, Sequence

#: plotly's per-figure options: no logo, no link to an online editor, resize with the page
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True, "showLink": False, "showSendToCloud": False}

#: a slim plotly layout used by every figure of the reports (instead of plotly's large default template)
PLOTLY_LAYOUT = {
    "template": "none",
    "paper_bgcolor": "white",
    "plot_bgcolor": "white",
    "font": {"family": "system-ui, sans-serif", "size": 12, "color": "#222"},
    "margin": {"l": 70, "r": 30, "t": 50, "b": 50},
    "hovermode": "x unified",
    "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0},
}
AXIS_STYLE = {"showgrid": True, "gridcolor": "#e5e5e5", "zeroline": True, "zerolinecolor": "#999", "linecolor": "#999"}

COLORS = {
    "strategy": "#1f77b4",
    "gross": "#9ecae1",
    "benchmark": "#7f7f7f",
    "excess": "#2ca02c",
    "excess_gross": "#98df8a",
    "loss": "#d62728",
    "gain": "#2ca02c",
    "turnover": "#ff7f0e",
    "other": "#9467bd",
}


# ------------------------------------------------------------------------------------------- matplotlib
def figure_to_data_uri(fig: Any) -> str:
    """Render a matplotlib figure to a ``data:image/png;base64,...`` URI and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def new_figure(width: float = 9.0, height: float = 3.2):
    """A (fig, ax) pair on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def img_html(data_uri: str, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='{data_uri}'>"


# ----------------------------------------------------------------------------------------------- plotly
def style_figure(fig: Any, *, title: str | None = None, height: int | None = None) -> Any:
    """Apply the reports' layout (slim template, white background, horizontal legend) to a plotly figure."""
    fig.update_layout(**PLOTLY_LAYOUT)
    if title is not None:  # the title above the legend, the legend above the plot
        fig.update_layout(
            title={
                "text": title,
                "x": 0,
                "xanchor": "left",
                "yref": "container",
                "y": 0.99,
                "yanchor": "top",
                "font": {"size": 14},
            },
            margin={"t": 85},
        )
    if height is not None:
        fig.update_layout(height=height)
    fig.update_xaxes(**AXIS_STYLE)
    fig.update_yaxes(**AXIS_STYLE)
    return fig


def graph_figure(kind: str, df: Any, layout: dict | None = None, graph_kwargs: dict | None = None) -> Any:
    """The figure ``qlib.contrib.report.graph``'s ``ScatterGraph`` / ``BarGraph`` / ``HeatmapGraph`` (``kind``:
    ``Scatter``, ``Bar``, ``Heatmap``) draws of ``df``: one trace per column over the index (a heatmap: one
    trace of the whole frame), ``layout`` as ``go.Layout`` kwargs, no template.

    Same figure as Qlib's classes (``tests/test_training_report.py`` compares them), without importing that
    module: its ``plotly.figure_factory`` import loads plotly's widget, nbformat and jsonschema (with its
    IRI grammars), about 3 s in every process that draws a report."""
    import plotly.graph_objects as go

    if df.empty:
        raise ValueError("df is empty.")
    kwargs = graph_kwargs or {}
    trace = getattr(go, kind)
    if kind == "Heatmap":
        data = [trace(x=df.columns, y=df.index, z=df.values.tolist(), **kwargs)]
    else:
        data = [trace(x=df.index, y=df[col], name=col, **kwargs) for col in df.columns]
    fig = go.Figure(data=data, layout=go.Layout(**(layout or {})))
    fig["layout"].update(template=None)
    return fig


def plotly_div(fig: Any, div_id: str, *, height: int | None = None) -> str:
    """A plotly figure as an HTML fragment (a ``div`` with class ``plotly-graph-div`` and its script); needs
    the page to load plotly.js (:func:`page` embeds it when a section holds a figure)."""
    import plotly.io as pio

    h = height or int(fig.layout.height or 420)
    if fig.layout.height is None:
        fig.update_layout(height=h)
    in_legend = sum(1 for t in fig.data if t.showlegend is not False)
    legend = fig.layout.showlegend is True or (fig.layout.showlegend is None and in_legend > 1)
    if not legend and fig.layout.margin.t is not None and fig.layout.margin.t > 60:
        fig.update_layout(margin={"t": 55})  # no legend between the title and the plot
    return pio.to_html(
        fig,
        include_plotlyjs=False,
        full_html=False,
        div_id=div_id,
        config=PLOTLY_CONFIG,
        default_width="100%",
        default_height=f"{h}px",
        validate=False,
    )


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


# ----------------------------------------------------------------------------------------------- tables
def table_html(rows: Iterable[tuple[str, Any]]) -> str:
    """A two-column key / value table."""
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows)
    return f"<table class='kv'>{cells}</table>"


def grid_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    numeric_from: int = 1,
    numeric_to: int | None = None,
    row_classes: Sequence[str] | None = None,
    table_class: str = "grid",
    notes: Sequence[str] = (),
) -> str:
    """A table with a header row; cells are text (already formatted), columns ``numeric_from`` to
    ``numeric_to`` (exclusive; default: the last) right-aligned. ``notes`` go under the table."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = []
    stop = numeric_to if numeric_to is not None else len(headers)
    for i, row in enumerate(rows):
        cls = f" class='{row_classes[i]}'" if row_classes and row_classes[i] else ""
        cells = "".join(
            f"<td{' class=num' if numeric_from <= j < stop else ''}>{html.escape(_fmt(c))}</td>"
            for j, c in enumerate(row)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    note = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in notes)
    return f"<table class='{table_class}'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{note}"


def wide(inner: str) -> str:
    """A wide table in a horizontally scrolling box (the page keeps its width)."""
    return f"<div class='wide'>{inner}</div>"


def cards(items: Iterable[tuple[str, str, str]]) -> str:
    """Headline numbers: (label, formatted value, tone) with tone ``pos``, ``neg`` or ``""``."""
    out = []
    for label, value, tone in items:
        out.append(
            f"<div class='card {html.escape(tone)}'><div class='label'>{html.escape(label)}</div>"
            f"<div class='value'>{html.escape(value)}</div></div>"
        )
    return f"<div class='cards'>{''.join(out)}</div>"


def paragraph(text: str, cls: str = "") -> str:
    return f"<p{f' class={cls!r}' if cls else ''}>{html.escape(text)}</p>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        from ._format import plain

        return plain(value)  # never scientific notation
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def tone(value: Any) -> str:
    """``pos`` / ``neg`` / ``""`` for a number's sign (for coloured cells and cards)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return ""
    return "pos" if x > 0 else ("neg" if x < 0 else "")


# ------------------------------------------------------------------------------------------------- page
_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1180px;margin:1.5em auto;padding:0 1em;color:#222}"
    "h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em}"
    "table{border-collapse:collapse;margin:.5em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:3px 8px;"
    "text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}thead th{background:#f3f3f3}"
    "table.kv th{background:#f7f7f7;font-weight:600}tr.total td{font-weight:600;background:#f7f7f7}"
    "img{max-width:100%}section{margin-bottom:2em}p.note{color:#555;font-size:.88em;margin:.3em 0}"
    "p.sub{color:#555;margin-top:0}nav{font-size:.9em;margin:.5em 0 1.5em}nav a{margin-right:.9em}"
    ".cards{display:flex;flex-wrap:wrap;gap:.6em;margin:1em 0}.card{border:1px solid #ddd;border-radius:6px;"
    "padding:.5em .9em;min-width:9em}.card .label{font-size:.8em;color:#555}.card .value{font-size:1.3em;"
    "font-weight:600;font-variant-numeric:tabular-nums}.card.pos .value{color:#1a7f37}.card.neg .value{color:#c62828}"
    "p.explain{background:#f6f8fa;border-left:4px solid #1f77b4;padding:.6em .9em}"
    "div.wide{overflow-x:auto;max-width:100%}div.wide table{font-size:.85em}div.wide td{white-space:nowrap}"
)


def page(
    title: str,
    sections: Iterable[tuple[str, str] | tuple[str, str, str]],
    *,
    subtitle: str | None = None,
    nav: bool = False,
) -> str:
    """A whole HTML page. ``sections`` are (heading, inner HTML) or (heading, inner HTML, anchor id).

    Pages with plotly figures embed plotly.js inline (no network); ``nav`` adds links to the sections."""
    secs = []
    for i, sec in enumerate(sections):
        heading, inner = sec[0], sec[1]
        anchor = sec[2] if len(sec) > 2 else f"s{i + 1}"
        secs.append((heading, inner, anchor))
    body = "".join(f"<section id='{html.escape(a)}'><h2>{html.escape(h)}</h2>{inner}</section>" for h, inner, a in secs)
    links = ""
    if nav:
        links = "<nav>" + "".join(f"<a href='#{html.escape(a)}'>{html.escape(h)}</a>" for h, _, a in secs) + "</nav>"
    script = ""
    if "plotly-graph-div" in body:
        script = f"<script type='text/javascript'>{_plotly_js()}</script>"
    sub = f"<p class='sub'>{html.escape(subtitle)}</p>" if subtitle else ""
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>{script}</head>"
        f"<body><h1>{html.escape(title)}</h1>{sub}{links}{body}</body></html>"
    )
