"""Make docs/downstream_frames.png from a downstream experiment's frame sets: what the anomaly
classifiers were tested and trained on. One row per anomaly; the first frames of that anomaly in
each set, in file order (not chosen by score): the abnormal *test* frames the phantom renders for
unseen patients, the upper bound's training frames (rendered for training patients), and the
synthetic arm's training frames (RePaint edits of real training frames) each beside its source.

    .venv/bin/python docs/make_downstream_figure.py OUT.png ROW_DIR [--per 2] [--scale 3]

ROW_DIR: ``{paths.runs}/experiments/fetalflex_downstream/<row>`` (abnormal-test/, rendered-abnormal-train/,
synth-abnormal/).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from PIL import Image, ImageDraw

PAD = 4


def _first(rows: list[dict], anomaly: str, k: int) -> list[dict]:
    return [r for r in rows if r.get("anomaly") == anomaly][:k]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("row", type=Path)
    ap.add_argument("--per", type=int, default=2, help="frames per set and anomaly")
    ap.add_argument("--scale", type=int, default=3)
    a = ap.parse_args()
    test = list(csv.DictReader((a.row / "abnormal-test" / "manifest.csv").open()))
    upper_dir = a.row / "rendered-abnormal-train"
    upper = list(csv.DictReader((upper_dir / "manifest.csv").open())) if (upper_dir / "manifest.csv").is_file() else []
    synth = [r for r in csv.DictReader((a.row / "synth-abnormal" / "pairs.csv").open()) if r["anomaly"] and not r.get("sham_of")]
    anomalies = list(dict.fromkeys(r["anomaly"] for r in test))
    w, h = Image.open(a.row / "abnormal-test" / test[0]["image"]).size
    tw, th = w * a.scale, h * a.scale
    groups = [("test (unseen patients)", a.per), ("upper bound: rendered, training patients", a.per),
              ("synthetic: source -> edited", 2 * a.per)]
    cols = sum(n for _, n in groups)
    left, head = 120, 18
    canvas = Image.new("RGB", (left + cols * (tw + PAD) + PAD, head + len(anomalies) * (th + PAD) + PAD), "white")
    draw = ImageDraw.Draw(canvas)
    x = left
    for label, n in groups:
        draw.text((x + PAD, 3), label, fill="black")
        x += n * (tw + PAD)
    for i, name in enumerate(anomalies):
        y = head + PAD + i * (th + PAD)
        draw.text((4, y + th // 2 - 6), name, fill="black")
        tiles = [a.row / "abnormal-test" / r["image"] for r in _first(test, name, a.per)]
        tiles += [None] * (a.per - len(tiles))
        up = [upper_dir / r["image"] for r in _first(upper, name, a.per)]
        tiles += up + [None] * (a.per - len(up))
        syn = []
        for r in _first(synth, name, a.per):
            syn += [a.row / "synth-abnormal" / r["source"], a.row / "synth-abnormal" / r["edited"]]
        tiles += syn + [None] * (2 * a.per - len(syn))
        for j, p in enumerate(tiles):
            if p is None:
                continue
            im = Image.open(p).convert("RGB").resize((tw, th), Image.NEAREST)
            canvas.paste(im, (left + PAD + j * (tw + PAD), y))
    canvas.save(a.out)
    print(f"{a.out}: {len(anomalies)} anomalies, {a.per} frames a set")


if __name__ == "__main__":
    main()
