"""Self-contained HTML reports: matplotlib figures embedded as base64 PNG, no network needed to view."""
from __future__ import annotations

import base64
import html
import io
import json
from typing import Any, Iterable


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


def table_html(rows: Iterable[tuple[str, Any]]) -> str:
    cells = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows
    )
    return f"<table>{cells}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def page(title: str, sections: Iterable[tuple[str, str]]) -> str:
    """A whole HTML page. ``sections`` are (heading, inner HTML); images as ``<img src=data:...>``."""
    body = "".join(f"<section><h2>{html.escape(h)}</h2>{inner}</section>" for h, inner in sections)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}"
        "img{max-width:100%}section{margin-bottom:2em}"
        f"</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )


def img_html(data_uri: str, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='{data_uri}'>"
