"""Run folders: the stamp that ties a folder to one kind of run and its settings, and the
atomic per-item folders every run writes (counterfactual frames, synthesis layouts and edits).

    stamp    run.json: {"kind": ..., "settings": {...}}; a folder of another kind or other settings is refused
    frames   {out}/{folder}/{index:06d}/ written under a temporary name and renamed when complete;
             record.json, results CSVs written atomically
"""

from diffice.runfolder.frames import (
    RECORD,
    frame_dir,
    is_finished,
    json_safe,
    read_record,
    read_records,
    remove_unfinished,
    write_frame,
    write_rows_csv,
)
from diffice.runfolder.stamp import (
    STAMP,
    RunKind,
    check_run_folder,
    claim_run_folder,
    first_difference,
    read_stamp,
    settings_difference,
    stamped_settings,
    write_stamp,
)

__all__ = [
    "RECORD", "STAMP", "RunKind", "check_run_folder", "claim_run_folder", "first_difference", "frame_dir", "is_finished", "json_safe",
    "read_record", "read_records", "read_stamp", "remove_unfinished", "settings_difference", "stamped_settings", "write_frame", "write_rows_csv", "write_stamp",
]
