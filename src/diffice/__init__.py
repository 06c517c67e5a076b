"""diffice: diffusion-based iterative counterfactual explanations for fetal ultrasound quality.

Nothing diffice runs reaches the network (weights come from files named in the config; W&B is
offline by default). Importing ``diffice`` therefore switches off, before any of those libraries
is imported, what would otherwise go online at run time: albumentations' update check on import
(``NO_ALBUMENTATIONS_UPDATE``) and Hugging Face Hub look-ups and telemetry (diffusers, timm:
``HF_HUB_OFFLINE``, ``HF_HUB_DISABLE_TELEMETRY``). A value the user has set is kept. It also keeps
timm from importing W&B (``_timm_wandb``: a killed process left W&B's temporary folders in /tmp).
"""

import os as _os

from diffice._timm_wandb import install as _install

for _key in ("NO_ALBUMENTATIONS_UPDATE", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    _os.environ.setdefault(_key, "1")

_install()

__version__ = "0.1.0"
