"""ClassifierModule (checkpoint kind "classifier"): the standard-plane guide f(x) = l(s(x), x).

s comes from ``cfg.guide.segmenter_ckpt`` (a "segmenter" checkpoint) and stays frozen; only
the predictor l trains (paper, Sec. 4: "we train ... the classifier's predictor l
sequentially keeping the weights of [s] fixed"). s's weights are part of this module's
state dict, and s's architecture and class list are copied into this module's config
(``segmenter.*``, ``guide.segmenter_classes``), so ``load_checkpoint(path, "classifier")``
rebuilds the whole guide from the classifier checkpoint alone.

Robust guidance (``guide.x0_prob`` > 0): guidance differentiates the guide at the DDPM's
one-step estimates x̂0|t, which are smoother than any training frame; a guide that never saw
them has no meaningful gradient there and is fooled by texture. With probability
``x0_prob`` a training frame is replaced by x̂0|t of the (frozen, EMA) DDPM at
``guide.ddpm_ckpt``, t drawn uniformly from the respaced steps 0..cf.tau−1 of cf.respacing,
keeping the frame's label.

Adversarial training (``guide.adv_eps`` > 0, after Madry et al., ICLR 2018): each training frame
(after the x̂0 replacement) is moved within an L2 ball of radius ``adv_eps``·sqrt(H·W) by
``adv_steps`` steps of projected, normalised gradient ascent on the guide's loss (step 2.5·radius /
steps, the guide in eval mode, the result kept in [-1, 1]) and trained on with its label. Guidance
pushes a frame along the guide's gradient; a guide that is fooled by small changes is convinced by
them instead of by a repair (robust classifiers give perceptually aligned gradients: Santurkar et al.
2019; Augustin et al. 2022).

Transfer (``guide.pretrained``: the authors' ``SonoNet16.npz``): l's stages start from the official
weights (:func:`diffice.nets.sononet.transfer_official`; the segmentation channels from zero, a new
one-logit head) and the image channel is standardised per frame as the release does;
``guide.backbone_lr`` fine-tunes the stages more slowly than the head.

Loss: binary cross-entropy on the SP logit with ``pos_weight`` = n_NSP / n_SP of the training
split (or ``guide.pos_weight``), frames with label -1 ignored. Validation: balanced accuracy
(mean of sensitivity and specificity at p = 0.5), AUROC, and a confusion-matrix image.

Decision threshold (``guide.calibrate``): after training, :func:`balanced_threshold` on the
training and validation frames' probabilities (or the validation split's alone) is written into the
checkpoint (the guide's ``threshold`` buffer, :mod:`diffice.nets.guide`; ``modules.judges.calibrate_guide``);
the test split's metrics are then reported at it.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F

from diffice.errors import UserError
from diffice.metrics.classification import accuracy, auroc, balanced_accuracy
from diffice.modules.common import DifficeModule, as_config, checkpoint_config, load_checkpoint, log_image
from diffice.nets.guide import Guide
from diffice.nets.segmenter import build_segmenter


def binary_report(probs: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5) -> dict[str, float]:
    """Balanced accuracy, AUROC, sensitivity, specificity and counts, SP when p > ``threshold``
    (the guide's decision rule; no probability lies exactly on a threshold between two of them)."""
    keep = labels >= 0
    p, y = probs[keep].float(), labels[keep].long()
    pred = (p > float(threshold)).long()
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    return {
        "balanced_accuracy": balanced_accuracy(y, pred),
        "auroc": auroc(p, y),
        "sensitivity": tp / (tp + fn) if tp + fn else math.nan,
        "specificity": tn / (tn + fp) if tn + fp else math.nan,
        "accuracy": accuracy(y, pred),
        "tp": tp, "tn": tn, "fp": fp, "fn": fn, "n_sp": tp + fn, "n_nsp": tn + fp,
    }


def balanced_threshold(probs, labels) -> float:
    """The decision threshold t (SP when p > t) with the highest balanced accuracy on these frames
    (labels -1 skipped): candidates are 0.5 and the midpoints between consecutive distinct
    probabilities; among equally good ones, the one nearest 0.5. 0.5 when a class is missing."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    keep = y >= 0
    p, y = p[keep], y[keep]
    pos, neg = p[y == 1], p[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return 0.5
    u = np.unique(p)
    cands = np.unique(np.concatenate([[0.5], (u[:-1] + u[1:]) / 2.0]))
    sens = (pos[None, :] > cands[:, None]).mean(1)
    spec = (neg[None, :] <= cands[:, None]).mean(1)
    ba = (sens + spec) / 2.0
    best = np.flatnonzero(ba >= ba.max() - 1e-12)
    return float(cands[best[np.argmin(np.abs(cands[best] - 0.5))]])


def confusion_image(rep: dict[str, float], cell: int = 64) -> np.ndarray:
    """A 2x2 confusion matrix (rows truth NSP/SP, columns prediction NSP/SP) as RGB uint8."""
    from PIL import Image, ImageDraw

    m = np.array([[rep["tn"], rep["fp"]], [rep["fn"], rep["tp"]]], dtype=np.float64)
    rows = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    pad = 40
    img = Image.new("RGB", (pad + 2 * cell, pad + 2 * cell), "white")
    d = ImageDraw.Draw(img)
    d.text((pad, 2), "pred NSP  SP", fill="black")
    d.text((2, pad + cell // 2), "NSP", fill="black")
    d.text((2, pad + cell + cell // 2), "SP", fill="black")
    for i in range(2):
        for j in range(2):
            shade = int(255 - 200 * frac[i, j])
            x0, y0 = pad + j * cell, pad + i * cell
            d.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(shade, shade, 255), outline="black")
            d.text((x0 + 8, y0 + cell // 2 - 6), f"{int(m[i, j])}", fill="black" if shade > 120 else "white")
    return np.asarray(img)


def _train_labels(datamodule) -> torch.Tensor:
    ds = datamodule.dataset("train")
    labels = getattr(ds, "labels", None)
    if labels is None:
        labels = [int(ds[i]["label"]) for i in range(len(ds))]
    return torch.as_tensor(np.asarray(labels), dtype=torch.long)


class ClassifierModule(DifficeModule):
    kind = "classifier"

    def __init__(self, cfg, *, load_pretrained: bool = True):
        cfg = copy.deepcopy(as_config(cfg))
        init = cfg.guide.init_ckpt if load_pretrained else None
        if init:  # a guide continued: its own s and l (the segmenter's config from the guide's)
            init_cfg = checkpoint_config(init, "classifier")
            cfg.segmenter = copy.deepcopy(init_cfg.segmenter)
            cfg.guide.segmenter_classes = list(init_cfg.guide.segmenter_classes or init_cfg.data.classes)
            segmenter = build_segmenter(cfg, len(cfg.guide.segmenter_classes), load_pretrained=False)
        elif load_pretrained:
            seg_path = cfg.guide.segmenter_ckpt
            seg_cfg = checkpoint_config(seg_path, "segmenter")
            # this module's config describes the segmenter it contains
            cfg.segmenter = copy.deepcopy(seg_cfg.segmenter)
            cfg.guide.segmenter_classes = list(seg_cfg.data.classes)
            segmenter = load_checkpoint(seg_path, "segmenter").net
        else:
            classes = list(cfg.guide.segmenter_classes or cfg.data.classes)
            segmenter = build_segmenter(cfg, len(classes), load_pretrained=False)
        super().__init__(cfg)
        k = len(cfg.guide.segmenter_classes or cfg.data.classes)
        pretrained = cfg.guide.pretrained
        self.guide = Guide(segmenter, k, cfg.guide.sononet, cfg.guide.grad_through_segmenter,
                           standardize_image=bool(pretrained), raw_channel=bool(cfg.guide.raw_channel))
        if init:
            self._start_from(str(init))
        elif pretrained and load_pretrained:
            from diffice.nets.sononet import SonoNet, transfer_official

            transfer_official(self.guide.predictor, SonoNet.from_official(pretrained, features=cfg.guide.sononet))
        # 0 = "not yet computed from the training split" (saved, so a resumed run keeps it)
        self.register_buffer("pos_weight", torch.tensor(float(cfg.guide.pos_weight or 0.0)))
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._x0 = None  # (denoiser, diffusion, tau) for guide.x0_prob, not part of the state dict

    def _start_from(self, path: str) -> None:
        """``guide.init_ckpt``: s and l start from that guide's weights (the same architecture)."""
        source = load_checkpoint(path, "classifier").guide.state_dict()
        ours = self.guide.state_dict()
        bad = sorted(k for k in ours if k not in source or source[k].shape != ours[k].shape)
        if bad or set(source) - set(ours):
            raise UserError(f"{path}: guide.init_ckpt has another architecture than this config's guide "
                            f"(first difference: {(bad or sorted(set(source) - set(ours)))[0]}); match guide.sononet, guide.raw_channel, guide.pretrained")
        self.guide.load_state_dict(source)
        print(f"guide: starts from the weights of {path}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.guide(x)

    def input_checkpoints(self) -> dict[str, str]:
        """The frozen segmenter (and, with ``guide.x0_prob``, the DDPM of its x̂0 estimates)."""
        seg = self.cfg.guide.init_ckpt or self.cfg.guide.segmenter_ckpt
        out = {"segmenter": str(seg)} if seg else {}
        if float(self.cfg.guide.x0_prob) > 0 and self.cfg.guide.ddpm_ckpt:
            out["ddpm"] = str(self.cfg.guide.ddpm_ckpt)
        return out

    def on_fit_start(self) -> None:
        if float(self.pos_weight) > 0:
            return
        dm = self.trainer.datamodule
        labels = _train_labels(dm) if dm is not None else torch.zeros(0, dtype=torch.long)
        n_sp, n_nsp = int((labels == 1).sum()), int((labels == 0).sum())
        if n_sp == 0 or n_nsp == 0:
            raise UserError(
                f"train-classifier: the training split has {n_sp} SP and {n_nsp} NSP frames; "
                "the guide needs both (check the data's labels and split)"
            )
        self.pos_weight.fill_(n_nsp / n_sp)
        print(f"classifier: training split has {n_sp} SP / {n_nsp} NSP frames; pos_weight = {n_nsp / n_sp:.2f}")

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        keep = labels >= 0
        if not bool(keep.any()):
            return logits.sum() * 0.0
        pw = self.pos_weight if float(self.pos_weight) > 0 else None
        return F.binary_cross_entropy_with_logits(logits[keep], labels[keep].float(), pos_weight=pw)

    def _estimator(self):
        """(DDPM EMA denoiser, respaced diffusion) for x0_prob, loaded once; None when unused."""
        if float(self.cfg.guide.x0_prob) <= 0:
            return None
        if self._x0 is None:
            from diffice.diffusion import build_diffusion

            ddpm = load_checkpoint(self.cfg.guide.ddpm_ckpt, "ddpm")
            if list(ddpm.cfg.data.image_size) != list(self.cfg.data.image_size):
                raise UserError(f"guide.ddpm_ckpt: {self.cfg.guide.ddpm_ckpt} was trained at image size "
                                f"{list(ddpm.cfg.data.image_size)}, the data is {list(self.cfg.data.image_size)}")
            diffusion = build_diffusion(ddpm.cfg, respacing=str(self.cfg.cf.respacing))
            tau = min(int(self.cfg.cf.tau), diffusion.num_timesteps)
            self._x0 = (ddpm.ema_model.to(self.device).requires_grad_(False).eval(), diffusion, tau)
        return self._x0

    @torch.no_grad()
    def one_step_estimates(self, x: torch.Tensor) -> torch.Tensor:
        """x with a random ``guide.x0_prob`` of its frames replaced by the DDPM's x̂0|t, t < cf.tau."""
        est = self._estimator()
        if est is None:
            return x
        model, diffusion, tau = est
        pick = torch.rand(x.shape[0], device=x.device) < float(self.cfg.guide.x0_prob)
        if not bool(pick.any()):
            return x
        xs = x[pick]
        t = torch.randint(0, tau, (xs.shape[0],), device=x.device)
        x_t = diffusion.q_sample(xs, t, torch.randn_like(xs))
        x0 = diffusion.p_mean_variance(model, x_t, t, clip_denoised=True)["pred_xstart"]
        out = x.clone()
        out[pick] = x0.to(out.dtype)
        return out

    def adversarial(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """x moved within the ``guide.adv_eps`` L2 ball to where the loss is largest (module doc)."""
        eps, steps = float(self.cfg.guide.adv_eps), int(self.cfg.guide.adv_steps)
        if eps <= 0 or not bool((labels >= 0).any()):
            return x
        was = self.guide.training
        self.guide.eval()  # the attack reads BatchNorm's running statistics and leaves them as they are
        try:
            return l2_ascent(lambda v: self._loss(self.guide(v), labels), x, eps * math.sqrt(x[0, 0].numel()), steps)
        finally:
            self.guide.train(was)

    def training_step(self, batch, batch_idx):
        logits = self.guide(self.adversarial(self.one_step_estimates(batch["image"]), batch["label"]))
        loss = self._loss(logits, batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=logits.shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, batch, batch_idx):
        logits = self.guide(batch["image"])
        self.log("val/loss", self._loss(logits, batch["label"]), batch_size=logits.shape[0], sync_dist=True)
        self._val.append((torch.sigmoid(logits).detach().float(), batch["label"].detach(), batch["index"].detach()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        # the frames of every process pooled (each once): the metrics one process would log, the same on every rank
        pooled = self.pool_frames({"p": torch.cat([p for p, _, _ in self._val]), "y": torch.cat([y for _, y, _ in self._val])},
                                  torch.cat([i for _, _, i in self._val]))
        rep = binary_report(pooled["p"].cpu(), pooled["y"].cpu())
        for key in ("balanced_accuracy", "auroc", "sensitivity", "specificity"):
            if not math.isnan(rep[key]):
                self.log(f"val/{key}", rep[key], prog_bar=key == "balanced_accuracy")
        log_image(self, "val/confusion", confusion_image(rep), caption="rows: truth NSP/SP; columns: prediction")

    def configure_optimizers(self):
        # only the predictor l trains; s is frozen. guide.backbone_lr: the five stages learn at their own rate
        # (a pretrained backbone is fine-tuned slowly while the new head learns at guide.lr)
        g, l_ = self.cfg.guide, self.guide.predictor
        if g.backbone_lr is None:  # one group, as guides trained before the key existed resume
            return torch.optim.AdamW(l_.parameters(), lr=float(g.lr), weight_decay=1e-4)
        groups = [{"params": list(l_.stages.parameters()), "lr": float(g.backbone_lr)},
                  {"params": list(l_.adaptation.parameters()), "lr": float(g.lr)}]
        return torch.optim.AdamW(groups, lr=float(g.lr), weight_decay=1e-4)


def l2_ascent(objective, x: torch.Tensor, radius: float, steps: int) -> torch.Tensor:
    """x moved by ``steps`` steps of normalised gradient ascent on the scalar ``objective(x)``, each of
    2.5·radius/steps, projected back into the L2 ball of ``radius`` around each frame and into [-1, 1]
    (the attack of ``guide.adv_eps``; ``bench/guide_attack.py``)."""
    x = x.detach()
    delta = torch.zeros_like(x)
    with torch.enable_grad():
        for _ in range(steps):
            delta.requires_grad_(True)
            (g,) = torch.autograd.grad(objective(x + delta), delta)
            g = g.float()
            step = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            delta = delta.detach() + (2.5 * radius / steps) * step.to(x.dtype)
            norm = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            delta = delta * (radius / norm.clamp_min(1e-12)).clamp(max=1.0)
            delta = (x + delta).clamp(-1.0, 1.0) - x
    return (x + delta).detach()


@torch.no_grad()
def guide_probabilities(guide: Guide, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """(SP probabilities, labels) of a guide over a loader."""
    guide.eval()
    device = next(guide.parameters()).device
    probs, labels = [], []
    for batch in loader:
        probs.append(torch.sigmoid(guide(batch["image"].to(device)).float()).cpu())
        labels.append(batch["label"])
    return torch.cat(probs), torch.cat(labels)


def evaluate_classifier(guide: Guide, loader) -> dict[str, float]:
    """Balanced accuracy, AUROC etc. of a guide over a loader (labels -1 skipped) at its decision
    threshold (``threshold``; and the balanced accuracy at 0.5 beside it when that differs)."""
    from diffice.nets.guide import decision_threshold

    probs, labels = guide_probabilities(guide, loader)
    t = decision_threshold(guide)
    rep = binary_report(probs, labels, t)
    rep["threshold"] = t
    if t != 0.5:
        rep["balanced_accuracy_at_0.5"] = binary_report(probs, labels)["balanced_accuracy"]
    return rep
