"""``kind: segmentation_downstream`` experiments (``experiments/hc18_downstream.yaml``): the
head-measurement study on real labels (:mod:`diffice.downstream.seg_study`).

Its frame sets, from the configured data (hc18-faults under the hc18 preset) at ``data.image_size``:

* test: every clean (SP) frame of the ``test`` split (the first ``seg_downstream.test_limit`` of
  them), its annotation mask, pixel spacing and annotated HC — fetuses no segmenter trains on;
* train, per N and seed: ``DiffIceDataModule(cfg).dataset("train", label="SP")`` under
  ``data.labelled=N`` and ``data.labelled_seed=seed``, filtered by ``has_mask`` — the N clean
  training frames that keep their annotation (N = all: every clean training frame);
* synthetic, per N and seed: the synthesis run folder ``seg_downstream.synthetic`` names (each
  folder checked before any data is read).

The study then trains and scores into the row's folder (resumable).
"""

from __future__ import annotations

import copy

import numpy as np

from diffice.errors import UserError


def _frames(ds, positions: list[int], what: str):
    """FrameSet (with masks) of ``ds``'s items at ``positions``, and their pixel spacing and annotated HC."""
    from diffice.downstream.frames import FrameSet
    from diffice.io import to_uint8

    images, masks, ids, px, hc = [], [], [], [], []
    for i in positions:
        item = ds[i]
        if not bool(item["has_mask"]):
            raise UserError(f"data ({ds.source.name}): {what} frame {item['id']} has no mask; the head-measurement study needs one")
        images.append(to_uint8(item["image"][0]))
        masks.append(item["mask"].numpy())
        ids.append(str(item["id"]))
        px.append(item["pixel_mm"].numpy())
        hc.append(float(item["hc_mm"]))
    if not images:
        raise UserError(f"data ({ds.source.name}): no {what} frame with a mask; the head-measurement study needs some")
    n = len(ids)
    frames = FrameSet(np.stack(images), np.full(n, -1), [""] * n, ["real"] * n, ids, masks=np.stack(masks))
    return frames, np.stack(px), np.asarray(hc)


def real_sets(cfg, labels: list[str], seeds: list[int]) -> tuple[dict, object]:
    """``({(N, seed): FrameSet}, HeadTest)``: each draw's labelled clean training frames, and the clean test frames."""
    from diffice.data import DiffIceDataModule
    from diffice.downstream.seg_study import ALL, HeadTest

    ds = DiffIceDataModule(cfg).dataset("test", label="SP")
    limit = cfg.seg_downstream.test_limit
    frames, px, hc = _frames(ds, list(range(len(ds)))[:limit], "test")
    bad = [f for f, p, h in zip(frames.ids, px, hc) if not (np.isfinite(p).all() and np.isfinite(h))]
    if bad:
        raise UserError(f"data ({ds.source.name}): test frame {bad[0]} has no pixel spacing or annotated HC "
                        f"(manifest columns pixel_mm, hc_mm); the head-measurement study needs both")
    test = HeadTest(frames, px, hc)
    train, drawn = {}, {}
    for lab in labels:
        for seed in seeds:
            draw = (lab, None if lab == ALL else seed)  # every labelled frame: the same frames for every seed
            if draw not in drawn:
                c = copy.deepcopy(cfg)
                c.data.labelled = None if lab == ALL else int(lab)
                c.data.labelled_seed = int(seed)
                try:
                    ds = DiffIceDataModule(c).dataset("train", label="SP")
                except UserError as err:
                    raise UserError(f"seg_downstream.labelled: {err}") from err
                positions = [i for i, index in enumerate(ds.indices) if ds.source.has_mask(int(index))]
                drawn[draw] = _frames(ds, positions, "training")[0]
                print(f"[seg-downstream] N={lab}" + (f", seed {seed}" if lab != ALL else "")
                      + f": {len(positions)} labelled clean training frames")
            train[(lab, seed)] = drawn[draw]
    return train, test


def run_row(exp, row) -> str:
    """``kind: segmentation_downstream``: the synthetic folders checked and read, the real sets made,
    the study run (or resumed) into the row's folder; returns its table."""
    from diffice.downstream.seg_study import read_synthetic, run_seg_study, study_settings

    cfg = row.cfg
    st = study_settings(cfg)
    if st["synthetic"] is None:
        synthetic = {}
        print("[seg-downstream] seg_downstream.synthetic: null: the augmentation-only arm alone")
    else:
        synthetic = read_synthetic(st["synthetic"], st["labels"], st["seeds"], st["image_size"], len(st["classes"]))
    for (lab, seed), s in synthetic.items():
        print(f"[seg-downstream] N={lab}, seed {seed}: {len(s)} synthetic pairs from {s.meta.get('path')}")
    train, test = real_sets(cfg, st["labels"], st["seeds"])
    print(f"[seg-downstream] test: {len(test.frames)} clean frames of unseen fetuses")
    row.out.mkdir(parents=True, exist_ok=True)
    res = run_seg_study(cfg, test, train, synthetic, row.out, progress=bool(cfg.trainer.progress_bar), wait=exp.wait)
    return res["table"]


def table(exp, results) -> str:
    """Every row's study table under its label (each row's own is its folder's table.md)."""
    return "\n".join(f"## {row.label}\n\n{body}" for row, body in results)
