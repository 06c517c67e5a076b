"""The guided-diffusion style UNet factory over diffusers' UNet2DModel."""

from __future__ import annotations

import pytest
import torch

from diffice.config import load_config
from diffice.errors import UserError
from diffice.nets.unet import build_unet
from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("size", [(32, 40), (64, 80)])
def test_tiny_unet_on_non_square_frames(tiny_overrides, size):
    cfg = load_config([ROOT / "configs/preset/tiny.yaml"], [*tiny_overrides, f"data.image_size=[{size[0]},{size[1]}]"])
    net = build_unet(cfg)
    x = torch.randn(2, 1, *size)
    with torch.no_grad():
        y = net(x, torch.tensor([0, 99]))
        y_scalar = net(x, 7)
    assert y.shape == (2, 2, *size)  # eps and variance value
    assert y_scalar.shape == (2, 2, *size)
    assert torch.isfinite(y).all()
    with torch.no_grad():  # the timestep matters
        assert not torch.allclose(net(x, torch.tensor([0, 0])), net(x, torch.tensor([50, 50])))


def test_guided_diffusion_layout(tiny_overrides):
    over = [*tiny_overrides, "unet.channel_mult=[1,2,2]", "unet.attention_resolutions=[2,4]", "unet.num_head_channels=8"]
    cfg = load_config([ROOT / "configs/preset/tiny.yaml"], over)
    net = build_unet(cfg).net
    c = net.config
    assert [type(b).__name__ for b in net.down_blocks] == ["ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"]
    assert [type(b).__name__ for b in net.up_blocks] == ["AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"]
    assert c.resnet_time_scale_shift == "scale_shift"
    assert c.downsample_type == "resnet" and c.upsample_type == "resnet"
    assert list(c.block_out_channels) == [16, 32, 32]
    assert net.mid_block.attentions[0].heads == 32 // 8
    assert len(net.down_blocks[0].resnets) == 1 and len(net.up_blocks[0].resnets) == 2  # g-d: one more on the way up
    y = build_unet(cfg)(torch.randn(1, 1, 32, 40), torch.tensor([3]))
    assert y.shape == (1, 2, 32, 40)


def test_fixed_variance_unet_has_one_output_channel(tiny_overrides):
    cfg = load_config([ROOT / "configs/preset/tiny.yaml"], [*tiny_overrides, "diffusion.learn_sigma=false"])
    assert build_unet(cfg)(torch.randn(1, 1, 32, 40), torch.tensor([3])).shape == (1, 1, 32, 40)


def test_paper_unet_is_the_guided_diffusion_256_layout():
    cfg = load_config([ROOT / "configs/preset/paper.yaml"])
    net = build_unet(cfg).net
    kinds = [type(b).__name__ for b in net.down_blocks]
    assert kinds == ["ResnetDownsampleBlock2D"] * 3 + ["AttnDownBlock2D"] * 3  # attention at 1/8, 1/16, 1/32
    assert list(net.config.block_out_channels) == [128, 128, 256, 256, 512, 512]
    assert net.config.norm_num_groups == 32 and net.config.attention_head_dim == 64


def test_bad_unet_settings_are_user_errors(tiny_overrides):
    def build(*extra):
        return build_unet(load_config([ROOT / "configs/preset/tiny.yaml"], [*tiny_overrides, *extra]))

    with pytest.raises(UserError, match="attention_resolutions"):
        build("unet.attention_resolutions=[3]")
    with pytest.raises(UserError, match="num_head_channels"):
        build("unet.num_head_channels=12")
    net = build("unet.channel_mult=[1,1,1,1]")
    with pytest.raises(UserError, match="not divisible by 8"):
        net(torch.randn(1, 1, 36, 40), torch.tensor([1]))
