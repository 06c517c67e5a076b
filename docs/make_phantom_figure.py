"""Make docs/phantom_vs_hc18.png: phantom frames beside real HC18 frames and the SonoNet
BRAIN-TV / BRAIN-CB example frames (realism comparison). Needs ../shared/data.

    .venv/bin/python docs/make_phantom_figure.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from diffice.data import phantom as ph

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
H, W = 224, 288
PAD, TITLE = 6, 16


def _real(path: Path, crop=None) -> np.ndarray:
    im = Image.open(path)
    if crop:
        im = im.crop(crop)
    return np.asarray(im.convert("L").resize((W, H), Image.BILINEAR))


def _phantom_sp_by_age(count: int = 4) -> list[tuple[np.ndarray, str]]:
    """SP frames spread over the gestational-age range (head size, skull thickness)."""
    sp = [i for i in range(600) if ph.sample_frame(i)["sp"]]
    sp.sort(key=lambda i: ph.sample_patient(0, ph.sample_frame(i)["patient"])["ga"])
    picks = [sp[round(k * (len(sp) - 1) / (count - 1))] for k in range(count)]
    out = []
    for i in picks:
        fr = ph.render_frame(i, (H, W))
        out.append((fr["image"], f"phantom SP #{i} (ga {fr['latents']['patient']['ga']:.2f})"))
    return out


def _phantom(kind: str, start: int = 0) -> tuple[np.ndarray, str]:
    for i in range(start, 2000):
        lat = ph.sample_frame(i)
        if (kind == "SP" and lat["sp"]) or lat["faults"] == [kind]:
            fr = ph.render_frame(i, (H, W))
            return fr["image"], f"phantom {kind} #{i}"
    raise ValueError(kind)


def _grid(rows: list[list[tuple[np.ndarray, str]]]) -> Image.Image:
    ncol = max(len(r) for r in rows)
    canvas = Image.new("L", (ncol * (W + PAD) + PAD, len(rows) * (H + TITLE + PAD) + PAD), 255)
    draw = ImageDraw.Draw(canvas)
    for ri, row in enumerate(rows):
        for ci, (img, title) in enumerate(row):
            x, y = PAD + ci * (W + PAD), PAD + ri * (H + TITLE + PAD)
            draw.text((x + 2, y + 2), title, fill=0)
            canvas.paste(Image.fromarray(img), (x, y + TITLE))
    return canvas


def main() -> None:
    hc = sorted((SHARED / "hc18" / "training_set").glob("*HC.png"))
    sono = SHARED / "sononet" / "example_images"
    crop = (81, 115, 874, 734)  # SonoNet preprocessing: drop the vendor text
    rows = [
        _phantom_sp_by_age(),
        [(_real(hc[k]), f"HC18 {hc[k].stem}") for k in (30, 260, 520, 830)],
        [_phantom("ventricular"), (_real(sono / "BRAIN-TV.tiff", crop), "SonoNet BRAIN-TV (real)"),
         _phantom("cerebellar"), (_real(sono / "BRAIN-CB.tiff", crop), "SonoNet BRAIN-CB (real)")],
        [_phantom("no_csp"), _phantom("blur"), _phantom("contrast"), _phantom("noise")],
    ]
    out = ROOT / "docs" / "phantom_vs_hc18.png"
    _grid(rows).save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
