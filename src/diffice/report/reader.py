"""Blinded reader studies: a self-contained page for a reader, a hidden key, answers scored.

The machinery is shared by every kind of study. ``write_study`` writes a page (images
embedded; the reader answers each block and downloads the answers as CSV, in the browser, no
server, no network) and a key file the reader does not see; ``score_answers`` finds the key
an answers CSV belongs to (by its study id) and scores it: the fraction of answered blocks
whose choice is the key's answer, with an exact (Clopper–Pearson) binomial interval and a
two-sided binomial test against 0.5. A :class:`Form` says what a block is (a pair A / B, or one
frame with named options) and what the reader is asked.

The paper's study (``make_study``): blinded input / counterfactual pairs with QD_O > 0, the
counterfactual on a random side; the score is the fraction of pairs where the reader preferred
the counterfactual (paper: 41 of 50). Synthesis runs' studies (real vs synthetic, normal vs
edited) are made in ``diffice.report.reader_synthesis``.
"""

from __future__ import annotations

import csv
import hashlib
import html
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from diffice.errors import UserError
from diffice.io import atomic_write_text
from diffice.metrics.stats import binomial_summary, clopper_pearson  # noqa: F401 - clopper_pearson re-exported
from diffice.report.html import data_uri
from diffice.report.records import load_records, num

KEY_NAME = ".reader-study-key.json"
PAGE_NAME = "reader-study.html"
KEY_GLOB = ".reader-study*-key.json"  # every study's key in a run folder (KEY_NAME and the synthesis ones)


@dataclass(frozen=True)
class Form:
    """What the reader sees and answers.

    ``unit`` "pair": each block shows images A and B, the reader clicks one (``options`` A, B);
    "item": each block shows one frame and a button per option. ``unit`` also names the page's
    blocks, the answers CSV's column and the key's list (``key[unit + "s"]``)."""

    unit: str
    options: tuple[str, ...]
    title: str
    intro: str  # plain text, before "When done, download ..."
    question: str = ""  # plain text beside each block's number


PREFERENCE = Form(unit="pair", options=("A", "B"), title="Reader study",
                  intro="For each pair, click the image you judge to be the better-quality fetal head standard plane.",
                  question="which image is the better-quality standard plane?")


def eligible_pairs(records: list[dict]) -> list[dict]:
    """Frames whose counterfactual the oracle scores higher than the input (QD_O > 0)."""
    return [r for r in records if math.isfinite(num(r["qs_cf"]) - num(r["qs_input"]))
            and num(r["qs_cf"]) - num(r["qs_input"]) > 0]


def study_id(run_dir: Path, seed: int, picks: list) -> str:
    return hashlib.sha256(f"{run_dir.resolve()}:{seed}:{picks}".encode()).hexdigest()[:12]


def refuse_existing(key_path: Path, force: bool) -> None:
    if key_path.exists() and not force:
        raise UserError(f"{key_path}: a reader study already exists for this run; pass --force to make a new one "
                        "(answers to the old page will then no longer score)")


def write_study(run_dir: Path, key: dict, items: list[tuple], form: Form, page_name: str = PAGE_NAME,
                key_name: str = KEY_NAME) -> dict:
    """Write the page, then the key (each atomically; a page whose key cannot be written is
    removed: no page that cannot be scored); return the key with their paths.

    ``items`` are ``(number, image bytes, ...)``: two images per pair, one per item; ``key``
    holds ``form.unit + "s"``, one entry per block with its number under ``form.unit``."""
    page = atomic_write_text(run_dir / page_name, study_page(key["study"], items, form))
    try:
        atomic_write_text(run_dir / key_name, json.dumps(key, indent=1) + "\n")
    except BaseException:
        page.unlink(missing_ok=True)
        raise
    return {**key, "page": str(run_dir / page_name), "key": str(run_dir / key_name)}


