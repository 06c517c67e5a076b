"""The unconditional DDPM of Diff-ICE as a LightningModule (checkpoint kind "ddpm").

Training follows DiME / the paper: a guided-diffusion style UNet, T = 1000 linear steps,
learned variance and the hybrid loss of Improved DDPM, AdamW (lr 1e-4, weight decay 0.05),
batch 16, no dropout, uniform t. An EMA copy of the weights (``.ema_model``, decay 0.9999 with
a warm-up ``min(d, (1 + n) / (10 + n))`` at update n) is kept in the checkpoint and is what
samples are drawn from. Images are float32 (B, 1, H, W) in [-1, 1].
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig

from diffice.config import to_dict
from diffice.diffusion import build_diffusion, generators_for, randn
from diffice.errors import UserError
from diffice.io import make_grid
from diffice.modules.common import DifficeModule, load_checkpoint, read_checkpoint
from diffice.nets.unet import IN_CHANNELS, build_unet

CHECK_FRAMES = 8  # validation standard planes reconstructed at cf.tau each validation


class DDPMModule(DifficeModule):
    """``.model`` (trained UNet), ``.ema_model`` (EMA weights, used for sampling), ``.diffusion``
    (all T training steps). ``forward(x, t)`` is the trained UNet (t: original steps)."""

    kind = "ddpm"

    def __init__(self, cfg: DictConfig | dict, *, load_pretrained: bool = True):
        super().__init__(cfg)
        cfg = self.cfg
        self.model = self.build_model(cfg)
        self.ema_model = copy.deepcopy(self.model).requires_grad_(False)
        self.diffusion = build_diffusion(cfg)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))  # saved with the weights
        self._sampler = None
        self.trained_steps = 0  # set by load_ddpm
        self._quarters = (torch.zeros(4), torch.zeros(4, dtype=torch.long))  # loss sums and counts
        self._check_frames: list = []  # validation SP frames for the reconstruction check
        self._segmenter = None

    def build_model(self, cfg: DictConfig):
        """The denoiser (the synthesis layer's subclass returns its conditional one)."""
        return build_unet(cfg)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x, t)

    def configure_optimizers(self):
        d = self.cfg.ddpm
        return torch.optim.AdamW(self.model.parameters(), lr=float(d.lr), weight_decay=float(d.weight_decay))

    # ------------------------------------------------------------------ training

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x0, model = self.training_patches(batch["image"])
        T = self.diffusion.num_timesteps
        # uniform t (DDPM Algorithm 1), over the first ddpm.train_max_t of the schedule
        t = torch.randint(0, self.max_train_t(), (x0.shape[0],), device=x0.device)
        losses = self.diffusion.training_losses(model, x0, t, vb_weight=float(self.cfg.diffusion.vb_weight))
        loss = losses["loss"].mean()
        bs = x0.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/mse", losses["mse"].mean(), batch_size=bs)
        self.log("train/vb", losses["vb"].mean(), batch_size=bs)
        # loss by timestep quarter (as Improved DDPM plots it), summed here and logged per window
        quarter = (t * 4) // T
        self._quarters[0].add_(torch.zeros(4, device=t.device).index_add_(0, quarter, losses["loss"].detach().float()).cpu())
        self._quarters[1].add_(torch.bincount(quarter, minlength=4).cpu())
        return loss

    def training_patches(self, x0: torch.Tensor):
        """(frames, denoiser) of one training step: whole frames, or with ``ddpm.patch_size`` (Patch
        Diffusion) a random crop of each frame and the denoiser called with the crop's coordinate
        channels; a ``ddpm.full_frame_prob`` share of the steps keeps whole frames. The draws come
        from torch's generator, which training reseeds every step (a resumed run crops alike)."""
        size = self.cfg.ddpm.patch_size
        if not size or float(torch.rand(())) < float(self.cfg.ddpm.full_frame_prob):
            return x0, self.model
        from functools import partial

        from diffice.nets.unet import frame_coords

        b, _, h, w = x0.shape
        ph, pw = (int(s) for s in size)
        ys = torch.randint(0, h - ph + 1, (b,)).tolist()
        xs = torch.randint(0, w - pw + 1, (b,)).tolist()
        grid = frame_coords(1, h, w, x0.device)[0]
        crops = torch.stack([x0[i, :, y:y + ph, x:x + pw] for i, (y, x) in enumerate(zip(ys, xs))])
        coords = torch.stack([grid[:, y:y + ph, x:x + pw] for y, x in zip(ys, xs)])
        return crops, partial(self.model, coords=coords)

    def start_from(self, path: str) -> None:
        """``ddpm.init_ckpt`` (``synthesis.init_ckpt``): the model and its EMA start from that model's EMA
        weights (a new run only; the same architecture, checked by :meth:`load_init`)."""
        source = self.load_init(path)
        state = source.ema_model.state_dict()
        added = widen_inputs(state, self.model.state_dict())
        self.model.load_state_dict(state)
        self.ema_model.load_state_dict(state)
        print(f"{self.kind}: starts from the EMA weights of {path} ({source.trained_steps} steps)"
              + ("; its input layer gains the two coordinate channels at zero weight" if added else ""))

    def load_init(self, path: str) -> DDPMModule:
        """The model :meth:`start_from` copies, refused in one line unless its architecture is this config's
        (a whole-frame DDPM may start a ``unet.coord_channels`` one: patch training continued from it)."""
        keys = [k for k in ARCH_KEYS if k != "unet.coord_channels" or not self.cfg.unet.coord_channels]
        return load_ddpm(path, self.cfg, keys=keys)  # the file read once

    def max_train_t(self) -> int:
        """Training draws t from 0 .. this - 1: all T steps unless ``ddpm.train_max_t`` < 1.

        A fraction below 1 trains only the low noise levels that counterfactuals use (t <= τ),
        which a CPU learns in minutes; such a model cannot sample from pure noise.
        """
        T = self.diffusion.num_timesteps
        return max(1, min(T, math.ceil(float(self.cfg.ddpm.train_max_t) * T)))

    def log_quarters(self) -> None:
        """Mean loss per timestep quarter since the last call, straight to the logger (rank 0's frames)."""
        sums, counts = self._quarters
        metrics = {f"train/loss_q{q}": float(sums[q] / counts[q]) for q in range(4) if counts[q] > 0}
        if metrics and self.logger is not None and self.trainer.is_global_zero:
            self.logger.log_metrics(metrics, step=self.global_step - 1)  # the step of the batch just trained
        self._quarters = (torch.zeros(4), torch.zeros(4, dtype=torch.long))

    def ema_decay(self) -> float:
        d = float(self.cfg.ddpm.ema_decay)
        if self.cfg.ddpm.ema_warmup:
            n = int(self.ema_updates)
            d = min(d, (1.0 + n) / (10.0 + n))
        return d

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema <- decay * ema + (1 - decay) * model, after each optimizer step."""
        decay = self.ema_decay()
        ema = list(self.ema_model.parameters())
        cur = [p.detach() for p in self.model.parameters()]
        torch._foreach_lerp_(ema, cur, 1.0 - decay)
        for b_ema, b in zip(self.ema_model.buffers(), self.model.buffers()):
            b_ema.copy_(b)
        self.ema_updates += 1

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # here rather than in on_train_batch_end, which runs after callbacks (and so after
        # ModelCheckpoint has saved this step): the saved EMA must include this step's update
        self.update_ema()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.global_step % max(1, int(self.cfg.trainer.log_every_n_steps)) == 0:
            self.log_quarters()
        every = int(self.cfg.ddpm.sample_every_n_steps)
        if every > 0 and self.global_step % every == 0 and self.trainer.is_global_zero:
            self.log_samples()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Hybrid loss of the EMA weights at a fixed (t, noise) per frame, seeded by dataset index."""
        x0 = batch["image"]
        gens = generators_for(int(self.cfg.seed) + 1, batch["index"].tolist())
        t_max = self.max_train_t()
        t = torch.tensor([int(torch.randint(0, t_max, (1,), generator=g)) for g in gens], device=x0.device)
        noise = randn(x0.shape, gens, x0.device)
        losses = self.diffusion.training_losses(self.ema_model, x0, t, noise, vb_weight=float(self.cfg.diffusion.vb_weight))
        self.log("val/loss", losses["loss"].mean(), batch_size=x0.shape[0], sync_dist=True)
        self.log("val/mse", losses["mse"].mean(), batch_size=x0.shape[0], sync_dist=True)
        # keep a few standard planes for the reconstruction check at the counterfactuals' tau
        sp = (batch["label"] == 1).nonzero().flatten().tolist() if "label" in batch else []
        room = CHECK_FRAMES - sum(len(i) for _, i in self._check_frames)
        if sp and room > 0:
            sp = sp[:room]
            self._check_frames.append((x0[sp].detach(), [int(batch["index"][i]) for i in sp]))

    def on_validation_epoch_start(self) -> None:
        self._check_frames = []

    def on_validation_epoch_end(self) -> None:
        """``diffice ddpm-check`` on the kept validation standard planes: PSNR, and the segmenter's
        Dice between input and reconstruction when ``guide.segmenter_ckpt`` exists (``val/check_*``)."""
        from diffice.counterfactual.check import ddpm_check, pass_options

        frames, self._check_frames = self._check_frames, []
        if not frames or self.trainer.sanity_checking:
            return
        diffusion = self.sampler(str(self.cfg.cf.respacing))
        tau = int(self.cfg.cf.tau)
        if not 1 <= tau <= diffusion.num_timesteps or int(diffusion.timestep_map[tau - 1]) >= self.max_train_t():
            return
        segment, classes = self._check_segmenter()
        self.ema_model.eval()
        res = ddpm_check(diffusion, self.ema_model, segment, frames, tau=tau, classes=classes, seed=int(self.cfg.seed),
                         **pass_options(self.cfg.cf))
        n = res["frames"]
        self.log("val/check_psnr", res["psnr"], batch_size=n)
        for name, v in res["dice"].items():
            if v is not None:
                self.log(f"val/check_dice_{name}", v, batch_size=n)

    def _check_segmenter(self):
        """The segmenter at ``guide.segmenter_ckpt`` (loaded once), or (None, classes) when absent."""
        if self._segmenter is None:
            path = self.cfg.guide.segmenter_ckpt
            self._segmenter = (None, list(self.cfg.data.classes))
            if path and Path(path).is_file():
                from diffice.modules.common import load_checkpoint

                try:
                    seg = load_checkpoint(path, "segmenter", map_location=self.device)
                    self._segmenter = (seg.net.requires_grad_(False), list(seg.cfg.data.classes))
                except UserError:
                    pass  # not a segmenter: the check reports PSNR only
        return self._segmenter

    # ------------------------------------------------------------------ sampling

    def sampler(self, respacing: str | None = None):
        """The respaced diffusion used for sampling (default ``diffusion.timestep_respacing``)."""
        respacing = str(self.cfg.diffusion.timestep_respacing if respacing is None else respacing)
        if self._sampler is None or self._sampler[0] != respacing:
            self._sampler = (respacing, build_diffusion(self.cfg, respacing))
        return self._sampler[1]

    @torch.no_grad()
    def sample(
        self,
        indices: Sequence[int],
        *,
        respacing: str | None = None,
        seed: int | None = None,
        callback: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Frames (N, 1, H, W) in [-1, 1] from the EMA weights; frame i's noise is seeded by
        (seed, indices[i]) so it does not depend on the batch it is drawn in."""
        seed = int(self.cfg.seed if seed is None else seed)
        h, w = (int(s) for s in self.cfg.data.image_size)
        diffusion = self.sampler(respacing)
        was_training = self.ema_model.training
        self.ema_model.eval()
        bf16 = str(self._trainer.precision if self._trainer else "").startswith("bf16")
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            x = diffusion.p_sample_loop(
                self.ema_model,
                (len(indices), IN_CHANNELS, h, w),
                generators=generators_for(seed, indices),
                device=self.device,
                callback=callback,
            )
        self.ema_model.train(was_training)
        return x.float().clamp(-1, 1)

    def log_samples(self) -> None:
        from diffice.io import to_uint8
        from diffice.modules.common import log_image

        n = int(self.cfg.ddpm.sample_count)
        if n <= 0:
            return
        frames = self.sample(range(n))
        grid = make_grid([to_uint8(f) for f in frames])
        log_image(self, "ddpm/samples", grid, caption=f"EMA samples, step {self.global_step}")


# ---------------------------------------------------------------------- helpers


# what must agree for a checkpoint to be resumed as the same model (dropout, lr etc. may change)
ARCH_KEYS = (
    "data.image_size",
    *(f"unet.{k}" for k in ("model_channels", "channel_mult", "num_res_blocks", "attention_resolutions",
                            "num_head_channels", "resblock_updown", "use_scale_shift_norm")),
    "diffusion.steps",
    "diffusion.noise_schedule",
    "diffusion.learn_sigma",
    "unet.coord_channels",
)
# keys older checkpoints do not carry, and the value they had
_OLD_DEFAULTS = {"unet.coord_channels": False}


def _get(d: dict, dotted: str):
    try:
        for part in dotted.split("."):
            d = d[part]
    except KeyError:
        if dotted in _OLD_DEFAULTS:
            return _OLD_DEFAULTS[dotted]
        raise
    return d


def widen_inputs(state: dict, target: dict) -> bool:
    """Widen ``state``'s input convolution in place to ``target``'s extra input channels (coordinates,
    a layout) at zero weight: the widened network computes what the source did until training moves them."""
    key = next(k for k in target if k.endswith("conv_in.weight"))
    have, want = state[key], target[key]
    if have.shape == want.shape:
        return False
    state[key] = torch.cat([have, have.new_zeros(have.shape[0], want.shape[1] - have.shape[1], *have.shape[2:])], 1)
    return True


def check_compatible(path: str | os.PathLike, ckpt: dict, cfg: DictConfig, keys: Sequence[str] = ARCH_KEYS,
                     what: str = "DDPM") -> None:
    """UserError unless the DDPM checkpoint ``ckpt`` has grey input and the same ``keys`` as ``cfg``
    (``what`` names the model in the message: the synthesis layer checks its own checkpoints so)."""
    weight = ckpt.get("state_dict", {}).get("model.net.conv_in.weight")
    coords = 2 if _get(ckpt["diffice"]["config"], "unet.coord_channels") else 0
    if weight is not None and weight.shape[1] != IN_CHANNELS + coords:
        raise UserError(f"{path}: the DDPM takes {weight.shape[1]}-channel frames; diffice frames are grey ({IN_CHANNELS} channel)")
    theirs, ours = ckpt["diffice"]["config"], to_dict(cfg)
    for key in keys:
        a, b = _get(theirs, key), _get(ours, key)
        if a != b:
            label = "image size" if key == "data.image_size" else key
            raise UserError(
                f"{path}: the {what} was trained with {key}={a}, the config asks for {b}; "
                f"set {key}={a} or train a {what} for this {label} (another paths.runs)"
            )


def load_ddpm(path: str | os.PathLike, cfg: DictConfig | None = None, map_location: str | torch.device = "cpu",
              keys: Sequence[str] = ("data.image_size",)) -> DDPMModule:
    """A trained DDPM (eval mode) from its checkpoint, read once; with ``cfg``, its ``keys`` (default: the
    frame size) must match ``cfg``'s. ``.trained_steps`` is the checkpoint's global step."""
    ckpt = read_checkpoint(path, "ddpm")
    stored = _stored(ckpt)
    check_compatible(path, ckpt, cfg if cfg is not None else stored, keys=keys)
    module = DDPMModule(stored, load_pretrained=False)
    from diffice.modules.pack import unpack_state

    try:
        module.load_state_dict(unpack_state("ddpm", ckpt["state_dict"]))
    except (RuntimeError, KeyError) as err:
        raise UserError(f"{path}: weights do not fit the DDPM its config describes ({str(err).splitlines()[0]})") from err
    module.trained_steps = int(ckpt.get("global_step", 0))
    return module.to(map_location).eval()


def _stored(ckpt: dict) -> DictConfig:
    from diffice.config import from_dict

    return from_dict(ckpt["diffice"]["config"])


def train_ddpm(cfg: DictConfig, datamodule=None, **trainer_overrides) -> Path:
    """Train (or resume) the DDPM of ``cfg`` into ``{paths.runs}/ddpm``; returns ``last.ckpt``.

    A ``last.ckpt`` already there is resumed (step count, optimizer and EMA included) after
    checking that it describes the same model and frame size.
    """
    from diffice.data import DiffIceDataModule
    from diffice.modules.common import LAST, run_dir
    from diffice.modules.training import fit, stage_lock

    size = cfg.ddpm.patch_size
    if size:
        frame = [int(s) for s in cfg.data.image_size]
        if len(size) != 2 or any(int(p) > f for p, f in zip(size, frame)):
            raise UserError(f"ddpm.patch_size={list(size)}: expected [height, width] no larger than data.image_size={frame}")
        if not cfg.unet.coord_channels:
            raise UserError("ddpm.patch_size: patch training needs unet.coord_channels=true (the UNet must know where "
                            "each patch lies in the frame)")
    with stage_lock(cfg, "ddpm"):  # one writer per run folder, from the resume check on
        last = run_dir(cfg, "ddpm") / LAST
        if last.exists():
            ckpt = read_checkpoint(last, "ddpm")
            check_compatible(last, ckpt, cfg)
            del ckpt
        dm = datamodule if datamodule is not None else DiffIceDataModule(cfg)
        torch.manual_seed(int(cfg.seed))  # the initial weights are a function of the seed (as the judges')
        module = DDPMModule(cfg)
        if cfg.ddpm.init_ckpt and not last.exists():
            module.start_from(str(cfg.ddpm.init_ckpt))
        return fit(cfg, "ddpm", module, dm, int(cfg.ddpm.max_steps), **trainer_overrides)


# ----------------------------------------------------------------------------- ddpm-check


def segment_fn(path: str, device: torch.device | str):
    """``segment(x) -> logits`` of a segmenter checkpoint, or of the guide's segmenter in a
    classifier checkpoint (the demo pack ships the segmenter inside the guide)."""
    module = load_checkpoint(path, None, map_location=device)  # the file read once, whatever its kind
    if module.kind not in ("segmenter", "classifier"):
        raise UserError(f"--segmenter {path}: is a {module.kind} checkpoint, expected a segmenter or classifier checkpoint")
    if module.kind == "segmenter":
        return module.net, list(module.cfg.data.classes)
    return module.guide.segment, list(module.cfg.guide.segmenter_classes or module.cfg.data.classes)


def check_sp_frames(module, cfg, segment, classes, *, split: str = "test", count: int = 32, batch_size: int = 16,
                    device: torch.device | str = "cpu", keep: int = 0) -> dict:
    """``ddpm_check`` of DDPM ``module`` on the first ``count`` standard planes of ``split``, at
    ``cfg.cf``'s tau, respacing, noise convention and clipping (the counterfactuals' settings)."""
    from diffice.counterfactual.check import ddpm_check, pass_options
    from diffice.data import DiffIceDataModule

    dm = DiffIceDataModule(cfg)
    dm.setup()
    ds = dm.dataset(split, label="SP")
    n = min(len(ds), count)
    if n == 0:
        raise UserError(f"the {split} split has no standard-plane frame to reconstruct")

    def batches():
        for s in range(0, n, batch_size):
            items = [ds[i] for i in range(s, min(n, s + batch_size))]
            yield torch.stack([it["image"] for it in items]).to(device), [int(it["index"]) for it in items]

    from diffice.modules.counterfactual import load_brain_judge

    judge = load_brain_judge(cfg)  # the official SonoNet-16 when features.sononet_weights names it (real frames)
    return ddpm_check(module.sampler(str(cfg.cf.respacing)), module.ema_model, segment, batches(), tau=int(cfg.cf.tau),
                      classes=classes, seed=int(cfg.seed), keep=keep, **pass_options(cfg.cf),
                      judge=judge.to(device) if judge is not None else None)
