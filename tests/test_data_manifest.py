"""Manifest datasets, the DataModule contract, patient-level splits and bad input."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffice.config import load_config
from diffice.data import DiffIceDataModule, require_labels
from diffice.data.datasets import patient_splits
from diffice.data.export import write_phantoms
from diffice.errors import UserError
from tests.conftest import ROOT


def _cfg(tiny_overrides, *extra):
    return load_config([ROOT / "configs/preset/tiny.yaml"], [*tiny_overrides, *extra])


def _write_manifest(path, rows, columns=None):
    columns = columns or list(rows[0])
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def test_phantom_items_follow_the_contract(tiny_overrides):
    cfg = _cfg(tiny_overrides)
    dm = DiffIceDataModule(cfg)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    b = cfg.data.batch_size
    assert batch["image"].shape == (b, 1, 32, 40) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["mask"].shape == (b, 32, 40) and batch["mask"].dtype == torch.int64
    assert batch["label"].dtype == torch.int64 and batch["index"].dtype == torch.int64
    assert batch["concepts"].shape == (b, len(cfg.data.concepts))
    assert batch["target"].shape == (b, 1, 32, 40) and batch["has_target"].all() and batch["has_mask"].all()
    assert len(batch["id"]) == b
    # index = position in the "all" data set, stable across views
    all_ds = dm.dataset("all")
    val = dm.dataset("val")
    item = val[1]
    assert torch.equal(all_ds[int(item["index"])]["image"], item["image"])
    # label views
    sp = dm.dataset("all", label="SP")
    assert len(sp) > 0 and all(int(sp[i]["label"]) == 1 for i in range(len(sp)))
    assert len(dm.dataset("all", label="NSP")) + len(sp) == len(all_ds)


def test_concept_order_follows_config(tiny_overrides):
    cfg = _cfg(tiny_overrides, "data.concepts=[qs_bone,qs_th]")
    item = DiffIceDataModule(cfg).dataset("all")[0]
    from diffice.data.phantom import render_frame

    fr = render_frame(0, (32, 40), seed=0, sp_fraction=cfg.data.phantom.sp_fraction)
    assert item["concepts"].tolist() == pytest.approx([fr["concepts"]["qs_bone"], fr["concepts"]["qs_th"]])


def test_augmentation_keeps_image_target_and_mask_aligned(tiny_overrides):
    cfg = _cfg(tiny_overrides)
    ds = DiffIceDataModule(cfg).dataset("all", label="SP", augment=True)
    torch.manual_seed(0)
    for i in range(3):
        it = ds[i]
        assert torch.equal(it["image"], it["target"])  # SP: target == image, also after augmentation
        assert it["mask"].min() >= -1


def test_splits_never_cut_a_patient():
    rng = np.random.default_rng(0)
    patients = [f"p{int(k)}" for k in rng.integers(0, 40, size=300)]
    labels = rng.integers(0, 2, size=300)
    for seed in range(3):
        s = patient_splits(patients, labels, [0.7, 0.1, 0.2], seed)
        where = {}
        for p, x in zip(patients, s):
            where.setdefault(p, set()).add(x)
        assert all(len(v) == 1 for v in where.values())
        assert set(s) == {"train", "val", "test"}
        for name in ("train", "val", "test"):
            assert (labels[s == name] == 1).any()  # SP patients are spread over the splits


def test_phantom_round_trip(tmp_path, tiny_overrides):
    cfg = _cfg(tiny_overrides, "data.phantom.count=12")
    write_phantoms(cfg, tmp_path / "ph", count=12, seed=0, progress=False)
    assert (tmp_path / "ph/manifest.csv").is_file() and (tmp_path / "ph/latents.jsonl").is_file()
    live = DiffIceDataModule(cfg).dataset("all")
    for extra in (["data.source=manifest", f"data.manifest={tmp_path / 'ph/manifest.csv'}"],
                  [f"data.root={tmp_path / 'ph'}"]):
        disk_dm = DiffIceDataModule(_cfg(tiny_overrides, *extra))
        disk = disk_dm.dataset("all")
        assert len(disk) == len(live) == 12
        assert list(disk_dm.source.splits) == list(DiffIceDataModule(cfg).dataset("all").source.splits)
        for i in (0, 5, 11):
            a, b = live[i], disk[i]
            for k in ("image", "mask", "target", "label", "index"):
                assert torch.equal(a[k], b[k]), k
            assert torch.allclose(a["concepts"], b["concepts"], atol=1e-5)
            assert a["id"] == b["id"]


def test_manifest_optional_columns_and_split(tmp_path, tiny_overrides):
    img = (np.arange(60 * 50) % 256).astype(np.uint8).reshape(60, 50)
    rows = []
    for i in range(6):
        _png(tmp_path / f"im{i}.png", img)
        rows.append({"image": f"im{i}.png", "label": "SP" if i % 2 else "NSP", "patient": f"p{i // 2}",
                     "split": ["train", "train", "val", "val", "test", "test"][i], "qs_th": "0.5" if i else ""})
    _write_manifest(tmp_path / "m.csv", rows)
    dm = DiffIceDataModule(_cfg(tiny_overrides, "data.source=manifest", f"data.manifest={tmp_path / 'm.csv'}"))
    ds = dm.dataset("val")
    assert len(ds) == 2 and list(ds.labels) == [0, 1]
    it = dm.dataset("all")[0]
    assert it["image"].shape == (1, 32, 40)  # resized to data.image_size
    assert not it["has_mask"] and (it["mask"] == -1).all() and not it["has_target"]
    assert math.isnan(float(it["concepts"][0]))  # qs_th empty -> NaN; qs_csp absent -> NaN
    assert float(dm.dataset("all")[1]["concepts"][0]) == 0.5


# ----------------------------------------------------------------------------- bad input


def _one_image_manifest(tmp_path, tiny_overrides, name, **extra):
    _write_manifest(tmp_path / "m.csv", [{"image": name, **extra}])
    return DiffIceDataModule(_cfg(tiny_overrides, "data.source=manifest", f"data.manifest={tmp_path / 'm.csv'}"))


def test_corrupt_image_names_the_file(tmp_path, tiny_overrides):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    dm = _one_image_manifest(tmp_path, tiny_overrides, "bad.png")
    with pytest.raises(UserError, match="bad.png"):
        dm.dataset("all")[0]


def test_truncated_image_names_the_file(tmp_path, tiny_overrides):
    _png(tmp_path / "full.png", np.random.default_rng(0).integers(0, 255, (80, 90), dtype=np.uint8))
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    dm = _one_image_manifest(tmp_path, tiny_overrides, "cut.png")
    with pytest.raises(UserError, match="cut.png"):
        dm.dataset("all")[0]


def test_non_image_file_names_the_file(tmp_path, tiny_overrides):
    (tmp_path / "desktop.ini").write_text("[.ShellClassInfo]\n")
    dm = _one_image_manifest(tmp_path, tiny_overrides, "desktop.ini")
    with pytest.raises(UserError, match="desktop.ini"):
        dm.dataset("all")[0]


def test_missing_image_column(tmp_path, tiny_overrides):
    _write_manifest(tmp_path / "m.csv", [{"path": "a.png", "label": "SP"}])
    with pytest.raises(UserError, match="missing required column 'image'"):
        DiffIceDataModule(_cfg(tiny_overrides, "data.source=manifest", f"data.manifest={tmp_path / 'm.csv'}")).setup()


def test_bad_label_and_split_values(tmp_path, tiny_overrides):
    _png(tmp_path / "a.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(UserError, match="label 'maybe'"):
        _one_image_manifest(tmp_path, tiny_overrides, "a.png", label="maybe").setup()
    with pytest.raises(UserError, match="split 'dev'"):
        _one_image_manifest(tmp_path, tiny_overrides, "a.png", split="dev").setup()


def test_mask_size_mismatch_names_the_mask(tmp_path, tiny_overrides):
    _png(tmp_path / "a.png", np.zeros((40, 50), np.uint8))
    _png(tmp_path / "a_mask.png", np.zeros((41, 50), np.uint8))
    dm = _one_image_manifest(tmp_path, tiny_overrides, "a.png", mask="a_mask.png")
    with pytest.raises(UserError, match="a_mask.png.*must match"):
        dm.dataset("all")[0]


def test_mask_class_out_of_range(tmp_path, tiny_overrides):
    _png(tmp_path / "a.png", np.zeros((40, 50), np.uint8))
    _png(tmp_path / "m.png", np.full((40, 50), 9, np.uint8))
    dm = _one_image_manifest(tmp_path, tiny_overrides, "a.png", mask="m.png")
    with pytest.raises(UserError, match="class index 9"):
        dm.dataset("all")[0]


def test_16bit_and_rgb_images_are_converted(tmp_path, tiny_overrides):
    ramp16 = (np.linspace(0, 65535, 32 * 40).reshape(32, 40)).astype(np.uint16)
    _png(tmp_path / "a16.png", ramp16)
    assert Image.open(tmp_path / "a16.png").mode.startswith("I")
    it = _one_image_manifest(tmp_path, tiny_overrides, "a16.png").dataset("all")[0]
    assert it["image"].min() == pytest.approx(-1.0, abs=1e-3) and it["image"].max() == pytest.approx(1.0, abs=1e-3)
    assert torch.allclose(it["image"][0], torch.from_numpy(ramp16 / 65535.0 * 2 - 1).float(), atol=1e-3)
    rgb = np.zeros((32, 40, 3), np.uint8)
    rgb[..., 0] = rgb[..., 1] = rgb[..., 2] = 200
    _png(tmp_path / "rgb.png", rgb)
    it = _one_image_manifest(tmp_path, tiny_overrides, "rgb.png").dataset("all")[0]
    assert it["image"].shape == (1, 32, 40)
    assert torch.allclose(it["image"], torch.full((1, 32, 40), 200 / 127.5 - 1), atol=1e-3)


def test_empty_data_set(tmp_path, tiny_overrides):
    (tmp_path / "m.csv").write_text("image,label\n")
    with pytest.raises(UserError, match="empty"):
        DiffIceDataModule(_cfg(tiny_overrides, "data.source=manifest", f"data.manifest={tmp_path / 'm.csv'}")).setup()


def test_missing_manifest_and_root(tmp_path, tiny_overrides):
    with pytest.raises(UserError, match="data.manifest"):
        DiffIceDataModule(_cfg(tiny_overrides, "data.source=manifest")).setup()
    for source in ("hc18", "fpdb"):
        with pytest.raises(UserError, match="data.root"):
            DiffIceDataModule(_cfg(tiny_overrides, f"data.source={source}", "data.root=null")).setup()
    with pytest.raises(UserError, match="does not exist"):
        DiffIceDataModule(_cfg(tiny_overrides, "data.source=hc18", f"data.root={tmp_path / 'nope'}")).setup()


def test_split_without_sp_is_refused_where_labels_are_needed(tmp_path, tiny_overrides):
    _png(tmp_path / "a.png", np.zeros((10, 10), np.uint8))
    rows = [{"image": "a.png", "label": "NSP", "split": "train"}, {"image": "a.png", "label": "SP", "split": "test"}]
    _write_manifest(tmp_path / "m.csv", rows)
    dm = DiffIceDataModule(_cfg(tiny_overrides, "data.source=manifest", f"data.manifest={tmp_path / 'm.csv'}"))
    with pytest.raises(UserError, match="split 'train' has no SP"):
        require_labels(dm.dataset("train"), "train")
    with pytest.raises(UserError, match="split 'val' is empty"):
        require_labels(dm.dataset("val"), "val")
    with pytest.raises(UserError, match="no NSP"):
        require_labels(dm.dataset("test"), "test")
    _write_manifest(tmp_path / "u.csv", [{"image": "a.png"}])
    dm = DiffIceDataModule(_cfg(tiny_overrides, "data.source=manifest", f"data.manifest={tmp_path / 'u.csv'}"))
    with pytest.raises(UserError, match="no SP/NSP labels"):
        require_labels(dm.dataset("all"), "all")
    require_labels(DiffIceDataModule(_cfg(tiny_overrides, "data.phantom.count=64")).dataset("train"), "train")
