"""Messages that misled or were noisy (issue 27): each is one right line now."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffice.cli import main
from diffice.config import load_config
from diffice.errors import UserError
from diffice.report.reader import score_answers
from diffice.report.reader_synthesis import make_synthesis_study
from tests.test_reader_synthesis import _answers, make_synthesis_run

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/preset/tiny.yaml")


def _err(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def test_reader_score_reads_a_spreadsheet_csv_with_a_bom(tmp_path):
    run = make_synthesis_run(tmp_path / "syn")
    key = make_synthesis_study(run, count=4)
    good = _answers(tmp_path / "g.csv", key, lambda e: e["answer"])
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + good.read_text().replace("\n", "\r\n").encode())
    assert score_answers(run, bom)["accuracy"] == 1.0


def test_answers_of_two_studies_in_one_file_are_named_plainly(tmp_path, capsys):
    run = make_synthesis_run(tmp_path / "syn", edits=(2, 1, 2, 1))
    a = make_synthesis_study(run, count=4)
    b = make_synthesis_study(run, task="edited", count=2)
    one = _answers(tmp_path / "a.csv", a, lambda e: e["answer"]).read_text()
    two = _answers(tmp_path / "b.csv", b, lambda e: e["answer"]).read_text().splitlines()[1:]
    (tmp_path / "mixed.csv").write_text(one + "\n".join(two) + "\n")
    assert main(["reader-score", str(run), str(tmp_path / "mixed.csv")]) == 2
    (err,) = _err(capsys)
    assert f"is for study '{b['study']}' but line 2 for study '{a['study']}'" in err and "one file per study" in err
    (tmp_path / "other.csv").write_text(one.replace(a["study"], "0123456789ab"))
    assert main(["reader-score", str(run), str(tmp_path / "other.csv")]) == 2
    (err,) = _err(capsys)
    assert "'0123456789ab', which" in err and "does not hold" in err


def test_an_edited_study(tmp_path, capsys):
    run = make_synthesis_run(tmp_path / "syn", edits=(1, 1, 1, 1))
    assert main(["reader-study", str(run), "--task", "edited", "--count", "50"]) == 2
    (err,) = _err(capsys)
    assert "an edited study of 50" in err and "a edited" not in err


@pytest.mark.parametrize("override, key", [
    ("cf.limit=0", "cf.limit"), ("cf.batch_size=0", "cf.batch_size"), ("cf.iterations=0", "cf.iterations"),
    ("data.batch_size=-1", "data.batch_size"), ("data.image_size=[0,80]", "data.image_size"),
    ("downstream.real_train_limit=0", "downstream.real_train_limit"), ("downstream.synth_layouts=0", "downstream.synth_layouts"),
    ("synthesis.jump_length=0", "synthesis.jump_length"), ("trainer.checkpoint_every_n_steps=0", "trainer.checkpoint_every_n_steps"),
    ("synthesis.edit_start=1.5", "synthesis.edit_start"), ("data.phantom.count=0", "data.phantom.count"),
])
def test_nonsense_counts_limits_and_batch_sizes_name_the_key(override, key):
    with pytest.raises(UserError, match=f"key '{key}'"):
        load_config([TINY], [override])


def test_null_limits_stay_allowed():
    cfg = load_config([TINY], ["cf.limit=null", "synthesis.limit=null", "downstream.real_train_limit=null"])
    assert cfg.cf.limit is None and cfg.synthesis.limit is None


def test_counterfactuals_config_error_writes_nothing(tmp_path, capsys):
    out = tmp_path / "cf"
    assert main(["counterfactuals", TINY, f"cf.out={out}", "cf.batch_size=0", "wandb.mode=disabled"]) == 2
    (err,) = _err(capsys)
    assert "cf.batch_size" in err
    assert not out.exists()


def test_sample_device_banana(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "x.ckpt"), "--device", "banana", "--out", str(tmp_path / "s")]) == 2
    (err,) = _err(capsys)
    assert "--device banana: not a device" in err


def test_timm_does_not_import_wandb():
    """Importing wandb makes two temporary folders in /tmp that a killed process leaves behind;
    with W&B disabled nothing diffice imports may pull it in (timm tried to)."""
    code = ("import sys, diffice, timm, timm.utils, segmentation_models_pytorch\n"
            "import diffice.modules.counterfactual, diffice.synthesis.run\n"
            "print('wandb' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "WANDB_MODE": "disabled"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("argv", [["sample", "x.ckpt", "--count", "two"], ["phantoms", "--out", "p", "--severity", "high"],
                                  ["synthesize", "x.ckpt", "--layout", "l.png", "--bogus"]])
def test_a_bad_option_is_one_line_not_the_usage(argv, capsys):
    assert main(argv) == 2
    (err,) = _err(capsys)
    assert "usage:" not in err and "--help" in err


class _Unreadable(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i):
        raise UserError(f"frames/{i}.png: unreadable image; check the file")


def test_a_user_error_in_a_dataloader_worker_stays_one_line():
    """With worker processes (the default on a GPU) torch re-raises a worker's error with its
    traceback; the UserError keeps the worker's own line."""
    loader = torch.utils.data.DataLoader(_Unreadable(), batch_size=1, num_workers=1)
    with pytest.raises(UserError) as err:
        next(iter(loader))
    assert str(err.value) == "frames/0.png: unreadable image; check the file"


def test_error_lines_of_processes_writing_at_once_never_run_together():
    """Under strategy=ddp every rank may report its one line at once into one pipe; ``say_line`` writes
    the line and its newline in one call, so no line is cut or joined to another's (``print`` with
    unbuffered streams, PYTHONUNBUFFERED=1, writes the text and the newline separately)."""
    code = ("import sys; from diffice.errors import say_line\n"
            "for i in range(300): say_line(sys.argv[1] * 1500 + f' {i}')")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    r, w = os.pipe()
    with os.fdopen(r) as reader:  # two processes, one pipe for both stderrs
        kids = [subprocess.Popen([sys.executable, "-c", code, c], stderr=w, env=env) for c in "ab"]
        os.close(w)
        lines = reader.read().splitlines()
    assert [k.wait(timeout=60) for k in kids] == [0, 0]
    assert len(lines) == 600
    assert all(ln[:1500] == ln[0] * 1500 and ln[0] in "ab" and ln[1500:].strip().isdigit() for ln in lines)
