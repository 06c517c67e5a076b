"""The private APIs of other libraries diffice relies on (issue 38): each test fails, naming the
API and where diffice uses it, as soon as an upgrade renames, removes or reshapes it, rather than
a run failing (or silently changing) later.

* lightning ``RichProgressBar._get_train_description`` (``modules/resume.py::StepsProgressBar``)
* lightning's CSV ``ExperimentWriter`` internals (``modules/training.py::_HistoryWriter``)
* ``argparse.ArgumentParser.error``, patched while a command runs (``cli.py::main``)
* wandb ``Run._log_artifact(..., use_after_commit=True)`` (``tracking/artifacts.py::use_artifact``)
* wandb ``Settings._offline`` (``tracking/runs.py::is_offline``)
* lightning ``ModelCheckpoint._last_global_step_saved``, ``._save_last_checkpoint``, ``._monitor_candidates``
  (``modules/training.py::LastCheckpoint``: the final step saved when every_n_train_steps does not divide it)
"""

from __future__ import annotations

import argparse
import inspect

import pytest


def _api(owner, name: str, used_in: str, params: tuple[str, ...] = ()):
    """``owner.name``, checked to exist and to take ``params``; the failure names both."""
    label = f"{getattr(owner, '__module__', '')}.{getattr(owner, '__qualname__', owner)}.{name}"
    assert hasattr(owner, name), f"private API {label} is gone; diffice uses it in {used_in}: update that code"
    attr = inspect.getattr_static(owner, name)
    if params:
        have = list(inspect.signature(getattr(owner, name)).parameters)
        missing = [p for p in params if p not in have]
        assert not missing, (f"private API {label} no longer takes {missing} (now {have}); diffice uses it in "
                             f"{used_in}: update that code")
    return attr


def _calls(owner, call: str, used_in: str, label: str) -> None:
    src = inspect.getsource(owner)
    assert call in src, (f"{label} is no longer called by {owner.__module__}.{owner.__qualname__} "
                         f"(no '{call}' there); diffice's override in {used_in} would be ignored: update that code")


def test_rich_progress_bar_train_description():
    from lightning.pytorch.callbacks import RichProgressBar

    where = "modules/resume.py::StepsProgressBar"
    _api(RichProgressBar, "_get_train_description", where, ("self", "current_epoch"))
    _calls(RichProgressBar, "self._get_train_description(", where, "RichProgressBar._get_train_description")
    _api(RichProgressBar, "validation_description", where)

    from diffice.modules.resume import StepsProgressBar

    bar = StepsProgressBar()

    class T:
        max_epochs, max_steps = -1, 30

    bar._trainer = T()
    assert bar._get_train_description(2).strip() == "Epoch 2, to step 30"


def test_csv_experiment_writer_internals(tmp_path):
    from lightning.fabric.loggers.csv_logs import _ExperimentWriter
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    where = "modules/training.py::_HistoryWriter"
    _api(ExperimentWriter, "__init__", where, ("self", "log_dir"))
    _api(ExperimentWriter, "_rewrite_with_new_header", where, ("self", "fieldnames"))
    _api(ExperimentWriter, "_check_log_dir_exists", where, ("self",))
    _calls(_ExperimentWriter.__init__, "self._check_log_dir_exists()", where, "ExperimentWriter._check_log_dir_exists")
    assert ExperimentWriter.NAME_METRICS_FILE == "metrics.csv", f"ExperimentWriter.NAME_METRICS_FILE changed ({where})"
    writer = ExperimentWriter(str(tmp_path / "w"))
    for attr in ("metrics_keys", "metrics_file_path", "_fs"):
        assert hasattr(writer, attr), f"private attribute ExperimentWriter.{attr} is gone; diffice uses it in {where}"
    for attr in ("isfile", "rm_file"):
        assert hasattr(writer._fs, attr), f"ExperimentWriter._fs.{attr} is gone; diffice uses it in {where}"
    logger = CSVLogger(str(tmp_path), name="logs", version="")
    for attr in ("_experiment", "root_dir", "log_dir"):
        assert hasattr(logger, attr), f"CSVLogger.{attr} is gone; diffice uses it in modules/training.py::_HistoryCSVLogger"

    # and what diffice builds on them still does its job: the kept history, new rows after it
    from diffice.modules.training import _HistoryWriter

    log_dir = tmp_path / "run" / "logs"
    log_dir.mkdir(parents=True)
    history = log_dir / ".metrics.history.csv"
    history.write_text("epoch,step,train/loss\n0,0,1.5\n0,1,1.25\n")
    w = _HistoryWriter(str(log_dir), history)
    w.log_metrics({"train/loss": 1.0, "val/dice": 0.5}, step=2)
    w.save()
    rows = (log_dir / "metrics.csv").read_text().splitlines()
    assert rows == ["epoch,step,train/loss,val/dice", "0,0,1.5,", "0,1,1.25,", ",2,1.0,0.5"], (
        f"the CSV history kept by {where} changed: {rows}")
    assert not history.exists()


