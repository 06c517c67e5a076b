"""Image transforms: resize to the configured size, intensities to [-1, 1], and the
anatomy-preserving training augmentations (albumentations).

Inputs are float32 HxW arrays in [0, 1] (image, target) and int64 HxW masks; outputs are the
same arrays at ``size`` = [height, width]. The same geometric and intensity parameters are
applied to the image and to its ground-truth target, so the pair stays aligned.

Training augmentations keep the anatomy and the quality concepts meaningful: a horizontal
flip (the side a head faces is arbitrary), a small shift / scale / rotation (at most 4 %,
5 %, 5 degrees, black border like the area outside a sector) and a mild brightness /
contrast change (at most 5 %: a larger one would alter the bone-sharpness concept).
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np


def build_transform(size: list[int] | tuple[int, int], augment: bool) -> A.Compose:
    """Resize (area for images, nearest for masks) then, if ``augment``, the training augmentations."""
    h, w = int(size[0]), int(size[1])
    ops: list = [A.Resize(h, w, interpolation=cv2.INTER_AREA, mask_interpolation=cv2.INTER_NEAREST)]
    if augment:
        ops += [
            A.HorizontalFlip(p=0.5),
            A.Affine(
                translate_percent=(-0.04, 0.04),
                scale=(0.95, 1.05),
                rotate=(-5, 5),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=-1,
                p=0.7,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.05, contrast_limit=0.05, p=0.5),
        ]
    return A.Compose(ops, additional_targets={"target": "image"}, seed=None)


def apply_transform(
    tf: A.Compose, image: np.ndarray, mask: np.ndarray, target: np.ndarray, seed: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply ``tf`` to an image / mask / target triple ([0, 1] float32, int64, [0, 1] float32).

    ``seed`` makes the random augmentation a function of (seed, index) when given.
    """
    if seed is not None:
        tf.set_random_seed(seed)
    out = tf(image=image, mask=mask.astype(np.int32), target=target)
    img = np.clip(out["image"], 0.0, 1.0).astype(np.float32)
    tgt = np.clip(out["target"], 0.0, 1.0).astype(np.float32)
    return img, out["mask"].astype(np.int64), tgt


def to_model_range(x01: np.ndarray) -> np.ndarray:
    """[0, 1] -> [-1, 1] (float32)."""
    return (x01.astype(np.float32) * 2.0 - 1.0).astype(np.float32)