def make_study(run_dir: str | Path, pairs: int = 50, seed: int = 0, force: bool = False) -> dict:
    """Write ``reader-study.html`` and the hidden key ``.reader-study-key.json``; return the key."""
    run_dir = Path(run_dir)
    records = load_records(run_dir)
    pool = eligible_pairs(records)
    if not pool:
        raise UserError(f"{run_dir}: no frame has QD_O > 0 (counterfactual scored above its input by the oracle); "
                        "nothing to show in a reader study")
    if pairs < 1:
        raise UserError(f"--pairs {pairs}: give at least 1")
    refuse_existing(run_dir / KEY_NAME, force)
    rng = random.Random(f"reader-study:{seed}")
    chosen = rng.sample(pool, min(pairs, len(pool)))  # uniform sample, in random order
    study = study_id(run_dir, seed, [r["index"] for r in chosen])
    key = {"study": study, "seed": seed, "run": run_dir.name, "requested": pairs, "pairs": []}
    items = []
    for n, rec in enumerate(chosen, start=1):
        cf_side = "A" if rng.random() < 0.5 else "B"
        images = {"input": (rec["_dir"] / "input.png").read_bytes(), "cf": (rec["_dir"] / "cf.png").read_bytes()}
        a, b = (images["cf"], images["input"]) if cf_side == "A" else (images["input"], images["cf"])
        key["pairs"].append({"pair": n, "index": int(rec["index"]), "id": str(rec["id"]), "cf_side": cf_side,
                             "qd_o": num(rec["qs_cf"]) - num(rec["qs_input"])})
        items.append((n, a, b))
    return write_study(run_dir, key, items, PREFERENCE)


PAGE_JS = """
function answers(){
  const reader=document.getElementById('reader').value.replace(/[,\\n\\r"]/g,' ').trim();
  let rows=['study,reader,'+UNIT+',choice'];
  let done=0;
  document.querySelectorAll('.'+UNIT).forEach(p=>{
    const n=p.dataset[UNIT]; const c=p.querySelector('input:checked');
    if(c){done++;}
    rows.push(STUDY+','+reader+','+n+','+(c?c.value:''));
  });
  return {csv:rows.join('\\n')+'\\n',done:done};
}
function update(){
  const a=answers(); document.getElementById('count').textContent=a.done+' of '+NITEMS+' answered';
}
function download(){
  const a=answers();
  if(a.done<NITEMS && !confirm((NITEMS-a.done)+' '+UNIT+'(s) unanswered. Download anyway?')) return;
  const blob=new Blob([a.csv],{type:'text/csv'});
  const link=document.createElement('a'); link.href=URL.createObjectURL(blob);
  link.download='reader-answers-'+STUDY+'.csv'; document.body.appendChild(link); link.click(); link.remove();
}
document.addEventListener('change',update);
"""

PAGE_CSS = ("body{font-family:system-ui,sans-serif;margin:24px;max-width:1100px}.pair{border-top:1px solid #ddd;padding:12px 0}"
            ".imgs{display:flex;gap:24px}.imgs label{text-align:center;cursor:pointer}"
            ".imgs img{width:432px;max-width:45vw;image-rendering:auto;border:3px solid transparent}"
            "input:checked+img{border-color:#1f77b4}.bar{position:sticky;top:0;background:#fff;padding:8px 0;border-bottom:1px solid #ccc}"
            "button{font-size:1em;padding:6px 14px}.grid{display:flex;flex-wrap:wrap;gap:18px;padding-top:12px}"
            ".item{border:1px solid #ddd;padding:8px;text-align:center}.item img{width:320px;max-width:90vw;display:block;margin:6px 0}"
            ".opts label{margin:0 10px;cursor:pointer}")


def _block(n: int, images: tuple[bytes, ...], form: Form) -> str:
    if form.unit == "pair":
        a, b = images
        return (f'<div class="pair" data-pair="{n}"><b>Pair {n}</b>: {html.escape(form.question)}'
                f'<div class="imgs">'
                f'<label><input type="radio" name="p{n}" value="A" hidden><img src="{data_uri(a)}" alt="A"><div>A</div></label>'
                f'<label><input type="radio" name="p{n}" value="B" hidden><img src="{data_uri(b)}" alt="B"><div>B</div></label>'
                f"</div></div>")
    (img,) = images
    opts = "".join(f'<label><input type="radio" name="p{n}" value="{html.escape(o)}"> {html.escape(o)}</label>'
                   for o in form.options)
    return (f'<div class="item" data-item="{n}"><b>{n}</b>{(" " + html.escape(form.question)) if form.question else ""}'
            f'<img src="{data_uri(img)}" alt="frame {n}"><div class="opts">{opts}</div></div>')


