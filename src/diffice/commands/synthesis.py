"""``diffice train-synthesis`` and ``diffice synthesize``: arguments parsed and checked, then the
synthesis engine (:mod:`diffice.synthesis.run`); the ``kind: synthesis`` experiments are
:mod:`diffice.experiments.synthesis`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def cmd_train_synthesis(argv: Sequence[str]) -> int:
    from diffice.config import config_from_args
    from diffice.modules.synthesis import train_synthesis

    p = argparse.ArgumentParser(
        prog="diffice train-synthesis",
        description="Train the layout-conditioned DDPM of FetalFlex-style synthesis (pre-alignment first, then the "
        "diffusion with condition dropout). A run folder holding last.ckpt is resumed.",
    )
    p.add_argument("args", nargs="*", help="config files (*.yaml) and key=value overrides, in order")
    p.add_argument("--folder", default="synthesis", help="run folder under paths.runs (default synthesis), e.g. for an ablation's twin model")
    ns = p.parse_intermixed_args(argv)
    from diffice.errors import UserError

    if not ns.folder or "/" in ns.folder or ns.folder.startswith("."):
        raise UserError(f"--folder {ns.folder!r}: a plain folder name under paths.runs")
    cfg = config_from_args(ns.args)
    last = train_synthesis(cfg, stage=ns.folder)
    print(f"synthesis checkpoint: {last}")
    return 0


def cmd_synthesize(argv: Sequence[str]) -> int:
    import math
    from pathlib import Path

    from diffice.commands.ddpm import _device
    from diffice.config import config_from_args
    from diffice.data.sources import parse_ga, parse_plane
    from diffice.errors import UserError
    from diffice.synthesis import run as R
    from diffice.synthesis.jobs import LayoutJob
    from diffice.synthesis.layouts import anomaly_specs, read_layout
    from diffice.synthesis.summary import summary_lines

    p = argparse.ArgumentParser(
        prog="diffice synthesize",
        description="Synthesise frames whose anatomy follows a layout (--layout MASK.png --count N), edit a frame's anatomy "
        "(--edit FRAME.png --layout EDITED_MASK.png), or evaluate on the data set's test layouts and their edits (--test). "
        "A layout is a PNG of class indices (data.classes; 255 = unspecified) at the model's frame size. "
        "Finished items in --out are kept, so an interrupted run resumes.",
    )
    p.add_argument("ckpt", help="synthesis checkpoint (runs/synthesis/last.ckpt or models/demo/synthesis.ckpt)")
    p.add_argument("args", nargs="*", help="config files (*.yaml) and key=value overrides (synthesis.*, data.* for --test)")
    p.add_argument("--layout", help="layout PNG (class indices) to synthesise, or the edited layout with --edit")
    p.add_argument("--edit", help="frame (PNG) to edit to --layout; outside the changed anatomy it is kept (RePaint)")
    p.add_argument("--source-layout", help="with --edit: the frame's own layout (default: segmented by synthesis.segmenter_ckpt)")
    p.add_argument("--plane", default="", help="trans-thalamic | trans-ventricular | trans-cerebellar (TT / TV / TC); default unknown")
    p.add_argument("--ga", default="", help="gestational age in weeks; default unknown")
    p.add_argument("--hc", default=None, help="synthesise a real head of this circumference in mm: a filled ellipse layout (class head) "
                   "drawn by the options below; without --hc, --ga alone (no --layout) draws Hadlock's mean HC for that age")
    p.add_argument("--pixel-mm", default=None, help="with --hc/--ga: ROW,COLUMN mm per pixel at the model's frame size (default: "
                   "the head as large in pixels as the data set's median training head)")
    p.add_argument("--centre", default="0.5,0.5", help="with --hc/--ga: the head's centre, Y,X as fractions of the frame (default 0.5,0.5)")
    p.add_argument("--angle", default="0", help="with --hc/--ga: the major axis in degrees from the horizontal (default 0)")
    p.add_argument("--aspect", default=None, help="with --hc/--ga: minor / major axis (default 0.79, HC18's median head)")
    p.add_argument("--count", default=None, help="samples per layout (default synthesis.count)")
    p.add_argument("--anomaly", default="",
                   help="edit the layout(s) into this anomaly (comma-separated names, or 'all'): with --layout the edited layout is "
                   "synthesised, with --edit FRAME the frame gets its abnormal twin (no --layout needed), with --test every test "
                   "frame that shows the structure gets one (instead of synthesis.edits); names: absent_csp, banana_cerebellum, "
                   "enlarged_cm, microcephaly, lemon (docs/synthesis.md)")
    p.add_argument("--severity", default=None, help="the anomaly's severity (default: its default; ranges in docs/synthesis.md)")
    p.add_argument("--test", action="store_true", help="the split's layouts (synthesis.limit of them) and their edits (synthesis.edits), with metrics")
    p.add_argument("--with-sham", action="store_true",
                   help="--test --anomaly: also a sham edit of each (the same region regenerated, the layout unchanged): "
                   "the pixel-paired normal control of every abnormal frame")
    p.add_argument("--edits-only", action="store_true", help="--test: only the edits (e.g. anomaly pairs), no layout samples")
    p.add_argument("--out", default=None, help="output folder (default synthesis.out)")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.add_argument("--no-realism", action="store_true", help="--test: skip FID / FSD")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--wait", action="store_true", help="if another run writes into --out, wait for it to finish "
                   "(default: stop with a message naming it)")
    ns = p.parse_intermixed_args(argv)
    head = ns.hc is not None or (str(ns.ga).strip() != "" and not (ns.test or ns.edit or ns.layout))
    modes = sum(bool(x) for x in (ns.test, ns.edit, ns.layout and not ns.edit, head))
    if modes != 1:
        raise UserError("give exactly one of --layout MASK.png, --hc MM (or --ga WEEKS alone), --edit FRAME.png --layout EDITED.png, "
                        "or --test")
    specs = anomaly_specs(ns.anomaly, option_number(ns.severity, "--severity", float))
    if ns.edit and not ns.layout and not specs:
        raise UserError("--edit FRAME.png needs --layout EDITED_MASK.png (the layout the frame should have) or --anomaly NAME")
    if ns.edit and ns.layout and specs:
        raise UserError("--edit FRAME.png takes --layout EDITED_MASK.png or --anomaly NAME, not both")
    if len(specs) > 1 and not ns.test:
        raise UserError(f"--anomaly {ns.anomaly}: one anomaly at a time with --layout or --edit (several with --test)")
    count = option_number(ns.count, "--count", int)
    if count is not None and count < 1:
        raise UserError(f"--count {ns.count}: must be at least 1")
    cfg = config_from_args(ns.args)
    if count is not None:
        cfg.synthesis.count = count  # recorded with the run (a rerun with another --count is refused)
    if ns.with_sham and not (specs and ns.test):
        raise UserError("--with-sham needs --test --anomaly NAME")
    if specs and ns.test:
        cfg.synthesis.edits = specs + ([f"sham:{s}" for s in specs] if ns.with_sham else [])  # recorded with the run
    out = Path(ns.out or cfg.synthesis.out)
    device = _device(ns.device)
    plane = parse_plane(ns.plane, "--plane")
    if str(ns.ga).strip().lower() in ("nan", "none", "inf", "-inf"):
        raise UserError(f"--ga {ns.ga}: not a number of weeks (leave --ga out when the age is unknown)")
    ga = parse_ga(ns.ga, "--ga")
    report = not ns.no_report
    if ns.test:
        m, classes = R.run_test(cfg, ns.ckpt, out, device, count=count, edits_only=ns.edits_only, realism=not ns.no_realism,
                                report=report, wait=ns.wait)
    else:
        syn = R.Synthesizer(cfg, ns.ckpt, device, need_steer=not ns.edit, need_judge=True)
        classes = syn.classes
        layout = read_layout(ns.layout, syn.classes, syn.size) if ns.layout else None
        if head:
            layout, ga, name = _head_layout(ns, cfg, syn, ga)
        if layout is not None and specs:  # --layout MASK --anomaly NAME: synthesise the abnormal layout
            layout = _anomaly_layout(layout, specs[0], syn.classes, ga, ns.layout)
        if ns.edit:  # every check of an edit comes before anything is written
            job = _edit_job(ns, cfg, syn, layout, specs, plane, ga, device)
            m = R.synthesize(out, cfg, syn, edits=[job], edit_batch=1, report=report, wait=ns.wait,
                             what="diffice synthesize --edit")
        else:
            job = LayoutJob(0, name if head else Path(ns.layout).stem, layout, plane, ga if not math.isnan(ga) else math.nan)
            m = R.synthesize(out, cfg, syn, layouts=[job], count=count or int(cfg.synthesis.count), report=report,
                             wait=ns.wait, what="diffice synthesize --layout")
    for line in summary_lines(m, classes, out, report):
        print(line)
    return 0


def option_number(value: str | None, option: str, kind: type = float):
    """``value`` of a numeric option as ``kind`` (None when not given); one line naming the option otherwise."""
    import math

    from diffice.errors import UserError

    if value is None:
        return None
    try:
        number = kind(str(value).strip())
    except ValueError:
        raise UserError(f"{option} {value}: not {'a whole number' if kind is int else 'a number'}") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise UserError(f"{option} {value}: not a finite number")
    return number


def _edit_job(ns, cfg, syn, layout, specs: list[str], plane: int, ga: float, device):
    """The one edit of ``--edit FRAME``, every input checked (frame, layouts, anomaly) and nothing written."""
    from pathlib import Path

    import numpy as np

    from diffice.data.sources import load_image
    from diffice.errors import UserError
    from diffice.synthesis import metrics as M
    from diffice.synthesis.jobs import EditJob, edit_job
    from diffice.synthesis.layouts import read_layout

    source = load_image(Path(ns.edit))
    if layout is not None and source.shape != layout.shape:
        raise UserError(f"{ns.edit}: frame is {source.shape[1]}x{source.shape[0]} (WxH) but the layout {ns.layout} is "
                        f"{layout.shape[1]}x{layout.shape[0]}; the frame and its edited layout must have the same size")
    if layout is None and source.shape != tuple(syn.size):
        raise UserError(f"{ns.edit}: frame is {source.shape[1]}x{source.shape[0]} (WxH) but the model makes "
                        f"{syn.size[1]}x{syn.size[0]} frames")
    src = source * 2.0 - 1.0
    if ns.source_layout:
        before = read_layout(ns.source_layout, syn.classes, syn.size)
    else:
        import torch

        seg, _, _ = M.load_segment(cfg.synthesis.segmenter_ckpt, device)
        before = seg(torch.from_numpy(src)[None, None].float())[0].numpy().astype(np.int64)
    if specs:
        job = edit_job("000000-0", 0, Path(ns.edit).stem, specs[0], src.astype(np.float32), before, syn.classes, plane, ga)
        if job is None:
            raise UserError(f"{ns.edit}: --anomaly {ns.anomaly} changes nothing in the frame's layout")
        return job
    if (before == layout).all():
        raise UserError(f"{ns.layout}: the edited layout equals the frame's own layout; nothing to edit")
    return EditJob("000000-0", 0, Path(ns.edit).stem, f"layout {Path(ns.layout).name}", src.astype(np.float32), before,
                     layout, plane, ga)


def _head_layout(ns, cfg, syn, ga: float):
    """(layout, GA, name) of ``--hc`` / ``--ga``: the filled head ellipse; GA from the HC by Hadlock when not given
    (the condition the hc18 models were trained with), HC from the GA when only that is given."""
    import math

    from diffice.data.anomalies import HADLOCK_GA_RANGE, ga_weeks, hc_mm
    from diffice.errors import UserError
    from diffice.synthesis.jobs import head_pixel_mm
    from diffice.synthesis.layouts import HC18_ASPECT, head_layout

    hc = option_number(ns.hc, "--hc")
    if hc is None:
        hc = hc_mm(ga)
    elif hc <= 0:
        raise UserError(f"--hc {ns.hc}: a head circumference is a positive number of mm")
    if math.isnan(ga):
        ga = ga_weeks(hc)
    lo, hi = HADLOCK_GA_RANGE
    if not lo <= ga <= hi:
        print(f"note: GA {ga:.1f} weeks lies outside {lo:g}-{hi:g} weeks, the range Hadlock's HC regression was fitted on")
    centre = _pair(ns.centre, "--centre")
    if not all(0.0 <= c <= 1.0 for c in centre):
        raise UserError(f"--centre {ns.centre}: Y,X are fractions of the frame, 0 to 1")
    px = _pair(ns.pixel_mm, "--pixel-mm") if ns.pixel_mm else head_pixel_mm(cfg, syn.size, hc)
    if min(px) <= 0:
        raise UserError(f"--pixel-mm {ns.pixel_mm}: mm per pixel must be positive")
    aspect = option_number(ns.aspect, "--aspect") if ns.aspect is not None else HC18_ASPECT
    layout = head_layout(syn.size, px, hc, syn.classes, centre=centre, angle=option_number(ns.angle, "--angle"), aspect=aspect)
    return layout, ga, f"head_hc{hc:.0f}mm"


def _pair(value: str, option: str) -> tuple[float, float]:
    from diffice.errors import UserError

    parts = str(value).split(",")
    if len(parts) != 2:
        raise UserError(f"{option} {value}: expected two numbers, A,B")
    return option_number(parts[0], option), option_number(parts[1], option)


def _anomaly_layout(layout, spec: str, classes: list[str], ga: float, where: str):
    from diffice.errors import UserError
    from diffice.synthesis.layouts import apply_edit

    after = apply_edit(layout, spec, classes, ga)
    if (after == layout).all():
        raise UserError(f"{where}: {spec} changes nothing in this layout")
    return after
