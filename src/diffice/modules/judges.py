"""Training the judges as pipeline stages: segmenter, guide (classifier) and oracle.

Each fits its LightningModule with :func:`diffice.modules.training.fit` (resuming from
``{paths.runs}/{stage}/last.ckpt``), then reloads that checkpoint, evaluates it on the val and
test splits, prints the numbers and writes ``{paths.runs}/{stage}/metrics.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from omegaconf import DictConfig

from diffice.errors import UserError
from diffice.runlock import other_rank


def _setup(cfg: DictConfig):
    import lightning as L

    from diffice.data import DiffIceDataModule

    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    dm = DiffIceDataModule(cfg)
    dm.setup()
    return dm


def _clean(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def _report(cfg: DictConfig, stage: str, metrics: dict, ckpt: Path) -> None:
    from diffice.io import atomic_write_text
    from diffice.modules.common import run_dir

    out = run_dir(cfg, stage) / "metrics.json"
    atomic_write_text(out, json.dumps(_clean({"checkpoint": str(ckpt), **metrics}), indent=2) + "\n")
    for split, rep in metrics.items():
        shown = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in rep.items())
        print(f"{stage} {split}: {shown}")
    print(f"{stage}: checkpoint {ckpt}; metrics {out}")


def _eval_splits(dm, fn) -> dict:
    out = {}
    for split in ("val", "test"):
        ds = dm.dataset(split)
        if len(ds):
            out[split] = fn(dm.loader(ds, shuffle=False))
    return out


def train_segmenter(cfg: DictConfig) -> Path:
    """Train the segmentation network s (Dice + cross-entropy); returns ``last.ckpt``."""
    from diffice.modules.common import load_checkpoint
    from diffice.modules.segmenter import SegmenterModule, evaluate_segmenter
    from diffice.modules.training import fit, stage_lock

    with stage_lock(cfg, "segmenter"):  # one writer per run folder
        dm = _setup(cfg)
        last = fit(cfg, "segmenter", SegmenterModule(cfg), dm, int(cfg.segmenter.max_steps))
        if other_rank():  # DDP: rank zero alone evaluates and writes metrics.json
            return last
        net = load_checkpoint(last, "segmenter").net
        classes = list(cfg.data.classes)
        _report(cfg, "segmenter", _eval_splits(dm, lambda dl: {f"dice_{k}": v for k, v in
                                                             evaluate_segmenter(net, dl, classes).items()}), last)
        return last


def train_classifier(cfg: DictConfig) -> Path:
    """Train the standard-plane guide f(x) = l(s(x), x) (s frozen); returns ``last.ckpt``."""
    from diffice.data import require_labels
    from diffice.modules.classifier import ClassifierModule, evaluate_classifier
    from diffice.modules.common import load_checkpoint
    from diffice.modules.training import fit, stage_lock

    dm = _setup(cfg)
    require_labels(dm.dataset("train"), "train", "the guide")
    calibrate = str(cfg.guide.calibrate)
    if calibrate not in CALIBRATE:
        raise UserError(f"guide.calibrate: '{calibrate}' is not one of {', '.join(CALIBRATE)}")
    with stage_lock(cfg, "classifier"):  # fit, calibration and metrics.json: one writer
        module = ClassifierModule(cfg)
        last = fit(cfg, "classifier", module, dm, int(cfg.guide.max_steps))
        if other_rank():  # DDP: rank zero alone calibrates (rewriting the checkpoint) and writes metrics.json
            return last
        guide = load_checkpoint(last, "classifier").guide
        if calibrate != "none":
            calibrate_guide(last, dm, CALIBRATE[calibrate], guide)
        _report(cfg, "classifier", _eval_splits(dm, lambda dl: evaluate_classifier(guide, dl)), last)
        return last


# guide.calibrate: the splits whose frames choose the decision threshold (never the test split)
CALIBRATE = {"none": (), "val": ("val",), "train+val": ("train", "val")}


def calibrate_guide(ckpt: Path, dm, splits: tuple[str, ...] = ("train", "val"), guide=None) -> float:
    """Write the balanced-accuracy threshold of the guide's probabilities on ``splits`` (unaugmented
    frames) into the guide checkpoint ``ckpt`` (atomically) and into ``guide`` (the checkpoint's guide,
    loaded from it when not given); returns it. Without a frame of each class there it stays 0.5."""
    import io

    import torch

    from diffice.io import atomic_write_bytes
    from diffice.modules.classifier import balanced_threshold, binary_report, guide_probabilities
    from diffice.modules.common import load_checkpoint
    from diffice.nets.weights import read_checkpoint

    guide = guide if guide is not None else load_checkpoint(ckpt, "classifier").guide
    parts = [guide_probabilities(guide, dm.loader(dm.dataset(s), shuffle=False)) for s in splits if len(dm.dataset(s))]
    t = 0.5
    if parts:
        probs, labels = torch.cat([p for p, _ in parts]), torch.cat([y for _, y in parts])
        t = balanced_threshold(probs, labels)
        at_t, at_half = binary_report(probs, labels, t), binary_report(probs, labels)
        print(f"classifier: decision threshold {t:.4g} from the {' + '.join(splits)} frames (balanced accuracy "
              f"{at_t['balanced_accuracy']:.3f} there at it, {at_half['balanced_accuracy']:.3f} at 0.5)")
    raw = read_checkpoint(ckpt, "classifier")
    raw["state_dict"]["guide.threshold"] = torch.tensor(float(t))
    guide.threshold.fill_(float(t))
    buf = io.BytesIO()
    torch.save(raw, buf)
    atomic_write_bytes(ckpt, buf.getvalue())
    return t


def train_oracle(cfg: DictConfig) -> Path:
    """Train the PCBM oracle (segmentation -> concepts -> QS_O); returns ``last.ckpt``."""
    from diffice.modules.common import load_checkpoint
    from diffice.modules.oracle import OracleModule, evaluate_oracle
    from diffice.modules.training import fit, stage_lock

    dm = _setup(cfg)
    if not list(cfg.data.concepts):
        raise UserError("data.concepts is empty: the oracle needs concept columns (qs_*); use a data set that has them")
    with stage_lock(cfg, "oracle"):
        last = fit(cfg, "oracle", OracleModule(cfg), dm, int(cfg.oracle.max_steps))
        if other_rank():  # DDP: rank zero alone evaluates and writes metrics.json
            return last
        oracle = load_checkpoint(last, "oracle").oracle
        concepts = list(cfg.data.concepts)
        _report(cfg, "oracle", _eval_splits(dm, lambda dl: evaluate_oracle(oracle, dl, concepts, cfg.oracle.qs_target)[0]), last)
        return last
