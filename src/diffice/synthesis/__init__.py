"""diffice.synthesis: FetalFlex-style anatomy-controlled synthesis beside ``counterfactual/``.

It reuses the diffusion core (``diffusion/``), the UNet factory (``nets/unet.py``, wrapped by
``nets/conditional.py``), the data layer (masks, planes and GA of the data contract), the atomic
item folders and stamp of every run folder (``runfolder/``), the report's HTML helpers and W&B logging.

Modules::

    layouts   read layout PNGs, edit operators (remove / grow / shrink / shift / anomaly), layout pictures
    jobs      layouts to sample and frames to edit (the test split's), the check of an anomaly edit
    sampler   one-stage and two-stage adaptive sampling, RePaint edits
    metrics   layout Dice by an independent judge, diversity, PSNR / SSIM outside edits, FID / FSD
    run       the Synthesizer, the run folder (stamp, resumable writing), a test run
    summary   metrics.json, results.csv, pairs.csv, the printed summary
    report    the self-contained report.html
    tables    the markdown tables of several runs (an experiment's rows)

The model is ``modules/synthesis.py`` (checkpoint kind "synthesis"); the commands are
``diffice train-synthesis`` and ``diffice synthesize`` (``commands/synthesis.py``); the
``kind: synthesis`` experiments are ``experiments/synthesis.py``.
"""
