"""Per-model recipes of the downstream study (diffice.downstream.recipes) and the training options
they set (warm-up, flips, label smoothing, input scale, timm keyword arguments). Tiny and fast."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffice.config import load_config
from diffice.downstream import run_study
from diffice.downstream.recipes import RECIPE_KEYS, check_recipes, model_recipe
from diffice.downstream.study import study_settings
from diffice.downstream.train import Upsampled, augment, build_model, lr_factor, predict, train_classifier
from diffice.errors import UserError
from tests.test_downstream import SIZE, study_cfg, study_sets


def settings(*keys: str) -> dict:
    return study_settings(load_config([], list(keys)))


def test_recipe_merges_over_the_global_keys():
    st = settings("downstream.lr=0.002", "downstream.model_kwargs={drop_rate: 0.1, drop_path_rate: 0.1}",
                  "downstream.recipes={vit_tiny_patch16_224: {lr: 5.0e-4, warmup: 0.3, flips: true, "
                  "model_kwargs: {patch_size: 8, drop_path_rate: 0.0}}, resnet18: {steps: 400}}")
    vit = model_recipe(st, "vit_tiny_patch16_224")
    assert set(vit) == set(RECIPE_KEYS)
    assert (vit["lr"], vit["warmup"], vit["flips"], vit["steps"]) == (5.0e-4, 0.3, True, st["steps"])
    assert vit["model_kwargs"] == {"drop_rate": 0.1, "drop_path_rate": 0.0, "patch_size": 8}
    res = model_recipe(st, "resnet18")
    assert (res["steps"], res["lr"], res["flips"]) == (400, 0.002, False)
    plain = model_recipe(st, "densenet121")  # no recipe: the global keys
    assert plain == {k: st[k] for k in RECIPE_KEYS}
    assert st["model_kwargs"] == {"drop_rate": 0.1, "drop_path_rate": 0.1}  # merging changed nothing global


@pytest.mark.parametrize("key, message", [
    ("downstream.recipes={vit_tiny: {lr: 0.001}}", "downstream.recipes.vit_tiny: 'vit_tiny' is not a timm model"),
    ("downstream.recipes={resnet18: {learning_rate: 0.001}}", "downstream.recipes.resnet18.learning_rate: unknown key"),
    ("downstream.recipes={resnet18: {lr: 0}}", "downstream.recipes.resnet18.lr: must be > 0"),
    ("downstream.recipes={resnet18: {steps: 2.5}}", "downstream.recipes.resnet18.steps: must be an integer"),
    ("downstream.recipes={resnet18: {flips: 1}}", "downstream.recipes.resnet18.flips: must be true or false"),
    ("downstream.recipes={resnet18: {schedule: step}}", "downstream.recipes.resnet18.schedule: 'step' is not"),
    ("downstream.recipes={resnet18: {model_kwargs: 3}}", "downstream.recipes.resnet18.model_kwargs: must be a mapping"),
    ("downstream.recipes={resnet18: 3}", "downstream.recipes.resnet18: must be a mapping"),
    ("downstream.warmup=1.5", "downstream.warmup: must be <= 1.0"),
    ("downstream.label_smoothing=1.0", "downstream.label_smoothing: must be < 1.0"),
    ("downstream.scale=0", "downstream.scale: must be > 0.0"),
    ("downstream.steps=0", "config: key 'downstream.steps': 0 is not allowed"),  # config_checks, at load
])
def test_recipes_are_validated_in_one_line_naming_the_key(key, message):
    with pytest.raises(UserError) as err:
        settings(key)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_check_recipes_empty_and_plain():
    assert check_recipes(None) == {} and check_recipes({}) == {}
    assert check_recipes({"resnet18": None}) == {"resnet18": {}}
    with pytest.raises(UserError, match=r"^downstream\.recipes: must map"):
        check_recipes([1, 2])


def test_warmup_fraction():
    assert lr_factor(0, 100, "cosine") == pytest.approx(1 / 5)  # the default 5 %
    assert lr_factor(0, 100, "cosine", 0.3) == pytest.approx(1 / 30)
    assert lr_factor(29, 100, "constant", 0.3) == 1.0 and lr_factor(99, 100, "cosine", 0.3) < 0.01


def test_flips_mirror_some_frames_and_leave_the_other_draws_alone():
    x = torch.linspace(-1, 1, 64 * SIZE[0] * SIZE[1]).reshape(64, 1, *SIZE)
    plain = augment(x, torch.Generator().manual_seed(3))
    same = augment(x, torch.Generator().manual_seed(3), False)
    flipped = augment(x, torch.Generator().manual_seed(3), True)
    assert torch.equal(plain, same)
    mirrored = [bool(torch.equal(f, p.flip(-1))) and not torch.equal(f, p) for f, p in zip(flipped, plain)]
    kept = [bool(torch.equal(f, p)) for f, p in zip(flipped, plain)]
    assert all(m or k for m, k in zip(mirrored, kept)) and 0 < sum(mirrored) < 64


def test_scale_and_model_kwargs_reach_the_network(one_thread):
    net = build_model("test_resnet", 3, SIZE, scale=2.0)
    assert isinstance(net, Upsampled) and net(torch.zeros(2, 1, *SIZE)).shape == (2, 3)
    vit = build_model("test_vit", 3, SIZE, model_kwargs={"patch_size": 4, "drop_path_rate": 0.0})
    assert tuple(vit.patch_embed.grid_size) == (SIZE[0] // 4, SIZE[1] // 4)
    sets = study_sets()
    trained = train_classifier("test_vit", sets["real_train"].images, sets["real_train"].plane, 3, steps=2,
                               batch_size=4, lr=1e-3, seed=0, device="cpu", warmup=0.5, flips=True,
                               label_smoothing=0.1, scale=2.0, model_kwargs={"patch_size": 8})
    assert isinstance(trained, Upsampled) and tuple(trained.net.patch_embed.grid_size) == (8, 10)
    probs = predict(trained, sets["real_test"].images)
    assert probs.shape == (9, 3) and np.allclose(probs.sum(1), 1.0)


class Spy:
    def __init__(self):
        self.calls = []

    def __call__(self, model, *args, **kwargs):
        self.calls.append((model, kwargs))
        return train_classifier(model, *args, **kwargs)


def test_the_study_trains_each_model_with_its_recipe(tmp_path, one_thread):
    recipe = "downstream.recipes={test_resnet: {steps: 3, lr: 0.01, flips: true, scale: 2.0, model_kwargs: {drop_rate: 0.0}}}"
    cfg = study_cfg(tmp_path, "downstream.seeds=[0]", recipe)
    spy = Spy()
    res = run_study(cfg, study_sets(), tmp_path / "study", progress=False, train_fn=spy)
    assert len(spy.calls) == 2 * 3
    for model, kw in spy.calls:
        if model == "test_resnet":
            assert (kw["steps"], kw["lr"], kw["flips"], kw["scale"], kw["model_kwargs"]) == (3, 0.01, True, 2.0,
                                                                                            {"drop_rate": 0.0})
        else:
            assert (kw["steps"], kw["lr"], kw["flips"], kw["scale"], kw["model_kwargs"]) == (2, 1e-3, False, 1.0, {})
            assert kw["warmup"] == 0.05 and kw["label_smoothing"] == 0.0
    assert {int(r["steps"]) for r in res["rows"] if r["model"] == "test_resnet"} == {3}
    assert "own recipes (downstream.recipes) for test_resnet" in res["table"]
    stamp = json.loads((tmp_path / "study" / "run.json").read_text())["settings"]
    assert stamp["recipes"]["test_resnet"]["steps"] == 3
    with pytest.raises(UserError, match="recipes.test_resnet.steps: 3 there, 4 now"):
        run_study(study_cfg(tmp_path, "downstream.seeds=[0]", recipe.replace("steps: 3", "steps: 4")), study_sets(),
                  tmp_path / "study", progress=False)


def test_a_study_stamped_before_the_recipes_resumes(tmp_path, one_thread):
    """A stamp without the keys added with the recipes holds the values that train as before."""
    cfg = study_cfg(tmp_path, "downstream.models=[test_resnet]", "downstream.seeds=[0]")
    out = tmp_path / "study"
    run_study(cfg, study_sets(), out, progress=False)
    stamp = json.loads((out / "run.json").read_text())
    for key in ("warmup", "flips", "label_smoothing", "scale", "model_kwargs", "recipes"):
        del stamp["settings"][key]
    (out / "run.json").write_text(json.dumps(stamp))
    spy = Spy()
    assert run_study(cfg, study_sets(), out, progress=False, train_fn=spy)["skipped"] == 3 and not spy.calls
    with pytest.raises(UserError, match="flips: False there, True now"):
        run_study(study_cfg(tmp_path, "downstream.models=[test_resnet]", "downstream.seeds=[0]", "downstream.flips=true"),
                  study_sets(), out, progress=False)
