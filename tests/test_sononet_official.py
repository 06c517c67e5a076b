"""SonoNet: the official weights label the 13 example frames; tiny frames; the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffice.cli import main
from diffice.errors import UserError
from diffice.nets.sononet import OFFICIAL_CLASSES, SonoNet, preprocess_official
from tests.conftest import SHARED_DATA

# file stem -> official class name
STEM_TO_CLASS = {
    "3VV": "3VV", "4CH": "4CH", "ABDOMINAL": "Abdominal", "BRAIN-CB": "Brain (Cb.)",
    "BRAIN-TV": "Brain (Tv.)", "FEMUR": "Femur", "KIDNEYS": "Kidneys", "LIPS": "Lips", "LVOT": "LVOT",
    "PROFILE": "Profile", "RVOT": "RVOT", "SPINE-CORONAL": "Spine (cor.)", "SPINE-SAGITTAL": "Spine (sag.)",
}


@pytest.fixture(scope="module")
def official():
    """(net, files, preprocessed frames), loaded once for the module (skips like ``sononet_dir``)."""
    sononet_dir = SHARED_DATA / "sononet"
    if not (sononet_dir / "SonoNet16.npz").is_file():
        pytest.skip("SonoNet weights not present in ../shared/data/sononet")
    files = sorted((sononet_dir / "example_images").glob("*.tiff"))
    assert len(files) == 13
    x = torch.stack([preprocess_official(np.asarray(Image.open(f).convert("RGB"))) for f in files])
    return SonoNet.from_official(sononet_dir / "SonoNet16.npz"), files, x


def test_official_sononet16_labels_all_13_examples(official):
    net, files, x = official
    assert x.shape == (13, 1, 224, 288)
    with torch.no_grad():
        pred = net(x).argmax(dim=1)
    got = {f.stem: OFFICIAL_CLASSES[int(k)] for f, k in zip(files, pred, strict=True)}
    assert got == {f.stem: STEM_TO_CLASS[f.stem] for f in files}
    # pooled features for FSD / SonoSim: 8F = 128 values per frame
    with torch.no_grad():
        assert net.features(x[:2]).shape == (2, 128)


def test_official_sononet_standardises_any_input_range(official):
    """from_official normalises per image inside forward, so a [-1, 1] frame gives the same answer."""
    net, _, x = official
    x = x[:3]
    lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
    x11 = (x - lo) / (hi - lo) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(net(x).softmax(1), net(x11).softmax(1), atol=1e-4)


@pytest.mark.parametrize("size", [(32, 40), (16, 20), (8, 8)])
def test_sononet_runs_on_tiny_frames(size):
    net = SonoNet(features=16, in_channels=3, num_classes=1, final_bn=False)
    x = torch.randn(2, 3, *size, requires_grad=True)
    y = net(x)
    assert y.shape == (2, 1) and torch.isfinite(y).all()
    y.sum().backward()
    assert x.grad.abs().sum() > 0


def test_from_official_refuses_bad_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        SonoNet.from_official(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, np.zeros((3, 3)))
    with pytest.raises(UserError, match="holds 1 arrays"):
        SonoNet.from_official(bad)


def test_cli_sononet_prints_plane(sononet_dir, capsys):
    img = sononet_dir / "example_images" / "FEMUR.tiff"
    assert main(["sononet", "--weights", str(sononet_dir / "SonoNet16.npz"), str(img)]) == 0
    out = capsys.readouterr().out
    assert "FEMUR.tiff" in out and "Femur" in out


def test_cli_sononet_errors(tmp_path, capsys):
    assert main(["sononet", "--weights", str(tmp_path / "none.npz"), "x.png"]) == 2
    assert "none.npz" in capsys.readouterr().err
