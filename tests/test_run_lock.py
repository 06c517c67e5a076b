"""One writer per run folder (issue 27): a second run into a held folder is one line naming the
folder and the holder (exit 2) or waits with --wait; a killed holder's lock is taken over.
The holders are real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from diffice.cli import main
from diffice.errors import UserError
from diffice.runlock import LOCK_NAME, read_holder, run_lock

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/preset/tiny.yaml")
PACK = ROOT / "models" / "demo"

HOLD = """
import sys, time
from diffice.runlock import run_lock
with run_lock(sys.argv[1], "test holder"):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    if len(sys.argv) > 3:  # the last thing done while holding the lock
        open(sys.argv[3], "w").close()
"""


def hold(folder: Path, seconds: float = 60.0, marker: Path | None = None) -> subprocess.Popen:
    """A process holding ``folder``'s lock for ``seconds`` (returns once it holds it); it writes
    ``marker`` as the last thing it does before letting go."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        env.pop(var, None)
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds), *([str(marker)] if marker else [])], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    assert line.strip() == "locked", (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


@pytest.fixture()
def holder(tmp_path):
    procs = []

    def start(folder: Path, seconds: float = 60.0, marker: Path | None = None) -> subprocess.Popen:
        procs.append(hold(folder, seconds, marker))
        return procs[-1]

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)
        p.stdout.close()
        p.stderr.close()


