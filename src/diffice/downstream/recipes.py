"""Per-model training recipes of the downstream study (``downstream.recipes``).

One recipe does not fit six families trained from scratch on small frames: a ResNet learns the
planes at a learning rate where a ViT or a ConvNeXt diverges to the majority class, and a
stride-32 EfficientNet / MobileNet stem leaves a 2x3 map of a 64x80 frame. The global
``downstream.*`` training keys (:data:`RECIPE_KEYS`) are every model's recipe;
``downstream.recipes`` maps a timm model name to overrides of some of them::

    downstream:
      lr: 2.0e-3
      recipes:
        vit_tiny_patch16_224: {lr: 1.0e-3, warmup: 0.3, model_kwargs: {patch_size: 8}}

:func:`model_recipe` merges them (``model_kwargs`` key by key, the recipe's winning);
:func:`check_recipes` refuses an unknown model, an unknown key or a value out of range in one
line that names the key (``downstream.recipes.NAME.KEY``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diffice.errors import UserError

# the downstream.* keys a recipe may override, i.e. the keys of one training
RECIPE_KEYS = ("steps", "batch_size", "lr", "weight_decay", "schedule", "warmup", "augment", "flips",
               "label_smoothing", "scale", "model_kwargs")


def _number(where: str, value: Any, *, integer: bool = False, low: float | None = None, high: float | None = None,
            open_low: bool = False, open_high: bool = False) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
        raise UserError(f"{where}: must be {'an integer' if integer else 'a number'}, got {value!r}")
    if low is not None and (value <= low if open_low else value < low):
        raise UserError(f"{where}: must be {'>' if open_low else '>='} {low}, got {value}")
    if high is not None and (value >= high if open_high else value > high):
        raise UserError(f"{where}: must be {'<' if open_high else '<='} {high}, got {value}")
    return value


def check_training(values: Mapping[str, Any], where: str) -> None:
    """Refuse a value of :data:`RECIPE_KEYS` out of range (``where``: the prefix of the key's name)."""
    checks = {
        "steps": dict(integer=True, low=1), "batch_size": dict(integer=True, low=1),
        "lr": dict(low=0.0, open_low=True), "weight_decay": dict(low=0.0),
        "warmup": dict(low=0.0, high=1.0), "label_smoothing": dict(low=0.0, high=1.0, open_high=True),
        "scale": dict(low=0.0, open_low=True),
    }
    for key, value in values.items():
        name = f"{where}{key}"
        if key in checks:
            _number(name, value, **checks[key])
        elif key == "schedule" and value not in ("cosine", "constant"):
            raise UserError(f"{name}: '{value}' is not cosine or constant")
        elif key in ("augment", "flips") and not isinstance(value, bool):
            raise UserError(f"{name}: must be true or false, got {value!r}")
        elif key == "model_kwargs" and (not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value)):
            raise UserError(f"{name}: must be a mapping of timm.create_model keyword arguments, got {value!r}")


def check_recipes(recipes: Mapping[str, Any] | None) -> dict[str, dict]:
    """``downstream.recipes`` as plain dicts, validated: every name a timm model, every key one of
    :data:`RECIPE_KEYS`, every value in range."""
    if recipes is None:
        return {}
    if not isinstance(recipes, Mapping):
        raise UserError(f"downstream.recipes: must map timm model names to overrides, got {recipes!r}")
    import timm

    out = {}
    for model, over in recipes.items():
        where = f"downstream.recipes.{model}"
        if not timm.is_model(str(model)):
            raise UserError(f"{where}: '{model}' is not a timm model (see timm.list_models())")
        over = {} if over is None else over
        if not isinstance(over, Mapping):
            raise UserError(f"{where}: must be a mapping of {', '.join(RECIPE_KEYS)}, got {over!r}")
        for key in over:
            if key not in RECIPE_KEYS:
                raise UserError(f"{where}.{key}: unknown key (a recipe sets {', '.join(RECIPE_KEYS)})")
        check_training(over, where + ".")
        out[str(model)] = {k: (dict(v) if k == "model_kwargs" else v) for k, v in over.items()}
    return out


def model_recipe(settings: Mapping[str, Any], model: str) -> dict:
    """The training keys (:data:`RECIPE_KEYS`) of ``model``: the global ``settings`` with the
    model's recipe over them (``model_kwargs`` merged key by key)."""
    out = {k: settings[k] for k in RECIPE_KEYS}
    out["model_kwargs"] = dict(out["model_kwargs"] or {})
    over = dict((settings.get("recipes") or {}).get(model) or {})
    kwargs = over.pop("model_kwargs", None) or {}
    out.update(over)
    out["model_kwargs"].update(kwargs)
    return out
