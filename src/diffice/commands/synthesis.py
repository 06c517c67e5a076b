"""``diffice train-synthesis`` and ``diffice synthesize``."""

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
    from diffice.config import config_from_args, save_config
    from diffice.data.sources import parse_ga, parse_plane
    from diffice.errors import UserError
    from diffice.runlock import run_lock
    from diffice.synthesis import run as R
    from diffice.synthesis.layouts import read_layout

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
    modes = sum(bool(x) for x in (ns.test, ns.edit, ns.layout and not ns.edit))
    if modes != 1:
        raise UserError("give exactly one of --layout MASK.png, --edit FRAME.png --layout EDITED.png, or --test")
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
        syn = R.Synthesizer(cfg, ns.ckpt, device)
        count = count or int(cfg.synthesis.count)
        limit = cfg.synthesis.limit
        layouts, edits, dm = R.test_jobs(cfg, syn, None if limit is None else int(limit), list(cfg.synthesis.edits))
        with run_lock(out, "diffice synthesize --test", wait=ns.wait):
            R.prepare_run_folder(out, cfg, ns.ckpt)
            save_config(cfg, out / "config.yaml")
            lrecs = [] if ns.edits_only else R.run_layouts(out, syn, layouts, count, int(cfg.synthesis.batch_size))
            erecs = R.run_edits(out, syn, edits, int(cfg.synthesis.batch_size))
            realism = None if ns.no_realism or not lrecs else R.realism_metrics(cfg, syn, out, lrecs, dm, device)
            m = R.finish(out, cfg, syn, lrecs, erecs, realism, report=report)
        _print_summary(m, syn.classes, out, report)
        return 0
    syn = R.Synthesizer(cfg, ns.ckpt, device, need_steer=not ns.edit, need_judge=True)
    layout = read_layout(ns.layout, syn.classes, syn.size) if ns.layout else None
    if layout is not None and specs:  # --layout MASK --anomaly NAME: synthesise the abnormal layout
        layout = _anomaly_layout(layout, specs[0], syn.classes, ga, ns.layout)
    if ns.edit:  # every check of an edit comes before anything is written
        job = _edit_job(ns, cfg, syn, layout, specs, plane, ga, device)
        with run_lock(out, "diffice synthesize --edit", wait=ns.wait):
            R.prepare_run_folder(out, cfg, ns.ckpt)
            save_config(cfg, out / "config.yaml")
            erecs = R.run_edits(out, syn, [job], 1)
            m = R.finish(out, cfg, syn, [], erecs, None, report=report)
        _print_summary(m, syn.classes, out, report)
        return 0
    job = R.LayoutJob(0, Path(ns.layout).stem, layout, plane, ga if not math.isnan(ga) else math.nan)
    with run_lock(out, "diffice synthesize --layout", wait=ns.wait):
        R.prepare_run_folder(out, cfg, ns.ckpt)
        save_config(cfg, out / "config.yaml")
        lrecs = R.run_layouts(out, syn, [job], count or int(cfg.synthesis.count), int(cfg.synthesis.batch_size))
        m = R.finish(out, cfg, syn, lrecs, [], None, report=report)
    _print_summary(m, syn.classes, out, report)
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
    from diffice.synthesis import run as R
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

        seg, _, _ = R.M.load_segment(cfg.synthesis.segmenter_ckpt, device)
        before = seg(torch.from_numpy(src)[None, None].float())[0].numpy().astype(np.int64)
    if specs:
        job = R.edit_job("000000-0", 0, Path(ns.edit).stem, specs[0], src.astype(np.float32), before, syn.classes, plane, ga)
        if job is None:
            raise UserError(f"{ns.edit}: --anomaly {ns.anomaly} changes nothing in the frame's layout")
        return job
    if (before == layout).all():
        raise UserError(f"{ns.layout}: the edited layout equals the frame's own layout; nothing to edit")
    return R.EditJob("000000-0", 0, Path(ns.edit).stem, f"layout {Path(ns.layout).name}", src.astype(np.float32), before,
                     layout, plane, ga)