def _one_line(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def test_counterfactuals_into_a_held_folder_is_refused_naming_the_holder(tmp_path, capsys, holder):
    out = tmp_path / "cf"
    proc = holder(out)
    code = main(["counterfactuals", TINY, f"paths.runs={tmp_path}", f"cf.out={out}", "wandb.mode=disabled"])
    err = _one_line(capsys)
    assert code == 2 and len(err) == 1, err
    assert str(out) in err[0] and f"pid {proc.pid} on " in err[0] and "--wait" in err[0], err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing of ours written


@pytest.mark.skipif(not (PACK / "synthesis.ckpt").is_file(), reason="no model pack")
def test_synthesize_into_a_held_folder_is_refused(tmp_path, capsys, holder):
    out = tmp_path / "syn"
    proc = holder(out)
    code = main(["synthesize", str(PACK / "synthesis.ckpt"), TINY, f"paths.runs={tmp_path}", "wandb.mode=disabled",
                 f"synthesis.judge_ckpt={PACK / 'guide.ckpt'}", f"cf.oracle_ckpt={PACK / 'oracle.ckpt'}",
                 "--test", "--out", str(out)])
    err = _one_line(capsys)
    assert code == 2 and len(err) == 1 and f"{out}: in use by another run (pid {proc.pid}" in err[0], err
    assert not (out / "run.json").exists()


def test_a_downstream_study_into_a_held_folder_is_refused(tmp_path, holder):
    from diffice.downstream.study import run_study

    out = tmp_path / "study"
    proc = holder(out)
    with pytest.raises(UserError, match=rf"in use by another run \(pid {proc.pid} on "):
        run_study({"downstream": {}}, {}, out)


def test_wait_waits_for_the_holder_to_finish(tmp_path, capsys, holder):
    out = tmp_path / "run"
    done = tmp_path / "holder-done"
    proc = holder(out, seconds=1.5, marker=done)
    t0 = time.monotonic()
    with run_lock(out, "waiter", wait=True):
        waited = time.monotonic() - t0
        # the holder had finished its work under the lock (its process may still be exiting)
        assert done.exists()
        assert read_holder(out / LOCK_NAME)["pid"] == os.getpid()
    assert proc.wait(timeout=30) == 0
    assert waited > 0.5
    assert "waiting for it to finish" in capsys.readouterr().err
    assert not (out / LOCK_NAME).exists()


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, capsys, holder):
    out = tmp_path / "run"
    proc = holder(out)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert read_holder(out / LOCK_NAME)["pid"] == proc.pid  # what the killed run left
    with run_lock(out, "next run"):
        assert read_holder(out / LOCK_NAME)["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert f"taking over from a run that ended without finishing (pid {proc.pid}" in err


def test_a_live_child_of_a_dead_holder_keeps_the_folder(tmp_path, capsys):
    """The holder forks (as a DataLoader worker would) and dies by kill -9; its child still holds
    the flock and may still write: the next run is refused (the lock file is neither removed nor
    replaced), and takes the folder only once the child has ended too."""
    out = tmp_path / "run"
    code = HOLD.replace('print("locked", flush=True)', 'import os\n    child = os.fork()\n'
                        '    if child == 0:\n        time.sleep(60); os._exit(0)\n    print("locked", child, flush=True)')
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-c", code, str(out), "60"], stdout=subprocess.PIPE, text=True, env=env)
    child = int(proc.stdout.readline().split()[1])
    try:
        proc.kill()
        proc.wait(timeout=30)
        lock = out / LOCK_NAME
        inode, text = lock.stat().st_ino, lock.read_text()
        assert read_holder(lock)["pid"] == proc.pid  # the file names the dead parent
        for _ in range(3):
            with pytest.raises(UserError) as err:
                with run_lock(out, "next run"):
                    raise AssertionError("a second writer was admitted while the child holds the lock")
            msg = str(err.value)
            assert "\n" not in msg and f"in use by another run (pid {proc.pid} on " in msg, msg
            assert "which has ended, but a process it started" in msg, msg
            assert lock.stat().st_ino == inode and lock.read_text() == text  # not broken, not replaced
        assert "taking" not in capsys.readouterr().err
        os.kill(child, signal.SIGKILL)  # (an orphan: init reaps it; the kernel frees its flock when it ends)
        with run_lock(out, "next run", wait=True):  # the flock is free now: the stale file is taken over
            assert read_holder(lock)["pid"] == os.getpid()
        assert f"taking over from a run that ended without finishing (pid {proc.pid}" in capsys.readouterr().err
    finally:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.stdout.close()


def _lock_from_another_thread(out: Path) -> list[str]:
    """The errors of one attempt to take ``out``'s lock from a new thread (empty: it got the lock)."""
    errors: list[str] = []

    def other():
        try:
            with run_lock(out, "other thread"):
                pass
        except UserError as err:
            errors.append(str(err))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    return errors


def test_two_threads_exclude_each_other_and_one_thread_may_nest(tmp_path):
    out = tmp_path / "run"
    with run_lock(out, "outer"):
        with run_lock(out, "nested"):
            pass
        assert (out / LOCK_NAME).exists()  # still held after the nested block

        errors = _lock_from_another_thread(out)
    assert len(errors) == 1 and "in use by another run" in errors[0]
    assert not out.exists()  # the lock made the folder and the run left nothing in it


def test_other_ranks_of_a_multi_process_run_do_not_lock(tmp_path, monkeypatch, holder):
    out = tmp_path / "run"
    holder(out)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with run_lock(out, "rank 1"):
        pass


def test_a_failed_command_leaves_no_folders_it_made(tmp_path):
    out = tmp_path / "runs" / "demo" / "counterfactuals"
    with pytest.raises(UserError):
        with run_lock(out, "test"):
            raise UserError("data.manifest: not found")
    assert not (tmp_path / "runs").exists()  # the parents it made are gone too
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "other.txt").write_text("x")
    with pytest.raises(UserError):
        with run_lock(tmp_path / "keep" / "a" / "b", "test"):
            raise UserError("bad input")
    assert sorted(p.name for p in (tmp_path / "keep").iterdir()) == ["other.txt"]


# ----------------------------------------------------------------------------- training folders, evaluate, reader-study

TRAIN = {  # command -> its run folder under paths.runs
    "train-ddpm": "ddpm", "train-segmenter": "segmenter", "train-classifier": "classifier",
    "train-oracle": "oracle", "train-synthesis": "synthesis",
}


@pytest.mark.parametrize("command", sorted(TRAIN))
def test_a_second_training_into_a_held_run_folder_is_refused(command, tmp_path, capsys, holder):
    """A training run folder has one writer: while another process holds it, train-* stops in one
    line naming the folder and the holder (exit 2) and writes nothing there."""
    runs = tmp_path / "runs"
    out = runs / TRAIN[command]
    proc = holder(out)
    code = main([command, TINY, f"paths.runs={runs}", "wandb.mode=disabled", "trainer.progress_bar=false",
                 "data.phantom.count=40", "data.image_size=[32,40]"])
    err = _one_line(capsys)
    assert code == 2 and len(err) == 1, err
    assert f"{out}: in use by another run (pid {proc.pid} on " in err[0], err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing of the second run written
    assert read_holder(out / LOCK_NAME)["pid"] == proc.pid


def test_fit_holds_the_run_folders_lock_while_training(tmp_path):
    """Inside fit the folder is locked by this process (another thread is refused); the lock is
    gone when training ends."""
    from lightning.pytorch.callbacks import Callback

    from diffice.config import load_config
    from diffice.data import DiffIceDataModule
    from diffice.modules.segmenter import SegmenterModule
    from diffice.modules.training import fit

    cfg = load_config([TINY], [f"paths.runs={tmp_path}", "wandb.mode=disabled", "trainer.progress_bar=false",
                               "data.phantom.count=40", "data.image_size=[32,40]", "data.batch_size=4",
                               "segmenter.encoder=tu-mobilenetv3_small_050"])
    out = tmp_path / "segmenter"
    seen = []

    class Probe(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(read_holder(out / LOCK_NAME).get("pid"))
            seen.append(len(_lock_from_another_thread(out)))

    fit(cfg, "segmenter", SegmenterModule(cfg), DiffIceDataModule(cfg), 1, callbacks=[Probe()])
    assert seen == [os.getpid(), 1]
    assert (out / "last.ckpt").is_file() and not (out / LOCK_NAME).exists()


@pytest.mark.parametrize("command", ["evaluate", "reader-study"])
def test_evaluate_and_reader_study_into_a_held_run_are_refused(command, tmp_path, capsys, holder):
    from tests._fake_run import make_fake_run

    run = make_fake_run(tmp_path / "run", n=2)
    before = sorted(p.name for p in run.iterdir())
    proc = holder(run)
    argv = {"evaluate": ["evaluate", str(run), "--no-images", "--no-wandb"],
            "reader-study": ["reader-study", str(run), "--pairs", "1"]}[command]
    code = main(argv)
    err = _one_line(capsys)
    assert code == 2 and len(err) == 1, err
    assert f"{run}: in use by another run (pid {proc.pid} on " in err[0], err
    assert sorted(p.name for p in run.iterdir()) == sorted([*before, LOCK_NAME])  # nothing written
    proc.kill()
    proc.wait(timeout=30)
    assert main(argv) == 0  # the killed holder's lock is taken over
    assert not (run / LOCK_NAME).exists()
