"""Keep timm from importing W&B.

``timm.utils.summary`` runs ``import wandb`` (inside ``try``) when timm is imported, for its own
training scripts' summaries, which diffice never calls. Importing wandb creates two temporary
folders (``/tmp/tmp*wandb-media``, ``tmp*wandb-artifacts``) that only an orderly exit removes: every
killed diffice process left them behind, even with W&B disabled. This finder answers that one
import with an ImportError (which timm expects when wandb is absent); every other import of
wandb, diffice's own when W&B is on, is untouched.
"""

from __future__ import annotations

import sys


class SkipWandbForTimm:
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "wandb" or "wandb" in sys.modules:
            return None
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_globals.get("__name__") == "timm.utils.summary":
                raise ImportError("diffice: timm's optional W&B summaries are not used")
            frame = frame.f_back
        return None


def install() -> None:
    if not any(isinstance(f, SkipWandbForTimm) for f in sys.meta_path):
        sys.meta_path.insert(0, SkipWandbForTimm())
