"""Run by tests/test_ddpm_training.py as a script: a 2-process ``strategy=ddp`` (gloo, CPU) DDPM training
whose data turn NaN at step 2 on rank 1 only (or, with ``disk-full``, whose third checkpoint write fails on
rank 0 only). Lightning's subprocess launcher starts rank 1 by running this file again (LOCAL_RANK set).
Usage: ddp_nan.py RUNS_FOLDER [disk-full]."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.test_ddpm_training import SynthData  # noqa: E402

from diffice.config import load_config  # noqa: E402
from diffice.errors import UserError, say_line  # noqa: E402
from diffice.modules.ddpm import train_ddpm  # noqa: E402

TINY = ["data.image_size=[32,40]", "data.batch_size=4", "trainer.accelerator=cpu", "trainer.progress_bar=false",
        "wandb.mode=disabled", "unet.model_channels=16", "unet.channel_mult=[1,2]", "unet.num_res_blocks=1",
        "unet.attention_resolutions=[]", "unet.num_head_channels=16", "diffusion.steps=100", "ddpm.sample_every_n_steps=0"]

if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    rank = int(os.environ.get("LOCAL_RANK", 0))
    cfg = load_config([ROOT / "configs/preset/tiny.yaml"],
                      [*TINY, f"paths.runs={sys.argv[1]}", "ddpm.max_steps=6", "trainer.checkpoint_every_n_steps=1",
                       "trainer.devices=2", "trainer.strategy=ddp", "trainer.val_every_n_steps=100"])
    if len(sys.argv) > 2 and sys.argv[2] == "disk-full" and rank == 0:  # rank zero's third save fails
        from diffice.modules import training

        real, saves = os.replace, []

        def replace(a, b):  # (os.replace of every module: count the checkpoint's only)
            if str(b).endswith("last.ckpt"):
                saves.append(b)
            if len(saves) == 3 and str(b).endswith("last.ckpt"):
                raise OSError(28, "No space left on device")
            real(a, b)

        training.os.replace = replace
    poison = 2 if rank == 1 and len(sys.argv) == 2 else None
    try:
        train_ddpm(cfg, SynthData(poison_after=poison), num_sanity_val_steps=0)
    except UserError as err:  # what the diffice command prints: one line, exit 2
        say_line(f"rank {rank}: {err}")  # one write: the two ranks' lines never run together
        sys.exit(2)
    say_line(f"rank {rank}: finished")
