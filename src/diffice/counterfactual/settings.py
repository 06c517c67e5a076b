"""What a counterfactual run does: :class:`CFSettings`, built from the ``cf`` config section and
checked before anything runs (every error names its ``cf.*`` key)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

from diffice.config import CounterfactualConfig
from diffice.counterfactual.sparse import SparseSettings
from diffice.errors import UserError
from diffice.nets.autocast import PRECISIONS

METHODS = ("diff-ice", "diff-ice1", "diff-ice1-xt", "dime")
LAMBDA_SEARCH = ("restart", "continue")
NOISE_CONVENTIONS = ("diffice", "dime")
ENCODINGS = ("noise", "ddim")
GRAD_AT = ("current", "previous")
X0_METHODS = ("diff-ice", "diff-ice1")
# trainer.precision values a counterfactual run takes (Lightning's short names resolved): under the
# mixed ones Lightning's autocast reaches the denoiser's forwards without gradient and the judges,
# while the guidance runs in float32 (or bf16 for its networks with cf.autocast=bf16)
PRECISIONS_CF = {"32-true": "32-true", "32": "32-true", "bf16-mixed": "bf16-mixed", "bf16": "bf16-mixed",
                 "16-mixed": "16-mixed", "16": "16-mixed"}


_CF = CounterfactualConfig()  # the defaults live in the config schema, once


def precision_name(value) -> str:
    """``trainer.precision`` as Lightning's full name (``32`` -> ``32-true``); other values as they are."""
    return PRECISIONS_CF.get(str(value), str(value))


def check_precision(value) -> str:
    """``trainer.precision`` for a counterfactual run, or a one-line error naming the key: a "-true"
    precision other than 32 casts the frozen networks' weights (and the images) to another dtype,
    which the predict step (float32 images, float32 guidance) does not take."""
    name = precision_name(value)
    if name not in PRECISIONS_CF.values():
        raise UserError(f"trainer.precision: '{value}' is not one of 32-true, bf16-mixed, 16-mixed for counterfactuals "
                        f"(their guidance gradient is float32; cf.autocast=bf16 runs its networks in bf16)")
    return name


