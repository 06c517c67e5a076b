"""``diffice wandb-check``: the local W&B runs under a folder, and whether every file they logged is there."""

from __future__ import annotations

from collections.abc import Sequence

from diffice.errors import UserError


def cmd_wandb_check(argv: Sequence[str]) -> int:
    """``diffice wandb-check PATH ...``: what the local W&B runs under PATH hold, and whether
    every picture, table and artifact file they logged is there (exit 1 if not)."""
    import argparse

    from diffice.tracking import check_offline_run, offline_runs

    p = argparse.ArgumentParser(prog="diffice wandb-check", description=(
        "Read the local W&B run folders (offline-run-*) under each PATH and check that every logged picture, "
        "table cell picture and artifact file exists; print counts per run. Nothing is uploaded."))
    p.add_argument("paths", nargs="+", help="a run folder, or any folder to search for them (e.g. runs/)")
    p.add_argument("--no-digests", action="store_true", help="do not recompute the MD5 of referenced files")
    ns = p.parse_args(list(argv))
    total = {"runs": 0, "images": 0, "tables": 0, "logged": 0, "used": 0}
    bad = 0
    for path in ns.paths:
        runs = offline_runs(path)
        if not runs:
            raise UserError(f"{path}: no W&B run folders (run-*.wandb) found")
        for folder in runs:
            res = check_offline_run(folder, verify_refs=not ns.no_digests)
            r = res["run"]
            print(f"{folder}: {r.get('job_type') or '-'} (group {r.get('group') or '-'}): {res['images']} pictures, "
                  f"{res['tables']} tables, artifacts logged {sorted(set(res['artifacts_logged']))}, "
                  f"used {sorted(set(res['artifacts_used']))}")
            for line in res["problems"]:
                print(f"  problem: {line}")
            bad += len(res["problems"])
            total["runs"] += 1
            total["images"] += res["images"]
            total["tables"] += res["tables"]
            total["logged"] += len(res["artifacts_logged"])
            total["used"] += len(res["artifacts_used"])
    print(f"{total['runs']} runs: {total['images']} pictures, {total['tables']} tables, {total['logged']} artifacts "
          f"logged, {total['used']} used; " + (f"{bad} problems" if bad else "every file is there"))
    return 1 if bad else 0
