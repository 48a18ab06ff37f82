"""The verify report as JSON (for ``raymesh mesh --repair`` and scripts) and as one self-contained
HTML page (plots drawn with matplotlib, embedded as PNG; nothing loaded from the network)."""

from __future__ import annotations

import base64
import html
import io
import json

from raymesh.verify.checks import KINDS
from raymesh.verify.runner import VerifyReport

MAX_ROWS = 500  # problems listed in the HTML table (the JSON has them all)


def to_json(report: VerifyReport) -> str:
    return json.dumps(report.to_dict(), indent=1)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def plots(report: VerifyReport) -> list[tuple[str, str]]:
    """``(title, base64 PNG)`` for each picture that says more than a number."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    layers = [t.layer for t in report.layers]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].bar([str(v) for v in layers], [t.bytes / 2**20 for t in report.layers], color="#4c72b0")
    axes[0].set(title="shard bytes per layer", xlabel="layer", ylabel="MiB")
    kinds = sorted(report.by_kind())
    bottom = [0] * len(layers)
    for i, kind in enumerate(kinds):
        counts = [sum(1 for p in report.problems if p.kind == kind and p.layer == layer) for layer in layers]
        axes[1].bar([str(v) for v in layers], counts, bottom=bottom, label=kind, color=plt.cm.tab10(i % 10))
        bottom = [b + c for b, c in zip(bottom, counts)]
    axes[1].set(title="problems per layer", xlabel="layer", ylabel="problems")
    if kinds:
        axes[1].legend(fontsize=7)
    else:
        axes[1].text(0.5, 0.5, "none", ha="center", va="center", transform=axes[1].transAxes, fontsize=14)
    fig.tight_layout()
    out.append(("Layers", _png(fig)))
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    frags = report.root_fragments or [0]
    lo, hi = min(frags), max(frags)
    step = max(1, -(-(hi - lo + 1) // 30))
    axes[0].hist(frags, bins=list(range(lo, hi + step + 1, step)), color="#55a868", align="left", rwidth=0.9)
    axes[0].set(title=f"fragments a viewer loads per root ({report.roots_checked} roots)",
                xlabel="fragments", ylabel="roots")
    worst = sorted(report.chunk_problems.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    if worst:
        axes[1].barh([k for k, _ in worst][::-1], [v for _, v in worst][::-1], color="#c44e52")
    else:
        axes[1].text(0.5, 0.5, "none", ha="center", va="center", transform=axes[1].transAxes, fontsize=14)
    axes[1].set(title="worst chunks (layer/x_y_z)", xlabel="problems")
    fig.tight_layout()
    out.append(("Roots and chunks", _png(fig)))
    plt.close(fig)
    return out


def to_html(report: VerifyReport) -> str:
    e = html.escape
    n = len(report.problems)
    status = "complete and sound" if report.ok else f"{n} problem{'s' if n != 1 else ''}"
    rows = "".join(
        f"<tr><td>{e(p.kind)}</td><td>{'' if p.layer is None else p.layer}</td>"
        f"<td>{'' if p.chunk is None else e(str(p.chunk))}</td><td>{'' if p.node is None else p.node}</td>"
        f"<td>{e(p.detail)}</td></tr>" for p in report.problems[:MAX_ROWS])
    more = (f"<p>{len(report.problems) - MAX_ROWS} more in the JSON report.</p>"
            if len(report.problems) > MAX_ROWS else "")
    layer_rows = "".join(
        f"<tr><td>{t.layer}</td><td>{t.chunks}</td><td>{t.expected}</td><td>{t.fragments}</td>"
        f"<td>{t.bytes}</td><td>{t.problems}</td></tr>" for t in report.layers)
    kinds = "".join(f"<li><b>{e(k)}</b> ({n}): {e(KINDS[k])}</li>" for k, n in sorted(report.by_kind().items()))
    pictures = "".join(f"<h2>{e(title)}</h2><img alt='{e(title)}' src='data:image/png;base64,{png}'>"
                       for title, png in plots(report))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>raymesh verify: {e(status)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;font-size:90%}} .ok{{color:#2a7}} .bad{{color:#c33}}</style>
</head><body>
<h1 class="{'ok' if report.ok else 'bad'}">{e(status)}</h1>
<p>Meshes {e(report.mesh_path)} of graph {e(report.graph)}; {report.sample:.0%} of chunks checked,
{report.roots_checked} roots as a viewer loads them ({report.roots_closed} of {report.roots_interior} interior
objects closed), {report.dynamic_checked} nodes made by edits; {report.seconds:.1f} s.</p>
<ul>{kinds}</ul>
<table><tr><th>layer</th><th>chunks</th><th>nodes to mesh</th><th>fragments</th><th>bytes</th><th>problems</th></tr>
{layer_rows}</table>
{pictures}
<h2>Problems</h2>
<table><tr><th>kind</th><th>layer</th><th>chunk</th><th>node</th><th>detail</th></tr>{rows}</table>{more}
</body></html>
"""
