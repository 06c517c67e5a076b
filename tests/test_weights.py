"""Local weight files: what loads, and one clear line for each way a file can be wrong."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffice.errors import UserError
from diffice.nets.weights import load_matching, read_state_dict


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))


def test_wrapped_checkpoint_loads_with_prefixes_stripped(tmp_path):
    src, dst = _net(), nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    path = tmp_path / "w.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}, "epoch": 3}, path)
    load_matching(dst, read_state_dict(path, "features.perceptual_weights"), path, "the net")
    for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["missing", "garbage", "tensor"])
def test_unreadable_files_name_the_key_or_the_file(tmp_path, kind):
    path = tmp_path / "w.pt"
    if kind == "garbage":
        path.write_bytes(b"not a pickle at all")
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    with pytest.raises(UserError) as err:
        read_state_dict(path, "segmenter.encoder_weights", hint=" (set it to null)")
    msg = str(err.value)
    assert "\n" not in msg
    if kind == "missing":
        assert msg.startswith("segmenter.encoder_weights:") and msg.endswith("(set it to null)")
    else:
        assert msg.startswith(str(path))


def test_wrong_architecture_and_wrong_shapes_are_refused(tmp_path):
    path = tmp_path / "w.pt"
    with pytest.raises(UserError, match="no tensor matches the net"):
        load_matching(_net(), {"fc.weight": torch.zeros(2, 2)}, path, "the net")
    bad = _net().state_dict()
    bad["0.weight"] = torch.zeros(4, 3, 3, 3)  # an RGB first layer for a grey net
    with pytest.raises(UserError, match=r"w.pt: tensors do not fit the net: .*0.weight") as err:
        load_matching(_net(), bad, path, "the net")
    assert "\n" not in str(err.value)