def study_page(study: str, items: list[tuple], form: Form = PREFERENCE) -> str:
    """The reader's page: a block per item (a pair of images A / B, or one frame with a button per
    option), and a CSV download button. Nothing in a block but its number and images differs
    between blocks: the page holds no part of the key."""
    if form.unit not in ("pair", "item"):
        raise ValueError(f"Form.unit must be 'pair' or 'item', not {form.unit!r}")
    blocks = "".join(_block(n, tuple(images), form) for n, *images in items)
    if form.unit == "item":
        blocks = f"<div class='grid'>{blocks}</div>"
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>"
        f"{html.escape(form.title)} {html.escape(study)}</title><style>{PAGE_CSS}</style></head><body>"
        f"<h1>{html.escape(form.title)}</h1><p>{html.escape(form.intro)} When done, download your answers and send "
        f"the CSV file back. Study <code>{html.escape(study)}</code>, {len(items)} {'pairs' if form.unit == 'pair' else 'frames'}.</p>"
        "<div class='bar'>Your name or initials: <input id='reader' size='16'> "
        "<button onclick='download()'>Download answers (CSV)</button> <span id='count'></span></div>"
        + blocks
        + f"<script>const STUDY={json.dumps(study)};const UNIT={json.dumps(form.unit)};"
        f"const NITEMS={len(items)};{PAGE_JS}update();</script>"
        "</body></html>"
    )


def _load_key(path: Path) -> dict:
    try:
        key = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: unreadable key ({getattr(err, 'msg', type(err).__name__)}); "
                        "make a new study with --force") from err
    unit = key.get("unit", "pair") if isinstance(key, dict) else None
    if unit not in ("pair", "item") or not isinstance(key.get(unit + "s"), list) or "study" not in key:
        raise UserError(f"{path}: not a reader-study key; make a new study with --force")
    return key


def read_keys(run_dir: str | Path) -> dict[str, dict]:
    """Every reader-study key in ``run_dir`` by study id."""
    run_dir = Path(run_dir)
    paths = sorted(run_dir.glob(KEY_GLOB)) if run_dir.is_dir() else []
    if not paths:
        raise UserError(f"{run_dir / KEY_NAME}: no reader-study key; run 'diffice reader-study {run_dir}' first")
    keys = [_load_key(p) for p in paths]
    return {k["study"]: k for k in keys}


def answer_of(entry: dict) -> str:
    """The right (counted) choice of one key entry; counterfactual keys name it ``cf_side``."""
    return entry["answer"] if "answer" in entry else entry["cf_side"]


def read_answers(run_dir: str | Path, answers: str | Path) -> tuple[dict, dict[int, str], set[str]]:
    """The key an answers CSV belongs to, its choices by block number ('' = unanswered), its readers."""
    keys = read_keys(run_dir)
    answers = Path(answers)
    if not answers.is_file():
        raise UserError(f"{answers}: answers file not found")
    try:
        with open(answers, newline="", encoding="utf-8-sig") as fh:  # a spreadsheet's UTF-8 CSV starts with a BOM
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{answers}: unreadable CSV ({type(err).__name__})") from err
    units = "|".join(sorted({k.get("unit", "pair") for k in keys.values()}))
    if not rows or not {"study", "choice"} <= set(rows[0]):
        raise UserError(f"{answers}: expected columns study,{units},choice (the file the study page downloads)")
    key = keys.get((rows[0].get("study") or "").strip())
    held = ", ".join(f"'{s}'" for s in sorted(keys))
    for line, row in enumerate(rows, start=2):
        study = (row.get("study") or "").strip()
        if key is not None and study != key["study"] and study in keys:
            raise UserError(f"{answers}: line {line} is for study '{study}' but line 2 for study '{key['study']}'; "
                            "score one study's answers at a time (one file per study)")
        if key is None or study != key["study"]:
            raise UserError(f"{answers}: line {line} is for study '{study}', which {run_dir} does not hold (it holds "
                            f"{'study' if len(keys) == 1 else 'studies'} {held}: answers from another page or an older study)")
    unit = key.get("unit", "pair")
    if unit not in rows[0]:
        raise UserError(f"{answers}: expected columns study,{unit},choice (the file the study page downloads)")
    by_number = {int(e[unit]): e for e in key[unit + "s"]}
    options = {o.lower(): o for o in key.get("options", ["A", "B"])}
    seen: dict[int, str] = {}
    readers = set()
    for line, row in enumerate(rows, start=2):
        try:
            number = int(row[unit])
        except (TypeError, ValueError) as err:
            raise UserError(f"{answers}: line {line}: {unit} '{row.get(unit)}' is not a number") from err
        if number not in by_number:
            raise UserError(f"{answers}: line {line}: {unit} {number} is not in the study (1..{len(by_number)})")
        if number in seen:
            raise UserError(f"{answers}: line {line}: {unit} {number} answered twice")
        choice = (row.get("choice") or "").strip()
        if choice and choice.lower() not in options:
            raise UserError(f"{answers}: line {line}: choice '{row.get('choice')}' must be "
                            f"{', '.join(options.values())} or empty")
        seen[number] = options[choice.lower()] if choice else ""
        readers.add((row.get("reader") or "").strip())
    if not any(seen.values()):
        raise UserError(f"{answers}: no {unit} answered")
    return key, seen, {r for r in readers if r}