def anomaly_specs(names: str, severity: float | None) -> list[str]:
    """``anomaly:NAME:S`` edit specs of ``--anomaly`` (comma-separated names or 'all') at ``--severity``."""
    from diffice.data.anomalies import ANOMALIES
    from diffice.errors import UserError
    from diffice.synthesis.layouts import anomaly_spec

    keys = [n.strip() for n in str(names or "").split(",") if n.strip()]
    if not keys:
        if severity is not None:
            raise UserError("--severity needs --anomaly NAME")
        return []
    if keys == ["all"]:
        keys = [k for k in ANOMALIES if k != "ventriculomegaly"]  # the layouts have no ventricle class
    return [anomaly_spec(k, severity) for k in keys]


def _anomaly_layout(layout, spec: str, classes: list[str], ga: float, where: str):
    from diffice.errors import UserError
    from diffice.synthesis.layouts import apply_edit

    after = apply_edit(layout, spec, classes, ga)
    if (after == layout).all():
        raise UserError(f"{where}: {spec} changes nothing in this layout")
    return after


def _print_summary(m: dict, classes: list[str], out, report: bool = True) -> None:
    def f(v, key: str | None = None):  # a value, with its 95 % interval when metrics.json has one
        iv = (m.get("intervals") or {}).get(key) or {}
        ci = f" [{iv['low']:.3f}, {iv['high']:.3f}]" if iv.get("low") is not None else ""
        return "n/a" if v is None else f"{v:.3f}{ci}"

    if m.get("samples"):
        print(f"{m['samples']} samples of {m['layouts']} layouts ({m.get('seconds_per_sample', 0):.1f} s per sample)")
    if m.get("dice"):
        print("layout Dice (judge; 95 % intervals over samples): "
              + ", ".join(f"{c} {f(m['dice'].get(c), 'dice_' + c)}" for c in classes[1:]))
    if m.get("dice_real"):
        print("  real frames:        " + ", ".join(f"{c} {f(m['dice_real'].get(c))}" for c in classes[1:]))
    if m.get("kid") is not None:
        print(f"KID {m['kid']:.4f} ± {m['kid_std']:.4f} (real vs real {f(m.get('kid_floor'))}); FID "
              + (f"{m['fid']:.1f} (real vs real {f(m.get('fid_floor'))})" if m.get("fid") is not None
                 else "n/a (N {}/{}: shown from 256 a side)".format(*(m.get("fid_n") or ["?", "?"]))))
    if m.get("edits"):
        print(f"{m['edits']} edits: PSNR outside the edit mean {f(m.get('edit_psnr_outside_mean'), 'edit_psnr_outside_mean')} dB, "
              f"min {f(m.get('edit_psnr_outside_min'))}; edited pixels as requested {f(m.get('edit_accuracy'), 'edit_accuracy')} "
              f"(source {f(m.get('edit_accuracy_source'))})")
    for name, a in (m.get("anomalies") or {}).items():
        print(f"  {name} (severity {', '.join(f'{v:g}' for v in a['severities'])}): {a['within_tolerance']} of {a['checked']} "
              f"edited frames measure as requested (judge's segmentation, docs/synthesis.md); unedited sources: "
              f"{a.get('source_within_tolerance', 0)} of {a['checked']}")
    files = ["report.html"] * report + ["results.csv", "metrics.json"] + ["pairs.csv"] * bool(m.get("edits"))
    print(f"run folder: {out} ({', '.join(files)})")


# ----------------------------------------------------------------------------- experiment

ABLATION_COLUMNS = (
    ("dice", "head", "Dice head"), ("dice", "bone", "Dice bone"), ("dice", "th", "Dice TH"), ("dice", "csp", "Dice CSP"),
    (None, "fid", "FID ↓"), (None, "kid", "KID ↓"), (None, "fsd", "FSD ↓"), (None, "kid_fsd", "KID (FSD features) ↓"),
    (None, "diversity_l1", "diversity L1"),
    (None, "edit_psnr_outside_mean", "edit PSNR outside (dB)"), (None, "edit_psnr_outside_min", "min"),
    (None, "edit_psnr_outside_at_least_30", "edits ≥ 30 dB"), (None, "edit_accuracy", "edit followed"),
    (None, "seconds_per_sample", "s / sample"),
)