def test_argparse_error_is_a_class_attribute_commands_route_errors_through():
    where = "cli.py::main (and _usage_error)"
    error = _api(argparse.ArgumentParser, "error", where, ("self", "message"))
    assert "error" in vars(argparse.ArgumentParser) and inspect.isfunction(error), (
        f"argparse.ArgumentParser.error is no longer a plain method of the class; {where} patches it there")
    seen = []

    class P(argparse.ArgumentParser):
        def error(self, message):
            seen.append(message)
            raise SystemExit(2)

    p = P(prog="x")
    p.add_argument("args", nargs="*")
    with pytest.raises(SystemExit):
        p.parse_intermixed_args(["--bogus"])
    assert seen and "--bogus" in seen[0], f"parse_intermixed_args no longer reports through ArgumentParser.error ({where})"

    from diffice.cli import main

    before = argparse.ArgumentParser.error
    assert main(["config", "--bogus"]) == 2
    assert argparse.ArgumentParser.error is before  # restored after the command


def test_wandb_run_log_artifact_with_use_after_commit():
    wandb_run = pytest.importorskip("wandb.sdk.wandb_run")
    _api(wandb_run.Run, "_log_artifact", "tracking/artifacts.py::use_artifact", ("artifact_or_path", "use_after_commit"))


def test_wandb_settings_offline():
    wandb = pytest.importorskip("wandb")
    where = "tracking/runs.py::is_offline"
    _api(wandb.Settings, "_offline", where)
    assert wandb.Settings(mode="offline")._offline is True and wandb.Settings(mode="online")._offline is False, (
        f"wandb.Settings._offline no longer says whether a run is offline; diffice reads it in {where}")
    _api(wandb.sdk.wandb_run.Run, "offline", where)


def test_lightning_takes_the_training_loader_as_resumable():
    """Lightning warns on a mid-epoch resume unless every training loader is ``_Stateful`` (its
    private protocol, checked in ``training_epoch_loop``); ``data/datamodule.py::ResumableLoader``
    is one, so an exact resume is not reported as unreliable."""
    from lightning.pytorch.loops import training_epoch_loop
    from torch.utils.data import TensorDataset

    from diffice.data.datamodule import ResumableLoader

    used_in = "data/datamodule.py::ResumableLoader"
    stateful = getattr(training_epoch_loop, "_Stateful", None)
    assert stateful is not None, f"lightning's training_epoch_loop no longer uses _Stateful; check {used_in}"
    _calls(training_epoch_loop._TrainingEpochLoop, "_Stateful", used_in, "the _Stateful check of a resumed loader")
    import torch

    assert isinstance(ResumableLoader(TensorDataset(torch.zeros(2))), stateful)


def test_model_checkpoint_last_checkpoint_internals(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    where = "modules/training.py::LastCheckpoint"
    _api(ModelCheckpoint, "_save_last_checkpoint", where, ("self", "trainer", "monitor_candidates"))
    _api(ModelCheckpoint, "_monitor_candidates", where, ("self", "trainer"))
    _calls(ModelCheckpoint, "self._last_global_step_saved = trainer.global_step", where, "ModelCheckpoint._last_global_step_saved")

    from diffice.modules.training import LastCheckpoint

    cb = LastCheckpoint(tmp_path, 3)
    assert cb._last_global_step_saved == 0 and cb.save_top_k == 0 and cb.save_last is True  # nothing saved yet
