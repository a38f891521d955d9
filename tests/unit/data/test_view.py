"""The split made visible: the text table and the SVG heatmap."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from fedgrpc.data import (
    format_partition,
    parse_partition,
    partition_labels,
    partition_svg,
    write_partition_svg,
)

LABELS = np.repeat(np.arange(3), [50, 30, 20])
SVG = "{http://www.w3.org/2000/svg}"


def test_table_lists_each_clients_label_counts_size_and_total() -> None:
    part = partition_labels(LABELS, 2, parse_partition("dirichlet:0.5"), seed=1,
                            label_names=["cat", "dog", "<eel>"])  # fmt: skip

    lines = format_partition(part).splitlines()

    assert lines[0].startswith("partition dirichlet:0.5 over 2 clients, 3 labels")
    assert lines[1].split() == ["client", "cat", "dog", "<eel>", "size", "H(nats)"]
    for i in range(2):
        cells = lines[2 + i].split()
        assert cells[:2] == ["client", str(i)]
        assert [int(c) for c in cells[2:5]] == part.counts[i].tolist()
        assert int(cells[5]) == part.sizes[i]
        assert float(cells[6]) == round(float(part.label_entropy()[i]), 2)
    assert lines[4].split() == ["total", "50", "30", "20", "100"]


def test_table_with_many_labels_turns_to_one_row_per_label() -> None:
    labels = np.arange(40) % 20  # 20 labels > MAX_LABEL_COLUMNS
    part = partition_labels(labels, 3, parse_partition("iid"), seed=0)

    lines = format_partition(part).splitlines()

    assert lines[1].split() == ["label", "client", "0", "client", "1", "client", "2",
                                "total"]  # fmt: skip
    assert len(lines) == 2 + 20 + 2  # title, header, labels, size, entropy
    row = lines[2 + 7].split()  # label 7
    assert row == ["7", *(str(c) for c in part.counts[:, 7]), "2"]
    assert lines[-2].split() == ["size", *(str(s) for s in part.sizes), "40"]


def test_svg_is_well_formed_with_one_cell_per_client_and_label(tmp_path: Path) -> None:
    part = partition_labels(LABELS, 4, parse_partition("iid"), seed=0,
                            label_names=["a&b", "dog", "<eel>"])  # fmt: skip

    path = write_partition_svg(part, tmp_path / "split.svg")

    root = ET.parse(path).getroot()  # parses: names are escaped
    assert root.tag == f"{SVG}svg"
    rects = root.findall(f"{SVG}rect")
    assert len(rects) == 4 * 3 + 4  # a cell per (client, label), a size bar per client
    texts = [t.text for t in root.findall(f"{SVG}text")]
    assert {"a&b", "dog", "<eel>"} <= set(texts)
    assert path.read_text() == partition_svg(part)


def test_svg_shades_a_single_label_client_darkest() -> None:
    labels = np.array([0] * 10 + [1] * 10)
    part = partition_labels(labels, 2, parse_partition("dirichlet:0.001"), seed=0)

    root = ET.fromstring(partition_svg(part))

    fills = [r.get("fill") for r in root.findall(f"{SVG}rect")]
    assert "rgb(8,48,107)" in fills  # 100 % of a client's samples in one label
    assert "rgb(255,255,255)" in fills  # and 0 % in the other