@dataclass
class CFSettings:
    """What a counterfactual run does; built from the ``cf`` config section."""

    method: str = _CF.method
    tau: int = _CF.tau
    iterations: int = _CF.iterations
    lambda_c: Sequence[float] = tuple(_CF.lambda_c)
    lambda_p: float = _CF.lambda_p
    adaptive: bool = _CF.adaptive
    stop_threshold: float = _CF.stop_threshold
    clip_denoised: bool = _CF.clip_denoised
    noise_convention: str = _CF.noise_convention
    encode: str = _CF.encode  # noise: eq. (1) and sampled steps | ddim: DDIM inversion and deterministic steps
    grad_at: str = _CF.grad_at
    grad_sigma: float = _CF.grad_sigma  # > 0: the guidance gradient low-passed at σ px, its per-frame norm kept
    mask: bool = _CF.mask
    mask_threshold: float = _CF.mask_threshold
    mask_dilation: int = _CF.mask_dilation
    mask_warmup: int = _CF.mask_warmup
    seed: int = 0
    net_batch: int | None = None  # every network call at exactly this many frames (None: at the batch's size)
    autocast: str = _CF.autocast  # none | bf16: the networks under bf16 autocast (diffusion maths stay float32)
    lambda_search: str = _CF.lambda_search  # restart: each λc from the input | continue: from the last λc's result
    retry_iterations: int = _CF.retry_iterations  # lambda_search=continue: passes each further λc runs
    sparse: SparseSettings = field(default_factory=SparseSettings)  # the sparse refinement (cf.sparse*)

    @classmethod
    def from_config(cls, cfg) -> CFSettings:
        """The settings of ``cfg.cf`` (each field its ``cf`` key of that name, typed by the schema),
        ``cfg.seed`` and the ``cf.sparse*`` keys."""
        c = cfg.cf
        kw = {f.name: c[f.name] for f in fields(cls) if f.name not in ("seed", "sparse")}
        kw["lambda_c"] = [float(v) for v in kw["lambda_c"]]
        return cls(**kw, seed=int(cfg.seed), sparse=SparseSettings.from_config(c))

    @property
    def passes(self) -> int:
        """Diff-ICE iterations L; the single-pass methods run one."""
        return self.iterations if self.method == "diff-ice" else 1

    def validate(self, num_timesteps: int | None = None) -> None:
        if self.method not in METHODS:
            raise UserError(f"cf.method: '{self.method}' is not one of {', '.join(METHODS)}")
        if self.tau < 1 or (num_timesteps is not None and self.tau > num_timesteps):
            raise UserError(f"cf.tau: {self.tau} must lie in 1..{num_timesteps or 'cf.respacing steps'}")
        if self.noise_convention not in NOISE_CONVENTIONS:
            raise UserError(f"cf.noise_convention: '{self.noise_convention}' is not one of {', '.join(NOISE_CONVENTIONS)}")
        if self.noise_convention == "dime" and num_timesteps is not None and self.tau >= num_timesteps:
            raise UserError(f"cf.tau: {self.tau} with cf.noise_convention=dime noises to index tau, which needs tau < {num_timesteps}")
        if self.encode not in ENCODINGS:
            raise UserError(f"cf.encode: '{self.encode}' is not one of {', '.join(ENCODINGS)}")
        if self.encode == "ddim":
            clashes = [key for key, clash in ((f"cf.method={self.method}", self.method not in X0_METHODS),
                                              (f"cf.grad_at={self.grad_at}", self.grad_at != "current"),
                                              ("cf.mask=true", self.mask),
                                              (f"cf.noise_convention={self.noise_convention}", self.noise_convention != "diffice"))
                       if clash]
            if clashes:
                raise UserError(f"cf.encode=ddim applies to {' and '.join(X0_METHODS)} with cf.grad_at=current, cf.mask=false and "
                                f"cf.noise_convention=diffice, not with {', '.join(clashes)}")
        if self.grad_sigma < 0:
            raise UserError(f"cf.grad_sigma: {self.grad_sigma} must be 0 (off) or a Gaussian σ in pixels")
        if self.grad_at not in GRAD_AT:
            raise UserError(f"cf.grad_at: '{self.grad_at}' is not one of {', '.join(GRAD_AT)}")
        if (self.grad_at != "current" or self.mask) and self.method not in X0_METHODS:
            raise UserError(f"cf.grad_at=previous and cf.mask apply to {' and '.join(X0_METHODS)} (gradient at x0), "
                            f"not to cf.method={self.method}")
        if self.mask_dilation < 1 or self.mask_dilation % 2 == 0:
            raise UserError(f"cf.mask_dilation: {self.mask_dilation} must be an odd number of pixels")
        if not 0.0 <= self.mask_threshold <= 1.0:
            raise UserError(f"cf.mask_threshold: {self.mask_threshold} must lie in [0, 1]")
        if self.iterations < 1:
            raise UserError(f"cf.iterations: {self.iterations} must be at least 1")
        if not self.lambda_c:
            raise UserError("cf.lambda_c: give at least one classifier-loss weight, e.g. cf.lambda_c=[40,60,80]")
        if not 0.0 < self.stop_threshold <= 1.0:
            raise UserError(f"cf.stop_threshold: {self.stop_threshold} must lie in (0, 1]")
        if self.autocast not in PRECISIONS:
            raise UserError(f"cf.autocast: '{self.autocast}' is not one of {', '.join(PRECISIONS)}")
        self.sparse.validate(num_timesteps)
        if self.sparse.on and self.method not in X0_METHODS:
            raise UserError(f"cf.sparse applies to {' and '.join(X0_METHODS)} (x0 methods), not to cf.method={self.method}")
        if self.lambda_search not in LAMBDA_SEARCH:
            raise UserError(f"cf.lambda_search: '{self.lambda_search}' is not one of {', '.join(LAMBDA_SEARCH)}")
        if self.retry_iterations < 1:
            raise UserError(f"cf.retry_iterations: {self.retry_iterations} must be at least 1")
        if self.net_batch is not None and self.net_batch < 1:
            raise UserError(f"cf.net_batch: {self.net_batch} must be at least 1 (or null)")


__all__ = ["ENCODINGS", "GRAD_AT", "LAMBDA_SEARCH", "METHODS", "NOISE_CONVENTIONS", "PRECISIONS_CF", "X0_METHODS",
           "CFSettings", "check_precision", "precision_name"]
