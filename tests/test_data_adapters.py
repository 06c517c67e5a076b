"""HC18 (on ../shared, skipped when absent) and FETAL_PLANES_DB (on a fixture in its layout)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffice.config import load_config
from diffice.data import DiffIceDataModule
from diffice.data.sources import hc18_records, load_mask
from diffice.errors import UserError
from tests.conftest import ROOT


def _cfg(tiny_overrides, *extra):
    return load_config([ROOT / "configs/preset/tiny.yaml"], [*tiny_overrides, *extra])


def test_hc18_lists_999_images(hc18_root, tiny_overrides):
    recs = hc18_records(hc18_root)
    assert len(recs) == 999
    assert all(r.mask is not None and r.label == -1 for r in recs)
    assert not any(r.image.name == "desktop.ini" for r in recs)
    assert any(r.id == "010_2HC" for r in recs) and len({r.patient for r in recs}) < 999
    dm = DiffIceDataModule(_cfg(tiny_overrides, "data.source=hc18", f"data.root={hc18_root}",
                                "data.classes=[background,head]", "data.concepts=[]"))
    it = dm.dataset("all")[0]
    assert it["image"].shape == (1, 32, 40) and it["has_mask"] and int(it["label"]) == -1
    assert set(it["mask"].unique().tolist()) == {0, 1}
    # the one-pixel outline is filled into a head mask
    raw = np.asarray(Image.open(recs[0].mask))
    filled = load_mask(recs[0].mask, "outline", raw.shape, 2)
    assert filled.sum() > 20 * (raw > 0).sum()
    # patients are never cut by the split
    src = dm.source
    where = {}
    for p, s in zip(src.patients, src.splits):
        where.setdefault(p, set()).add(s)
    assert all(len(v) == 1 for v in where.values())


def test_hc18_outline_with_a_gap_is_closed(tmp_path):
    yy, xx = np.mgrid[0:60, 0:80]
    r = np.hypot((xx - 40) / 30.0, (yy - 30) / 20.0)
    ring = (np.abs(r - 1) < 0.03).astype(np.uint8) * 255
    ring[28:33, 68:] = 0  # a gap in the outline
    Image.fromarray(ring).save(tmp_path / "a.png")
    m = load_mask(tmp_path / "a.png", "outline", (60, 80), 2)
    assert m[30, 40] == 1 and m[0, 0] == 0


def _fpdb(root, rgb=False):
    rows = [
        # Image_name, Patient_num, Plane, Brain_plane, Operator, US_Machine, Train
        ("Patient00001_Plane3_1_of_2", 1, "Fetal brain", "Trans-thalamic", "Op. 1", "Voluson E6", 1),
        ("Patient00001_Plane3_2_of_2", 1, "Fetal brain", "Trans-cerebellum", "Op. 1", "Voluson E6", 1),
        ("Patient00002_Plane3_1_of_1", 2, "Fetal brain", "Trans-ventricular", "Op. 2", "Voluson S10", 1),
        ("Patient00003_Plane3_1_of_2", 3, "Fetal brain", "Trans-thalamic", "Op. 2", "Voluson S10", 1),
        ("Patient00003_Plane3_2_of_2", 3, "Fetal brain", "Other", "Op. 2", "Voluson S10", 1),
        ("Patient00004_Plane2_1_of_1", 4, "Fetal abdomen", "Not A Brain", "Op. 1", "Aloka", 1),
        ("Patient00005_Plane3_1_of_1", 5, "Fetal brain", "Trans-thalamic", "Op. 3", "Aloka", 1),
        ("Patient00006_Plane3_1_of_1", 6, "Fetal brain", "Trans-cerebellum", "Op. 3", "Aloka", 1),
        ("Patient00007_Plane3_1_of_2", 7, "Fetal brain", "Trans-thalamic", "Op. 1", "Voluson E6", 0),
        ("Patient00007_Plane3_2_of_2", 7, "Fetal brain", "Trans-ventricular", "Op. 1", "Voluson E6", 0),
    ]
    (root / "Images").mkdir(parents=True)
    lines = ["Image_name;Patient_num;Plane;Brain_plane;Operator;US_Machine;Train "]
    rng = np.random.default_rng(0)
    for name, pat, plane, bp, op, mach, tr in rows:
        lines.append(f"{name};{pat};{plane};{bp};{op};{mach};{tr}")
        shape = (50, 70, 3) if rgb else (50, 70)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(root / "Images" / f"{name}.png")
    (root / "FETAL_PLANES_DB_data.csv").write_text("\n".join(lines) + "\n")
    return root


def test_fpdb_fixture(tmp_path, tiny_overrides):
    root = _fpdb(tmp_path / "fpdb", rgb=True)
    dm = DiffIceDataModule(_cfg(tiny_overrides, "data.source=fpdb",
                                f"data.root={root}", "data.classes=[background]", "data.concepts=[]",
                                "data.split_fractions=[0.5,0.5,0.0]"))
    dm.setup()
    src = dm.source
    ids = src.ids
    assert len(ids) == 8  # 'Other' and the abdomen are excluded
    lab = dict(zip(ids, src.labels.tolist()))
    assert lab["Patient00001_Plane3_1_of_2"] == 1 and lab["Patient00001_Plane3_2_of_2"] == 0
    assert lab["Patient00002_Plane3_1_of_1"] == 0
    split = dict(zip(ids, src.splits.tolist()))
    assert split["Patient00007_Plane3_1_of_2"] == split["Patient00007_Plane3_2_of_2"] == "test"
    assert {split[i] for i in ids if not i.startswith("Patient00007")} == {"train", "val"}
    assert split["Patient00001_Plane3_1_of_2"] == split["Patient00001_Plane3_2_of_2"]  # val carved by patient
    it = dm.dataset("test")[0]
    assert it["image"].shape == (1, 32, 40) and not it["has_mask"]  # RGB -> grey, resized


def test_fpdb_missing_column(tmp_path, tiny_overrides):
    root = _fpdb(tmp_path / "fpdb")
    csv = root / "FETAL_PLANES_DB_data.csv"
    csv.write_text(csv.read_text().replace("Brain_plane", "BrainPlane"))
    with pytest.raises(UserError, match="Brain_plane"):
        DiffIceDataModule(_cfg(tiny_overrides, "data.source=fpdb", f"data.root={root}")).setup()
    csv.write_text(csv.read_text().replace(";", ","))
    with pytest.raises(UserError, match="missing column"):
        DiffIceDataModule(_cfg(tiny_overrides, "data.source=fpdb", f"data.root={root}")).setup()


def test_fpdb_missing_image_names_the_file(tmp_path, tiny_overrides):
    root = _fpdb(tmp_path / "fpdb")
    (root / "Images" / "Patient00005_Plane3_1_of_1.png").unlink()
    ds = DiffIceDataModule(_cfg(tiny_overrides, "data.source=fpdb", f"data.root={root}")).dataset("all")
    pos = [i for i in range(len(ds)) if ds.source.ids[ds.indices[i]] == "Patient00005_Plane3_1_of_1"][0]
    with pytest.raises(UserError, match="Patient00005_Plane3_1_of_1.png"):
        ds[pos]
    assert torch.is_tensor(ds[0]["image"])


def test_hc18_layout_fixture(tmp_path, tiny_overrides):
    folder = tmp_path / "hc18" / "training_set"
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:54, 0:80]
    ring = ((np.abs(np.hypot((xx - 40) / 25.0, (yy - 27) / 18.0) - 1) < 0.04) * 255).astype(np.uint8)
    for name in ("000_HC", "001_HC", "001_2HC", "002_HC"):
        Image.fromarray(np.full((54, 80), 90, np.uint8)).save(folder / f"{name}.png")
        Image.fromarray(ring).save(folder / f"{name}_Annotation.png")
    (folder / "desktop.ini").write_text("[.ShellClassInfo]\n")
    (folder / "notes.png").write_bytes(b"not an image, and not an HC18 name")
    recs = hc18_records(tmp_path / "hc18")
    assert [r.id for r in recs] == ["000_HC", "001_2HC", "001_HC", "002_HC"]
    assert recs[1].patient == recs[2].patient == "001"
    dm = DiffIceDataModule(_cfg(tiny_overrides, "data.source=hc18", f"data.root={tmp_path / 'hc18'}",
                                "data.classes=[background,head]", "data.concepts=[]"))
    it = dm.dataset("all")[0]
    assert it["mask"][16, 20] == 1 and it["mask"][0, 0] == 0 and int(it["label"]) == -1
    empty = tmp_path / "empty" / "training_set"
    empty.mkdir(parents=True)
    (empty / "desktop.ini").write_text("x")
    with pytest.raises(UserError, match="no HC18 images"):
        hc18_records(tmp_path / "empty")
