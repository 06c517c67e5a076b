"""Tiny stand-ins for the counterfactual engine's networks and data (fast, picklable for DDP).

The diffusion is the real respaced ``GaussianDiffusion``; the denoiser, guide, oracle,
perceptual network and data set are small deterministic fakes following the contracts.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import nn

from diffice.counterfactual.engine import default_perceptual_l2
from diffice.diffusion import GaussianDiffusion, named_betas, space_timesteps
from diffice.runfolder import write_frame

H, W = 32, 40
CONCEPTS = ["qs_th", "qs_csp", "qs_fp"]


def tiny_diffusion(steps: int = 100, respacing: str = "20") -> GaussianDiffusion:
    return GaussianDiffusion(named_betas("linear", steps), space_timesteps(steps, respacing), learn_sigma=True)


def _init(module: nn.Module, seed: int, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


class FakeDenoiser(nn.Module):
    """``model(x, t_original) -> (B, 2, H, W)``: (eps, v). Counts calls and whether grad was on."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        _init(self, seed)
        self.frames_seen = 0
        self.grad_modes: list[bool] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.frames_seen += x.shape[0]
        self.grad_modes.append(torch.is_grad_enabled() and x.requires_grad)
        out = self.conv(x) + (t.float() / 1000.0).view(-1, 1, 1, 1)
        return torch.cat([out[:, :1], torch.tanh(out[:, 1:])], dim=1)


class FakeGuide(nn.Module):
    """``guide(x) -> (B,)`` SP logit; ``segment(x) -> (B, K, H, W)`` probabilities."""

    def __init__(self, seed: int = 1, classes: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4, 1)
        self.seg = nn.Conv2d(1, classes, 3, padding=1)
        _init(self, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.conv(x)).mean(dim=(2, 3))).reshape(-1) * 4.0

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        return self.seg(x).softmax(dim=1)


class FakePerceptual(nn.Module):
    def __init__(self, seed: int = 2):
        super().__init__()
        self.c1 = nn.Conv2d(1, 3, 3, padding=1)
        self.c2 = nn.Conv2d(3, 3, 3, stride=2, padding=1)
        _init(self, seed)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = self.c1(x)
        return [a, self.c2(torch.relu(a))]


class FakeFeatures(nn.Module):
    perceptual_l2 = staticmethod(default_perceptual_l2)

    def __init__(self):
        super().__init__()
        self.perceptual = FakePerceptual()


class FakeOracle(nn.Module):
    def __init__(self, seed: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(1, len(CONCEPTS), 3, padding=1)
        self.concept_names = list(CONCEPTS)
        _init(self, seed)

    def forward(self, x: torch.Tensor) -> dict:
        c = torch.sigmoid(self.conv(x).mean(dim=(2, 3)))
        return {"concepts": c, "qs_o": c.mean(dim=1)}


def fake_components(steps: int = 100, respacing: str = "20"):
    from diffice.modules.counterfactual import Components

    return Components(tiny_diffusion(steps, respacing), FakeDenoiser(), FakeGuide(), FakeOracle(), FakeFeatures(), list(CONCEPTS))


def frame(i: int) -> torch.Tensor:
    """A smooth deterministic frame (1, H, W) in [-1, 1]."""
    g = torch.Generator().manual_seed(1000 + i)
    low = torch.randn((1, 1, 4, 5), generator=g)
    return torch.tanh(torch.nn.functional.interpolate(low, size=(H, W), mode="bilinear", align_corners=False))[0]


class FakeDataset(torch.utils.data.Dataset):
    """Items per the DATA contract; dataset index = 100 + position (differs from position)."""

    def __init__(self, n: int = 6, labels: list[int] | None = None):
        self.labels = labels if labels is not None else [0] * n

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        img = frame(i)
        return {
            "image": img,
            "mask": torch.zeros((H, W), dtype=torch.int64),
            "label": torch.tensor(self.labels[i]),
            "concepts": torch.full((len(CONCEPTS),), float("nan")),
            "target": torch.clamp(img + 0.2, -1, 1),
            "has_target": torch.tensor(i % 2 == 0),
            "has_mask": torch.tensor(False),
            "index": torch.tensor(100 + i),
            "id": f"frame{i}",
        }


class FakeDataModule:
    def __init__(self, n: int = 6, labels: list[int] | None = None):
        self.full = FakeDataset(n, labels)

    def setup(self, stage=None) -> None:
        pass

    def dataset(self, split: str, label: str | None = None, augment: bool = False):
        keep = [i for i, lab in enumerate(self.full.labels) if label is None or lab == (1 if label == "SP" else 0)]
        return torch.utils.data.Subset(self.full, keep)


class LoggingWriter(BasePredictionWriter):
    """The run's frame writer plus an append-only log of (pid, index) per write (DDP test)."""

    def __init__(self, out: str | Path):
        super().__init__(write_interval="batch")
        self.out = Path(out)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        for f in prediction:
            write_frame(self.out, f["record"], f["images"])
            with open(self.out / "writes.log", "a") as fh:
                fh.write(f"{os.getpid()} {trainer.global_rank} {f['record']['index']}\n")
