"""Make docs/synthesis_quality.png from synthesis run folders of the same layouts: layouts chosen
evenly over the run (not by score), each row the real frame the layout came from, its layout, then
sample 0 of every run given (e.g. without and with ``synthesis.anchor``), labelled above.

    .venv/bin/python docs/make_synthesis_figure.py OUT.png RUN_DIR[=LABEL] RUN_DIR[=LABEL] ... [--rows 6] [--scale 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PAD = 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("runs", nargs="+", help="synthesis run folders, optionally =LABEL")
    ap.add_argument("--rows", type=int, default=6)
    ap.add_argument("--scale", type=int, default=3)
    a = ap.parse_args()
    runs = [(Path(r.split("=", 1)[0]), r.split("=", 1)[1] if "=" in r else Path(r).name) for r in a.runs]
    common = sorted(set.intersection(*[{d.name for d in (r / "layouts").iterdir() if (d / "sample_0.png").is_file()}
                                       for r, _ in runs]))
    if not common:
        raise SystemExit("the run folders share no finished layout")
    pick = [common[i] for i in np.linspace(0, len(common) - 1, min(a.rows, len(common))).round().astype(int)]
    first = runs[0][0] / "layouts" / pick[0]
    w, h = Image.open(first / "real.png").size
    tw, th = w * a.scale, h * a.scale
    labels = ["real frame", "layout", *[lab for _, lab in runs]]
    head = 18
    canvas = Image.new("RGB", (len(labels) * (tw + PAD) + PAD, head + len(pick) * (th + PAD) + PAD), "white")
    draw = ImageDraw.Draw(canvas)
    for j, lab in enumerate(labels):
        draw.text((PAD + j * (tw + PAD), 3), lab, fill="black")
    for i, name in enumerate(pick):
        tiles = [runs[0][0] / "layouts" / name / "real.png", runs[0][0] / "layouts" / name / "layout.png",
                 *[r / "layouts" / name / "sample_0.png" for r, _ in runs]]
        for j, p in enumerate(tiles):
            im = Image.open(p).convert("RGB").resize((tw, th), Image.NEAREST)
            canvas.paste(im, (PAD + j * (tw + PAD), head + PAD + i * (th + PAD)))
    canvas.save(a.out)
    print(f"{a.out}: layouts {', '.join(pick)}")


if __name__ == "__main__":
    main()
