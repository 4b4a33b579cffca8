#!/usr/bin/env python
"""Give the plotly figures already stored in notebooks their static image, without re-running the notebooks.

    python tools/add_static_figures.py nbs/07_knn_tfidf.ipynb [more notebooks]

Each output that holds plotly JSON and no image gets the image `shopee_nb.core.figure_bundle` would have stored
had the notebook run after `report_setup` (rendered from that same JSON, offline: kaleido + the system Chromium).
Outputs and cell ids are otherwise untouched. Re-executing the notebook is the better fix when it is cheap.
"""
from __future__ import annotations
import json, sys
from pathlib import Path

PLOTLY = 'application/vnd.plotly.v1+json'
IMAGES = ('image/png', 'image/jpeg', 'image/svg+xml')


def add_static_figures(path: Path) -> int:
    "Add static images to `path`'s plotly outputs that lack one; return how many were added."
    from shopee_nb.core import figure_bundle
    nb = json.loads(Path(path).read_text())
    n = 0
    for cell in nb['cells']:
        for out in cell.get('outputs', []):
            data = out.get('data', {})
            if PLOTLY not in data or any(m in data for m in IMAGES): continue
            new, md = figure_bundle(data[PLOTLY], static=True)
            added = [m for m in IMAGES if m in new]
            if not added: raise RuntimeError(f"{path}: could not render a static image (is kaleido installed, and Chromium?)")
            for m in added + ['text/plain']: data[m] = new[m]
            out.setdefault('metadata', {}).update(md)
            n += 1
    if n: Path(path).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
    return n


if __name__ == '__main__':
    for p in sys.argv[1:]: print(f'{p}: {add_static_figures(Path(p))} figure(s) given a static image')
