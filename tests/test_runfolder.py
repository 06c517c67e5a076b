"""One run-folder stamp for every kind of run (diffice.runfolder): kind and settings, refusals, older stamps."""

from __future__ import annotations

import json

import pytest

from diffice.errors import UserError
from diffice.runfolder import STAMP, check_run_folder, claim_run_folder, read_stamp, write_stamp
from diffice.runfolder.stamp import RunKind

ALPHA = RunKind("alpha", "alpha run", items=("frames",), fix="choose another folder",
                legacy=("old.json", lambda p: json.loads(p.read_text())))
BETA = RunKind("beta", "beta run", items=("rows.csv",), fix="choose another folder")


def test_a_folder_is_claimed_once_and_refused_for_other_settings_or_kinds(tmp_path):
    out = tmp_path / "run"
    claim_run_folder(out, ALPHA, {"a": 1, "sub": {"b": (1, 2)}})
    stamp = read_stamp(out)
    assert stamp == {"kind": "alpha", "version": 1, "settings": {"a": 1, "sub": {"b": [1, 2]}}}
    check_run_folder(out, ALPHA, {"a": 1, "sub": {"b": [1, 2]}})  # a tuple and a list are the same setting
    with pytest.raises(UserError, match=r"holds a alpha run with other settings \(sub.b: \[1, 2\] there, \[1, 3\] now\); "
                                        "choose another folder"):
        check_run_folder(out, ALPHA, {"a": 1, "sub": {"b": [1, 3]}})
    with pytest.raises(UserError, match="holds a run of kind 'alpha', not a beta run"):
        check_run_folder(out, BETA, {"a": 1})


def test_items_without_a_stamp_are_refused_and_an_empty_folder_is_not(tmp_path):
    (tmp_path / "frames").mkdir()
    check_run_folder(tmp_path, ALPHA, {})  # an empty item folder: nothing to mix
    (tmp_path / "frames" / "000001").mkdir()
    with pytest.raises(UserError, match=f"holds frames but no {STAMP}"):
        check_run_folder(tmp_path, ALPHA, {})
    (tmp_path / "rows.csv").write_text("model\n")
    with pytest.raises(UserError, match=f"holds rows.csv but no {STAMP}"):
        check_run_folder(tmp_path, BETA, {})