def anomaly_table(rows: list[tuple[str, dict]]) -> str:
    """Markdown table of anomaly-edit runs: per run and anomaly, how many edited frames the judge
    measures within the tolerance of the requested severity, and how well the outside is kept."""
    lines = ["| run | anomaly | severity | edits | measured as requested | control: unedited source as requested | "
             "change as requested | edit PSNR outside (dB) | min |", "|---|---|---|---|---|---|---|---|---|"]
    total = [0, 0, 0, 0]
    for label, m in rows:
        for name, a in (m.get("anomalies") or {}).items():
            k, n = a["within_tolerance"], a["checked"]
            total[0] += k
            total[1] += n
            frac = _rate(k, n)
            ctl = a.get("source_within_tolerance")
            total[2] += ctl or 0
            ctl = f"{ctl} of {n}" if ctl is not None and n else "n/a"
            ch = a.get("within_change")
            total[3] += ch or 0
            ch = _rate(ch, n) if ch is not None else "n/a"
            lines.append(f"| {label} | {name} | {', '.join(f'{v:g}' for v in a['severities'])} | {a['edits']} | {frac} | {ctl} | {ch} | "
                         f"{m.get('edit_psnr_outside_mean', float('nan')):.1f} | {m.get('edit_psnr_outside_min', float('nan')):.1f} |")
    if total[1]:
        lines.append(f"| all | | | {total[1]} | {_rate(total[0], total[1])} | {total[2]} of {total[1]} | "
                     f"{_rate(total[3], total[1])} | | |")
    return "\n".join(lines) + "\n\nRates: k of n (percent [95 % Clopper–Pearson interval]).\n"


def _rate(k: int, n: int) -> str:
    """``6 of 11 (55 % [23, 83])``: a rate with its exact 95 % interval."""
    from diffice.metrics.stats import fmt_rate, rate_interval

    return fmt_rate(rate_interval(k, n), percent=True, missing="n/a")


def synthesis_table(rows: list[tuple[str, dict]]) -> str:
    """Markdown table of synthesis runs (label, metrics.json), plus each run's stage-1 Dice and the
    judge's ceiling on real frames where the run has them; anomaly-edit runs get :func:`anomaly_table`."""
    if rows and all(m.get("anomalies") and not m.get("samples") for _, m in rows):
        return anomaly_table(rows)

    from diffice.metrics.stats import fmt_interval, fmt_rate
    from diffice.report.tables import fmt

    def cell(m, section, key):
        """A value with its 95 % interval (``intervals``), KID ± subset std, FID / FSD or n/a (N a/b)."""
        v = (m.get(section) or {}).get(key) if section else m.get(key)
        iv = (m.get("intervals") or {}).get(f"{section}_{key}" if section else key)
        digits = 1 if key in ("fid", "fsd", "edit_psnr_outside_mean", "edit_psnr_outside_min") else 3
        if key in ("fid", "fsd") and v is None and m.get(f"{key}_n"):
            return "n/a (N {}/{})".format(*m[f"{key}_n"])
        if key.startswith("kid") and v is not None and m.get(f"{key}_std") is not None:
            return f"{fmt(v, 4)} ± {fmt(m[key + '_std'], 4)}"
        if iv and iv.get("k") is not None:
            return fmt_rate(iv)
        if iv and iv.get("value") is not None:
            return fmt_interval(iv, digits)
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.{digits}f}"
        return str(v)

    head = "| run | " + " | ".join(c for _, _, c in ABLATION_COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(ABLATION_COLUMNS) + 1)]
    for label, m in rows:
        n_edits = m.get("edits")
        cells = [cell(m, s, k) for s, k, _ in ABLATION_COLUMNS]
        i = [k for _, k, _ in ABLATION_COLUMNS].index("edit_psnr_outside_at_least_30")
        if n_edits and " of " not in cells[i]:
            cells[i] = f"{cells[i]} of {n_edits}"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    extra = []
    for label, m in rows:
        if m.get("dice_stage1"):
            extra.append(f"| {label}: stage 1 alone | " + " | ".join(cell(m, "dice_stage1", k) for k in ("head", "bone", "th", "csp"))
                         + " | " + " | ".join("" for _ in ABLATION_COLUMNS[4:]) + " |")
    last = rows[-1][1] if rows else {}
    if last.get("dice_real"):
        extra.append("| judge on the real frames (ceiling) | " + " | ".join(cell(last, "dice_real", k) for k in ("head", "bone", "th", "csp"))
                     + " | " + " | ".join("" for _ in ABLATION_COLUMNS[4:]) + " |")
    floor = [f"FID real vs real {last['fid_floor']:.1f}" if last.get("fid_floor") is not None else "",
             f"KID real vs real {fmt(last['kid_floor'], 4)} ± {fmt(last.get('kid_floor_std'), 4)}"
             if last.get("kid_floor") is not None else "",
             f"FSD real vs real {last['fsd_floor']:.1f}" if last.get("fsd_floor") is not None else "",
             f"KID (FSD features) real vs real {fmt(last['kid_fsd_floor'], 4)}" if last.get("kid_fsd_floor") is not None else ""]
    note = ("\n\nFloor at this sample count: " + ", ".join(f for f in floor if f) + ".") if any(floor) else ""
    return "\n".join(lines + extra) + note + "\n"


