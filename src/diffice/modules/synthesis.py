"""The layout-conditioned DDPM of the synthesis layer (checkpoint kind "synthesis").

It is the unconditional DDPM (:class:`~diffice.modules.ddpm.DDPMModule`: learned-variance
hybrid loss, EMA, bf16, DDP, exact resume) with :class:`~diffice.nets.conditional.ConditionalUNet`
as its network, so only what conditioning changes is written here:

* the condition of each training frame: its mask as one-hot layout, its plane and GA;
* **condition dropout**: with ``synthesis.drop_condition`` the whole condition is dropped
  (the unconditional model of classifier-free guidance); else each layout class is dropped
  on its own with ``synthesis.drop_structure`` (its pixels become unspecified), and plane and
  GA each with ``synthesis.drop_meta``;
* **pre-alignment**: the first ``synthesis.prealign_steps`` optimizer steps train only the
  layout encoder (L1 between its frame and the real one); it is frozen afterwards and the
  diffusion loss trains the rest for ``synthesis.max_steps`` more steps.

Training draws t over all T steps (``ddpm.train_max_t`` is not used): synthesis starts from
pure noise.

``synthesis.init_ckpt`` starts a run from a synthesis model (a fine-tune of a base) or from an
unconditional DDPM of the same UNet (the base of a campaign whose conditioning branch learns on the
labelled frames only): its input layer gains the layout channels at zero weight and the condition
embedding starts at zero, so the new model is that DDPM, for every condition, until training moves them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import DictConfig

from diffice.diffusion import generators_for, randn
from diffice.errors import UserError
from diffice.modules.ddpm import ARCH_KEYS, DDPMModule, check_compatible, load_ddpm, widen_inputs
from diffice.nets.conditional import ConditionalUNet, Conditioned, one_hot_layout

SYNTH_ARCH_KEYS = (*ARCH_KEYS, "data.classes", "synthesis.prealign", "synthesis.prealign_width")


def condition_of(batch: dict, num_classes: int) -> dict[str, torch.Tensor]:
    """The full condition of a data batch: one-hot layout of its masks, plane, GA."""
    return {"layout": one_hot_layout(batch["mask"], num_classes), "plane": batch["plane"], "ga": batch["ga"].float()}


def drop_conditions(cond: dict[str, torch.Tensor], p_all: float, p_structure: float, p_meta: float,
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Condition dropout (see the module docstring); draws from ``generator`` (CPU) or torch's."""
    layout, plane, ga = cond["layout"].clone(), cond["plane"].clone(), cond["ga"].clone()
    b, c = layout.shape[:2]

    def rand(*shape):
        return torch.rand(*shape, generator=generator).to(layout.device)

    drop_all = rand(b) < p_all
    drop_class = (rand(b, c) < p_structure) | drop_all[:, None]
    layout = layout * (~drop_class)[:, :, None, None].float()
    plane = torch.where(drop_all | (rand(b) < p_meta), torch.full_like(plane, -1), plane)
    ga = torch.where(drop_all | (rand(b) < p_meta), torch.full_like(ga, float("nan")), ga)
    return {"layout": layout, "plane": plane, "ga": ga}