def test_an_older_stamp_is_read_and_the_folder_stamped_when_the_run_goes_on(tmp_path):
    (tmp_path / "frames" / "000001").mkdir(parents=True)
    (tmp_path / "old.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(UserError, match=r"other settings \(a: 1 there, 2 now\)"):
        check_run_folder(tmp_path, ALPHA, {"a": 2})
    check_run_folder(tmp_path, ALPHA, {"a": 1})
    write_stamp(tmp_path, ALPHA, {"a": 1})
    assert read_stamp(tmp_path)["settings"] == {"a": 1}
    (tmp_path / "old.json").write_text("{not json")
    check_run_folder(tmp_path, ALPHA, {"a": 1})  # the stamp wins over the older one


def test_an_unreadable_stamp_names_the_file(tmp_path):
    (tmp_path / STAMP).write_text("{")
    with pytest.raises(UserError, match=f"{tmp_path / STAMP}: unreadable"):
        check_run_folder(tmp_path, ALPHA, {})
    (tmp_path / STAMP).write_text(json.dumps({"settings": {}}))
    with pytest.raises(UserError, match="not a diffice run stamp"):
        read_stamp(tmp_path)


def test_the_three_kinds_declare_their_stamps():
    from diffice.counterfactual.outputs import RUN_KIND as CF
    from diffice.downstream.study import RUN_KIND as DOWNSTREAM
    from diffice.synthesis.run import RUN_KIND as SYNTHESIS

    assert [k.name for k in (CF, SYNTHESIS, DOWNSTREAM)] == ["counterfactuals", "synthesis", "downstream"]
    assert [k.legacy[0] for k in (CF, SYNTHESIS, DOWNSTREAM)] == ["config.yaml", "synthesis-run.json", "study.json"]


def test_a_key_added_later_counts_as_its_old_behaviour_in_an_older_stamp(tmp_path):
    kind = RunKind("k", "k run", items=("frames",), fix="use another folder", added=(("cf.search", "restart"),))
    write_stamp(tmp_path, kind, {"cf": {"tau": 5}})  # written before cf.search existed
    check_run_folder(tmp_path, kind, {"cf": {"tau": 5, "search": "restart"}})  # what it did then: accepted
    with pytest.raises(UserError, match=r"cf.search: 'restart' there, 'continue' now"):
        check_run_folder(tmp_path, kind, {"cf": {"tau": 5, "search": "continue"}})
    write_stamp(tmp_path, kind, {"cf": {"tau": 5, "search": "continue"}})
    with pytest.raises(UserError, match=r"cf.search: 'continue' there, 'restart' now"):
        check_run_folder(tmp_path, kind, {"cf": {"tau": 5, "search": "restart"}})


def test_keys_without_effect_do_not_refuse_a_counterfactual_folder(tmp_path):
    from diffice.counterfactual.outputs import RUN_KIND

    base = {"seed": 0, "cf": {"tau": 5, "sparse": "none", "sparse_tau": 10, "lambda_search": "restart", "retry_iterations": 1}}
    write_stamp(tmp_path, RUN_KIND, base)
    check_run_folder(tmp_path, RUN_KIND, {"seed": 0, "cf": {**base["cf"], "sparse_tau": 5, "retry_iterations": 3}})
    with pytest.raises(UserError, match=r"cf.sparse: 'none' there, 'layout' now"):
        check_run_folder(tmp_path, RUN_KIND, {"seed": 0, "cf": {**base["cf"], "sparse": "layout"}})
    write_stamp(tmp_path, RUN_KIND, {"seed": 0, "cf": {**base["cf"], "sparse": "layout"}})
    with pytest.raises(UserError, match=r"cf.sparse_tau: 10 there, 5 now"):
        check_run_folder(tmp_path, RUN_KIND, {"seed": 0, "cf": {**base["cf"], "sparse": "layout", "sparse_tau": 5}})


def test_a_counterfactual_folder_is_tied_to_its_precision_an_older_stamp_to_its_config(tmp_path):
    import yaml

    from diffice.counterfactual.outputs import RUN_KIND, method_config

    def settings(precision, autocast="none"):
        return method_config({"seed": 0, "trainer": {"precision": precision}, "cf": {"tau": 5, "autocast": autocast}})

    write_stamp(tmp_path, RUN_KIND, settings("32-true"))
    check_run_folder(tmp_path, RUN_KIND, settings(32))  # Lightning's short name: the same precision
    with pytest.raises(UserError, match=r"precision: '32-true' there, 'bf16-mixed' now"):
        check_run_folder(tmp_path, RUN_KIND, settings("bf16"))

    def older(precision, autocast):  # an older diffice stamped no precision; the folder's config.yaml has it
        stamp = settings(precision, autocast)
        del stamp["precision"]
        write_stamp(tmp_path, RUN_KIND, stamp)
        (tmp_path / "config.yaml").write_text(yaml.safe_dump({"trainer": {"precision": precision}, "cf": {"autocast": autocast}}))

    older("bf16-mixed", "bf16")  # its guidance's networks ran in bf16, as they do now: it goes on
    check_run_folder(tmp_path, RUN_KIND, settings("bf16-mixed", "bf16"))
    with pytest.raises(UserError, match=r"precision: 'bf16-mixed' there, '32-true' now"):
        check_run_folder(tmp_path, RUN_KIND, settings("32-true", "bf16"))
    older("bf16-mixed", "none")  # its guidance ran under the autocast, which no run does now
    with pytest.raises(UserError, match=r"precision: 'bf16-mixed, guidance under autocast \(an older diffice\)' there"):
        check_run_folder(tmp_path, RUN_KIND, settings("bf16-mixed"))
    older("32-true", "none")
    check_run_folder(tmp_path, RUN_KIND, settings("32-true"))
    (tmp_path / "config.yaml").unlink()  # no config.yaml: a run of the precision's default
    check_run_folder(tmp_path, RUN_KIND, settings("32-true"))
