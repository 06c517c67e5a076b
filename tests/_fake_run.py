"""A fake counterfactual run folder per the run-folder contract, for tests of anything that reads one.

``make_fake_run(root)`` writes ``config.yaml`` and ``frames/{index:06d}/`` with tiny PNGs
(input, iter1..L, cf, seg overlays, target) and ``record.json`` (written last), with scores
that are deterministic functions of the seed. Pass ``frames=[{...}, ...]`` to set any record
values by hand (e.g. for hand-computed metric tests). ``FakeNets`` stands in for the feature
networks and the oracle (deterministic pooled-intensity features).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

CONCEPTS = ("qs_th", "qs_csp", "qs_fp", "qs_bone")


def _smooth(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random image in [-1, 1]."""
    coarse = rng.uniform(-1, 1, size=(h // 4 + 1, w // 4 + 1))
    img = np.kron(coarse, np.ones((4, 4)))[:h, :w]
    return np.clip(img, -1, 1)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(arr).save(path, format="PNG")


def default_frame(i: int, rng: np.random.Generator, iterations: int) -> dict:
    p_input = float(rng.uniform(0.05, 0.6))
    p_iters = [float(min(0.99, p_input + (k + 1) * rng.uniform(0.05, 0.25))) for k in range(iterations)]
    qs_input = float(rng.uniform(0.1, 0.7))
    qs_cf = float(np.clip(qs_input + rng.uniform(-0.1, 0.4), 0, 1))
    c_in = {c: float(rng.uniform(0, 1)) for c in CONCEPTS}
    c_cf = {c: float(np.clip(v + rng.uniform(-0.2, 0.4), 0, 1)) for c, v in c_in.items()}
    return dict(p_input=p_input, p_iters=p_iters, p_cf=p_iters[-1], qs_input=qs_input, qs_cf=qs_cf,
                concepts_input=c_in, concepts_cf=c_cf,
                qs_iters=[float(qs_input + (qs_cf - qs_input) * (k + 1) / iterations) for k in range(iterations)])


def make_fake_run(root: str | Path, n: int = 6, iterations: int = 2, size: tuple[int, int] = (32, 40),
                  method: str = "diff-ice", seed: int = 0, frames: list[dict] | None = None,
                  with_target: bool = True, with_qs_iters: bool = True, batch_size: int = 4,
                  write_config: bool = True, first_index: int = 3) -> Path:
    """Write a finished fake run into ``root`` (created) and return it.

    Each frame's record gets ``batch_id``/``batch_seconds`` of a batch of ``batch_size`` frames
    and ``peak_memory_bytes``; ``frames[i]`` overrides any record value of frame i.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    n = len(frames) if frames is not None else n
    if write_config:
        from diffice.config import load_config, save_config

        cfg = load_config([], [f"data.image_size=[{h},{w}]", f"cf.iterations={iterations}", f"cf.method={method}",
                               f"cf.out={root}", f"cf.batch_size={batch_size}", "wandb.mode=disabled",
                               f"paths.runs={root.parent / 'models'}"])
        save_config(cfg, root / "config.yaml")
    for i in range(n):
        index = first_index + 2 * i
        rec = default_frame(i, rng, iterations)
        if frames is not None:
            rec.update(frames[i])
        its = int(rec.get("iterations", iterations))
        x = _smooth(rng, h, w)
        target = _smooth(rng, h, w)
        outs = [x + (target - x) * (k + 1) / (its + 1) for k in range(its)]
        cf = outs[-1] if outs else x
        d = root / "frames" / f"{index:06d}"
        d.mkdir(parents=True, exist_ok=True)
        _png(d / "input.png", _u8(x))
        for k, o in enumerate(outs):
            _png(d / f"iter{k + 1}.png", _u8(o))
        _png(d / "cf.png", _u8(cf))
        for name, img in (("seg_input.png", x), ("seg_cf.png", cf)):
            rgb = np.stack([_u8(img)] * 3, -1)
            rgb[..., 0] = np.where(img > 0.3, 255, rgb[..., 0])
            _png(d / name, rgb)
        if with_target:
            _png(d / "target.png", _u8(target))
        batch = (i // batch_size)
        record = {
            "index": index, "id": f"phantom_{index:05d}", "method": method, "lambda_c": 40.0,
            "p_input": rec["p_input"], "p_cf": rec["p_cf"], "p_iters": rec["p_iters"],
            "flipped": bool(rec.get("flipped", rec["p_cf"] > 0.5)),
            "concepts_input": rec["concepts_input"], "concepts_cf": rec["concepts_cf"],
            "qs_input": rec["qs_input"], "qs_cf": rec["qs_cf"],
            "target_l1_input": rec.get("target_l1_input", float(np.abs(x - target).mean()) if with_target else None),
            "target_l1_cf": rec.get("target_l1_cf", float(np.abs(cf - target).mean()) if with_target else None),
            "nfe": rec.get("nfe", 10 * its), "seconds": rec.get("seconds", 0.5 + 0.1 * batch),
            "iterations": its,
            "batch_id": f"rank0-{batch}", "batch_seconds": rec.get("batch_seconds", (0.5 + 0.1 * batch) * batch_size),
            "peak_memory_bytes": rec.get("peak_memory_bytes", 1e9 + 1e8 * i),
            "seconds_iters": rec.get("seconds_iters", [0.1 * (k + 1) for k in range(its)]),
        }
        if with_qs_iters and "qs_iters" in rec:
            record["qs_iters"] = rec["qs_iters"]
            record["concepts_iters"] = [rec["concepts_cf"]] * its
        (d / "record.json").write_text(json.dumps(record, indent=1))
    return root


class FakeNets:
    """Deterministic stand-ins: ``fid`` -> (B, 8), ``sononet`` -> (B, 6) pooled intensities; ``oracle``."""

    concepts = CONCEPTS

    @staticmethod
    def fid(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, (2, 4)).flatten(1)

    @staticmethod
    def sononet(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, (2, 3)).flatten(1) + 2.0

    @staticmethod
    def oracle(x: torch.Tensor) -> dict:
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, (1, 4)).flatten(1)
        concepts = torch.sigmoid(3 * pooled)
        return {"concepts": concepts, "qs_o": concepts.mean(1)}


def fake_eval_nets():
    from diffice.report.compute import EvalNets

    return EvalNets(fid=FakeNets.fid, sononet=FakeNets.sononet, oracle=FakeNets.oracle, concepts=CONCEPTS)