def score_answers(run_dir: str | Path, answers: str | Path, alpha: float = 0.05) -> dict:
    """Score one reader's answers CSV against the key of the study it answers (found by its id).

    Counterfactual studies: ``preferred_cf`` of ``answered`` pairs, ``fraction_cf`` and its
    interval. Other studies (``key["task"]``): ``correct`` of ``answered``, ``accuracy``, its
    interval and test; ``by_truth`` (per right answer: how often each option was chosen);
    ``fooled`` (``key["fooled"]`` = [truth, called], e.g. synthetic frames called real) and
    ``by_anomaly`` (per ``anomaly`` of the key's entries, where they have one) as k of n with
    their intervals."""
    key, seen, readers = read_answers(run_dir, answers)
    unit = key.get("unit", "pair")
    entries = {int(e[unit]): e for e in key[unit + "s"]}
    answered = {n: c for n, c in seen.items() if c}
    right = {n: c == answer_of(entries[n]) for n, c in answered.items()}
    s = binomial_summary(sum(right.values()), len(right), 1.0 - alpha)
    if "task" not in key:  # the paper's counterfactual study: its fields as they always were
        return {"study": key["study"], "readers": sorted(readers), "pairs": len(entries),
                "answered": s["n"], "preferred_cf": s["k"], "fraction_cf": s["fraction"], "ci_low": s["ci_low"],
                "ci_high": s["ci_high"], "confidence": 1 - alpha, "p_value": s["p_value"]}
    by_truth: dict[str, dict] = {}
    for n, c in answered.items():
        t = by_truth.setdefault(answer_of(entries[n]), {"answered": 0, "called": {}})
        t["answered"] += 1
        t["called"][c] = t["called"].get(c, 0) + 1
    out = {"study": key["study"], "task": key["task"], "unit": unit, "readers": sorted(readers),
           "items": len(entries), "answered": s["n"], "correct": s["k"], "accuracy": s["fraction"],
           "ci_low": s["ci_low"], "ci_high": s["ci_high"], "confidence": 1 - alpha, "p_value": s["p_value"],
           "by_truth": by_truth, "fooled": None, "by_anomaly": {}}
    if key.get("fooled"):
        truth, called = key["fooled"]
        t = by_truth.get(truth)
        if t:
            out["fooled"] = {"truth": truth, "called": called,
                             **binomial_summary(t["called"].get(called, 0), t["answered"], 1.0 - alpha)}
    groups: dict[str, list[bool]] = {}
    for n, ok in right.items():
        if entries[n].get("anomaly") is not None:
            groups.setdefault(str(entries[n]["anomaly"]), []).append(ok)
    out["by_anomaly"] = {a: binomial_summary(sum(v), len(v), 1.0 - alpha) for a, v in sorted(groups.items())}
    return out
