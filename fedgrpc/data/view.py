"""The split made visible: a text table for the terminal, an SVG heatmap for a file.

Both read only a `Partition`'s counts. The table is returned as text
(library code prints nothing; `fedgrpc simulate` writes it on its own
output). The SVG is written by hand, a few rect and text elements, so
plotting needs no matplotlib.
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from fedgrpc.data.partition import Partition

_CELL = 28
"""SVG cell side in px: room for a 4-digit count in 9 px type."""
_LEFT, _TOP = 70, 90
"""Margins for the client names (left) and the rotated label names (top)."""
_BAR = 120
"""Width of the per-client size bar to the right of the heatmap, px."""


MAX_LABEL_COLUMNS = 12
"""Beyond this many labels the table turns: one row per label, one column
per client, so it stays readable in a terminal (the char-LM has ~18)."""


def format_partition(partition: Partition) -> str:
    """Clients x labels sample counts, each client's size and label entropy.

    One row per client plus a total column; columns are the labels (rows,
    when there are more than `MAX_LABEL_COLUMNS`). The first line states
    the spec, so a pasted table says how it was made.
    """
    counts, names = partition.counts, partition.label_names
    entropy = partition.label_entropy()
    clients = [f"client {i}" for i in range(partition.num_clients)]
    # grid[i][k]: client i's count of label k, then its size and entropy.
    grid = [
        [*(str(int(c)) for c in counts[i]), str(int(partition.sizes[i])),
         f"{entropy[i]:.2f}"]
        for i in range(partition.num_clients)
    ]  # fmt: skip
    total = [*(str(int(c)) for c in counts.sum(axis=0)), str(len(partition.labels)), ""]
    columns = [*names, "size", "H(nats)"]
    if len(names) <= MAX_LABEL_COLUMNS:
        table = [
            ["client", *columns],
            *([c, *g] for c, g in zip(clients, grid, strict=True)),
        ]
        table.append(["total", *total])
    else:
        rows = [list(r) for r in zip(columns, *grid, total, strict=True)]
        table = [["label", *clients, "total"], *rows]
    widths = [max(len(row[k]) for row in table) for k in range(len(table[0]))]
    lines = [
        f"partition {partition.spec} over {partition.num_clients} clients, "
        f"{len(names)} labels (H: label entropy in nats, ln {len(names)} = "
        f"{np.log(len(names)):.2f} if uniform)"
    ]
    lines += [
        "  ".join(cell.rjust(w) if k else cell.ljust(w) for k, (cell, w) in
                  enumerate(zip(row, widths, strict=True))).rstrip()
        for row in table
    ]  # fmt: skip
    return "\n".join(lines)


def partition_svg(partition: Partition) -> str:
    """The split as an SVG heatmap: one row per client, one column per label.

    A cell's shade is the label's share of that client's samples (row
    normalised, so a small client's skew shows as clearly as a big one's);
    its text is the count. A bar right of each row is the client's size.
    """
    counts, sizes = partition.counts, partition.sizes
    rows, cols = counts.shape
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    biggest = max(int(sizes.max(initial=0)), 1)
    width = _LEFT + cols * _CELL + 20 + _BAR + 50
    height = _TOP + rows * _CELL + 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="9">',
        f'<text x="4" y="14" font-size="12">{escape(_title(partition))}</text>',
    ]
    for k, name in enumerate(partition.label_names):
        x = _LEFT + k * _CELL + _CELL // 2
        parts.append(
            f'<text x="{x}" y="{_TOP - 4}" transform="rotate(-60 {x} {_TOP - 4})">'
            f"{escape(name)}</text>"
        )
    for i in range(rows):
        y = _TOP + i * _CELL
        parts.append(f'<text x="4" y="{y + _CELL // 2 + 3}">client {i}</text>')
        parts += [
            _cell(_LEFT + k * _CELL, y, shares[i, k], int(counts[i, k]))
            for k in range(cols)
        ]
        bar = max(1, round(_BAR * int(sizes[i]) / biggest))
        x = _LEFT + cols * _CELL + 20
        parts.append(
            f'<rect x="{x}" y="{y + 6}" width="{bar}" height="{_CELL - 12}" '
            'fill="#888"/>'
        )
        parts.append(
            f'<text x="{x + bar + 4}" y="{y + _CELL // 2 + 3}">{int(sizes[i])}</text>'
        )
    parts.append(
        f'<text x="4" y="{height - 12}">shade: share of the client\'s samples; '
        "number: samples; bar: client size</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write_partition_svg(partition: Partition, path: str | Path) -> Path:
    """Write `partition_svg(partition)` to `path` (parents must exist); returns it."""
    target = Path(path)
    target.write_text(partition_svg(partition), encoding="utf-8")
    return target


def _title(partition: Partition) -> str:
    return (
        f"partition {partition.spec}: {partition.num_clients} clients x "
        f"{len(partition.label_names)} labels, {int(partition.sizes.sum())} samples"
    )


def _cell(x: int, y: int, share: float, count: int) -> str:
    """One heatmap cell: white (0 %) to dark blue (100 %), count on top."""
    # Linear blend of white (255, 255, 255) and #08306b (8, 48, 107) by share.
    r, g, b = (round(255 + share * (c - 255)) for c in (8, 48, 107))
    ink = "#fff" if share > 0.5 else "#000"
    text = (
        f'<text x="{x + _CELL // 2}" y="{y + _CELL // 2 + 3}" '
        f'text-anchor="middle" fill="{ink}">{count}</text>'
    )
    rect = (
        f'<rect x="{x}" y="{y}" width="{_CELL}" height="{_CELL}" '
        f'fill="rgb({r},{g},{b})" stroke="#ccc"/>'
    )
    return rect + (text if count else "")
