"""The feature networks of a run (:func:`diffice.nets.features.load_feature_nets`) with the DDPM
and the oracle loaded from the run's checkpoints when the caller does not have them."""

from __future__ import annotations

from torch import nn

from diffice.nets.features import FeatureNets, load_feature_nets


def feature_nets(cfg, guide: nn.Module | None = None, *, ddpm: nn.Module | None = None, oracle: nn.Module | None = None,
                 need_perceptual: bool = True) -> FeatureNets:
    """``load_feature_nets`` with ``cf.ddpm_ckpt`` (EMA denoiser) and ``cf.oracle_ckpt`` read only
    when the features need them and ``ddpm`` / ``oracle`` are not given."""
    from diffice.modules.common import load_checkpoint

    def load_ddpm() -> nn.Module:
        return load_checkpoint(cfg.cf.ddpm_ckpt, "ddpm").ema_model

    def load_oracle() -> nn.Module:
        return load_checkpoint(cfg.cf.oracle_ckpt, "oracle").oracle

    return load_feature_nets(cfg, guide, ddpm=ddpm if ddpm is not None else load_ddpm,
                             oracle=oracle if oracle is not None else load_oracle, need_perceptual=need_perceptual)
