"""Make docs/demo_frames.png from a counterfactual run folder: a few frames chosen evenly over the
run (not by score), each row input -> every iteration -> (with cf.sparse: the dense counterfactual)
-> counterfactual -> explanation map (x_c - x: red brighter, blue darker, white unchanged) ->
ground-truth target, and the same frames from a control run (lambda_c = 0) when one is given.

    .venv/bin/python docs/make_demo_figure.py RUN_DIR [CONTROL_RUN_DIR] [--rows 5] [--scale 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from diffice.report.html import pick_frames
from diffice.report.records import difference_map, load_records

PAD = 4


def _tile(path: Path | Image.Image, scale: int) -> Image.Image:
    im = path if isinstance(path, Image.Image) else Image.open(path).convert("RGB")
    return im.resize((im.width * scale, im.height * scale), Image.NEAREST)


def _explanation(d: Path) -> Image.Image:
    grey = [np.asarray(Image.open(d / n).convert("L")) for n in ("input.png", "cf.png")]
    return Image.fromarray(difference_map(*grey))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("control", nargs="?")
    p.add_argument("--rows", type=int, default=5)
    p.add_argument("--scale", type=int, default=3)
    p.add_argument("--out", default=str(Path(__file__).with_name("demo_frames.png")))
    ns = p.parse_args()
    run = Path(ns.run)
    recs = pick_frames(load_records(run), ns.rows)
    most = max(int(r["iterations"]) for r in recs)  # adaptive stopping: a frame that stopped early gets blanks
    rows = []
    for r in recs:
        d = run / "frames" / f"{int(r['index']):06d}"
        size = Image.open(d / "input.png").size
        names = [d / "input.png"] + [d / f"iter{k}.png" if k <= int(r["iterations"]) else Image.new("RGB", size, (255, 255, 255))
                                     for k in range(1, most + 1)]
        caps = ["input"] + [f"iter {k}" for k in range(1, most + 1)]
        if (d / "dense.png").exists():
            names.append(d / "dense.png")
            caps.append("dense cf")
        names += [d / "cf.png", _explanation(d)]
        caps += ["counterfactual", "explanation map"]
        if ns.control:
            names.append(Path(ns.control) / "frames" / d.name / "cf.png")
            caps.append("control (lambda_c = 0)")
        if (d / "target.png").exists():
            names.append(d / "target.png")
            caps.append("ground truth")
        tiles = [_tile(n, ns.scale) for n in names]
        flag = " ADVERSARIAL" if r.get("adversarial") else ""
        label = (f"#{int(r['index'])} p(SP) {r['p_input']:.2f}->{r['p_cf']:.2f}"
                 f" QS_O {r['qs_input']:.2f}->{r['qs_cf']:.2f}{flag}")
        if r.get("p_brain_cf") is not None:  # real frames: the authors' SonoNet-16 and the biometry
            label += f" SonoNet brain {r['p_brain_input']:.2f}->{r['p_brain_cf']:.2f}"
            if r.get("hc_cf_mm") is not None and r.get("hc_target_mm") is not None:
                label += f" HC {r['hc_cf_mm']:.0f}/{r['hc_target_mm']:.0f} mm"
        rows.append((tiles, caps, label))
    w, h = rows[0][0][0].size
    ncol = max(len(t) for t, _, _ in rows)
    head = 14
    canvas = Image.new("RGB", (ncol * (w + PAD) + PAD, head + len(rows) * (h + PAD + head) + PAD), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    longest = max(rows, key=lambda row: len(row[1]))[1]
    for j, cap in enumerate(longest):
        draw.text((PAD + j * (w + PAD), 2), cap, fill=(0, 0, 0))
    y = head
    for tiles, _, label in rows:
        draw.text((PAD, y), label, fill=(0, 0, 0))
        y += head
        for j, t in enumerate(tiles):
            canvas.paste(t, (PAD + j * (w + PAD), y))
        y += h + PAD
    canvas.save(ns.out)
    print(f"{ns.out}: {len(rows)} frames from {run}" + (f" (control {ns.control})" if ns.control else ""))


if __name__ == "__main__":
    main()