class SynthesisModule(DDPMModule):
    """``.model`` / ``.ema_model``: :class:`ConditionalUNet`; ``.diffusion``: all T steps."""

    kind = "synthesis"

    def __init__(self, cfg: DictConfig | dict, *, load_pretrained: bool = True):
        super().__init__(cfg, load_pretrained=load_pretrained)
        self.num_classes = len(self.cfg.data.classes)

    def build_model(self, cfg: DictConfig):
        return ConditionalUNet(cfg)

    def start_from(self, path: str) -> None:
        """``synthesis.init_ckpt``: a synthesis model's EMA weights, or an unconditional DDPM's (see the
        module docstring); the pre-alignment encoder of a DDPM start is new (trained first, as usual)."""
        from diffice.nets.weights import read_checkpoint

        ckpt = read_checkpoint(path)
        kind = ckpt["diffice"]["kind"]
        if kind == "synthesis":
            return super().start_from(path)
        if kind != "ddpm":
            raise UserError(f"{path}: is a {kind} checkpoint; synthesis.init_ckpt takes a synthesis model or a DDPM")
        check_compatible(path, ckpt, self.cfg, keys=ARCH_KEYS, what="synthesis.init_ckpt's DDPM")
        source = load_ddpm(path)
        own = self.model.state_dict()
        state = {**own, **{f"unet.{k}": v for k, v in source.ema_model.state_dict().items()}}
        widen_inputs(state, own)
        self.model.load_state_dict(state)
        self.model.embed.zero_()
        self.ema_model.load_state_dict(self.model.state_dict())
        print(f"{self.kind}: starts from the EMA weights of the DDPM {path} ({source.trained_steps} steps); the layout "
              "inputs and the condition embedding start at zero")

    def load_init(self, path: str) -> SynthesisModule:
        """``synthesis.init_ckpt``'s model for :meth:`start_from`: a synthesis model of this architecture."""
        from diffice.nets.weights import read_checkpoint

        check_compatible(path, read_checkpoint(path, "synthesis"), self.cfg, keys=SYNTH_ARCH_KEYS, what="synthesis.init_ckpt")
        return load_synthesis(path)

    def prealign_steps(self) -> int:
        return int(self.cfg.synthesis.prealign_steps) if self.cfg.synthesis.prealign else 0

    def max_train_t(self) -> int:
        return self.diffusion.num_timesteps

    def configure_optimizers(self):
        d = self.cfg.ddpm
        return torch.optim.AdamW(self.model.parameters(), lr=float(self.cfg.synthesis.lr), weight_decay=float(d.weight_decay))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x0 = batch["image"]
        bs = x0.shape[0]
        s = self.cfg.synthesis
        cond = drop_conditions(condition_of(batch, self.num_classes), float(s.drop_condition),
                               float(s.drop_structure), float(s.drop_meta))
        if self.global_step < self.prealign_steps():
            # pre-alignment: the layout encoder alone learns the frame its (full) layout belongs to
            full = condition_of(batch, self.num_classes)["layout"]
            loss = (self.model.appearance(full) - x0).abs().mean()
            self.log("train/prealign_l1", loss, prog_bar=True, batch_size=bs)
            return loss
        t = torch.randint(0, self.diffusion.num_timesteps, (bs,), device=x0.device)
        noise = torch.randn_like(x0)
        if float(s.offset_noise) > 0:  # offset noise: a per-frame constant, so the frame's mean is noised like its detail
            noise = noise + float(s.offset_noise) * torch.randn(bs, x0.shape[1], 1, 1, device=x0.device, dtype=x0.dtype)
        losses = self.diffusion.training_losses(Conditioned(self.model, cond), x0, t, noise,
                                                vb_weight=float(self.cfg.diffusion.vb_weight))
        loss = losses["loss"].mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/mse", losses["mse"].mean(), batch_size=bs)
        self.log("train/vb", losses["vb"].mean(), batch_size=bs)
        quarter = (t * 4) // self.diffusion.num_timesteps
        self._quarters[0].add_(torch.zeros(4, device=t.device).index_add_(0, quarter, losses["loss"].detach().float()).cpu())
        self._quarters[1].add_(torch.bincount(quarter, minlength=4).cpu())
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Hybrid loss of the EMA weights at a fixed (t, noise) per frame with the full condition,
        and the pre-alignment encoder's L1."""
        x0 = batch["image"]
        cond = condition_of(batch, self.num_classes)
        gens = generators_for(int(self.cfg.seed) + 1, batch["index"].tolist())
        T = self.diffusion.num_timesteps
        t = torch.tensor([int(torch.randint(0, T, (1,), generator=g)) for g in gens], device=x0.device)
        noise = randn(x0.shape, gens, x0.device)
        losses = self.diffusion.training_losses(Conditioned(self.ema_model, cond), x0, t, noise, vb_weight=float(self.cfg.diffusion.vb_weight))
        n = x0.shape[0]
        self.log("val/loss", losses["loss"].mean(), batch_size=n, sync_dist=True)
        self.log("val/mse", losses["mse"].mean(), batch_size=n, sync_dist=True)
        if self.ema_model.prealign is not None:
            self.log("val/prealign_l1", (self.ema_model.appearance(cond["layout"]) - x0).abs().mean(), batch_size=n, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._check_frames = []

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.global_step % max(1, int(self.cfg.trainer.log_every_n_steps)) == 0:
            self.log_quarters()

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.global_step == self.prealign_steps() and self.model.prealign is not None:
            self.model.prealign.requires_grad_(False)  # frozen from here on (also after a resume: see on_train_start)

    def on_train_start(self) -> None:
        if self.global_step >= self.prealign_steps() and self.model.prealign is not None:
            self.model.prealign.requires_grad_(False)


def load_synthesis(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> SynthesisModule:
    """A trained synthesis model (eval mode) from its checkpoint or pack file."""
    from diffice.modules.common import load_checkpoint

    module = load_checkpoint(path, "synthesis", map_location=map_location)
    from diffice.nets.weights import read_checkpoint

    module.trained_steps = int(read_checkpoint(path, "synthesis").get("global_step", 0))
    return module


def train_synthesis(cfg: DictConfig, datamodule=None, stage: str = "synthesis", **trainer_overrides) -> Path:
    """Train (or resume) the synthesis model into ``{paths.runs}/{stage}``; returns ``last.ckpt``.
    Total optimizer steps: ``synthesis.prealign_steps`` (when ``synthesis.prealign``) +
    ``synthesis.max_steps``."""
    from diffice.data import DiffIceDataModule
    from diffice.modules.common import LAST, read_checkpoint, run_dir
    from diffice.modules.training import fit, stage_lock

    with stage_lock(cfg, stage):  # one writer per run folder, from the resume check on
        last = run_dir(cfg, stage) / LAST
        if last.exists():
            check_compatible(last, read_checkpoint(last, "synthesis"), cfg, keys=SYNTH_ARCH_KEYS, what="synthesis model")
        dm = datamodule if datamodule is not None else DiffIceDataModule(cfg)
        torch.manual_seed(int(cfg.seed))
        module = SynthesisModule(cfg)
        if cfg.synthesis.init_ckpt and not last.exists():
            module.start_from(str(cfg.synthesis.init_ckpt))
        steps = module.prealign_steps() + int(cfg.synthesis.max_steps)
        strategy = _ddp_strategy(cfg.trainer)
        if module.prealign_steps() and strategy and "strategy" not in trainer_overrides:
            # pre-alignment trains the pre-alignment net alone, then freezes it: DDP must expect unused parameters
            trainer_overrides["strategy"] = f"{strategy}_find_unused_parameters_true"
        return fit(cfg, stage, module, dm, steps, **trainer_overrides)


def _ddp_strategy(t: DictConfig) -> str | None:
    """The DDP strategy ``trainer.*`` asks for: ``ddp`` / ``ddp_spawn`` by name, or ``auto`` with more than one
    device or node requested by count (Lightning's choice then is ``ddp``); None otherwise."""
    strategy = str(t.strategy)
    if strategy in ("ddp", "ddp_spawn"):
        return strategy
    devices = t.devices
    if isinstance(devices, int):
        many = devices > 1
    elif isinstance(devices, str):  # "auto" and "-1" (every device) give no count: not known to be many
        many = devices.isdigit() and int(devices) > 1
    else:  # a list of device indices
        many = len(devices) > 1
    return "ddp" if strategy == "auto" and (many or int(t.get("num_nodes") or 1) > 1) else None
