"""diffice.synthesis: FetalFlex-style anatomy-controlled synthesis beside ``counterfactual/``.

It reuses the diffusion core (``diffusion/``), the UNet factory (``nets/unet.py``, wrapped by
``nets/conditional.py``), the data layer (masks, planes and GA of the data contract), the
counterfactual writer's atomic frame folders, the report's HTML helpers and W&B logging.

Modules::

    layouts   read layout PNGs, edit operators (remove / grow / shrink / shift)
    sampler   one-stage and two-stage adaptive sampling, RePaint edits
    metrics   layout Dice by an independent judge, diversity, PSNR / SSIM outside edits, FID / FSD
    run       the run folder: jobs, resumable writing, results.csv, metrics.json
    report    the self-contained report.html

The model is ``modules/synthesis.py`` (checkpoint kind "synthesis"); the commands are
``diffice train-synthesis`` and ``diffice synthesize`` (``commands/synthesis.py``).
"""