def run_synthesis_experiment(ns, base: dict, runs: dict, options: dict) -> int:
    """``diffice experiment`` for ``kind: synthesis``: every row trains the synthesis model its
    ``synthesis.ckpt`` names when it is missing (into that folder), runs ``diffice synthesize
    --test`` into ``{paths.runs}/experiments/NAME/ROW``, and one table goes to ``table.md``."""
    import json
    from pathlib import Path

    from diffice.commands.demo import _slug, experiment_setup, row_layer, write_experiment_table
    from diffice.config import load_config, save_config
    from diffice.errors import UserError
    from diffice.modules.common import LAST
    from diffice.modules.synthesis import train_synthesis

    # trains the models first: the segmenter that judges and the oracle whose segmentation steers
    name, preset, files, overrides, out_root = experiment_setup(ns, base, options)
    rows = []
    for label, layer in runs.items():
        layer = row_layer(layer, base, None, [preset, *files], overrides)
        run_out = out_root / _slug(label)
        cfg = load_config([preset, base, layer, *files], [*overrides, f"synthesis.out={run_out}"])
        ckpt = Path(cfg.synthesis.ckpt)
        if not ckpt.is_file():
            if ckpt.name != LAST or ckpt.parent.parent.resolve() != Path(cfg.paths.runs).resolve():
                raise UserError(f"{ckpt}: not found, and not a {{paths.runs}}/<folder>/{LAST} this experiment could train")
            print(f"[{name}] {label}: training {ckpt.parent}")
            train_synthesis(cfg, stage=ckpt.parent.name)
        s = cfg.synthesis
        print(f"[{name}] {label}: prealign {s.prealign}, two-stage {s.two_stage}, RePaint {s.repaint}, {s.limit} layouts x {s.count}")
        run_out.mkdir(parents=True, exist_ok=True)
        layer_file = run_out.parent / f".{_slug(label)}.yaml"
        save_config(cfg, layer_file)
        code = cmd_synthesize([str(ckpt), str(layer_file), "--test", "--out", str(run_out), *["--wait"] * bool(getattr(ns, "wait", False)),
                               *([] if options.get("realism", True) else ["--no-realism"]),
                               *(["--edits-only"] if options.get("edits_only") else [])])
        if code:
            return code
        rows.append((label, json.loads((run_out / "metrics.json").read_text())))
    write_experiment_table(ns, options, name, out_root, synthesis_table(rows))
    return 0
