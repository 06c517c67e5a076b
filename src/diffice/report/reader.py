"""The paper's expert reader study: blinded input / counterfactual pairs with QD_O > 0.

``make_study`` samples pairs, randomises which side the counterfactual is on and the order,
and writes a self-contained page (images embedded; a reader picks the better image per pair
and downloads the answers as CSV, in the browser, no server) plus a key file the reader does
not see. ``score_answers`` compares an answers CSV with the key: the fraction of pairs where
the reader preferred the counterfactual, with an exact (Clopper–Pearson) binomial interval
and a two-sided binomial test against 0.5 (paper: 41 of 50).
"""

from __future__ import annotations

import csv
import hashlib
import html
import json
import math
import random
from pathlib import Path

from diffice.errors import UserError
from diffice.io import atomic_write_text
from diffice.report.html import data_uri
from diffice.report.records import load_records, num

KEY_NAME = ".reader-study-key.json"
PAGE_NAME = "reader-study.html"


def eligible_pairs(records: list[dict]) -> list[dict]:
    """Frames whose counterfactual the oracle scores higher than the input (QD_O > 0)."""
    return [r for r in records if math.isfinite(num(r["qs_cf"]) - num(r["qs_input"]))
            and num(r["qs_cf"]) - num(r["qs_input"]) > 0]


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
    key_path = run_dir / KEY_NAME
    if key_path.exists() and not force:
        raise UserError(f"{key_path}: a reader study already exists for this run; pass --force to make a new one "
                        "(answers to the old page will then no longer score)")
    rng = random.Random(f"reader-study:{seed}")
    chosen = rng.sample(pool, min(pairs, len(pool)))  # uniform sample, in random order
    study = hashlib.sha256(f"{run_dir.resolve()}:{seed}:{[r['index'] for r in chosen]}".encode()).hexdigest()[:12]
    key = {"study": study, "seed": seed, "run": run_dir.name, "requested": pairs, "pairs": []}
    items = []
    for n, rec in enumerate(chosen, start=1):
        cf_side = "A" if rng.random() < 0.5 else "B"
        images = {"input": (rec["_dir"] / "input.png").read_bytes(), "cf": (rec["_dir"] / "cf.png").read_bytes()}
        a, b = (images["cf"], images["input"]) if cf_side == "A" else (images["input"], images["cf"])
        key["pairs"].append({"pair": n, "index": int(rec["index"]), "id": str(rec["id"]), "cf_side": cf_side,
                             "qd_o": num(rec["qs_cf"]) - num(rec["qs_input"])})
        items.append((n, a, b))
    atomic_write_text(key_path, json.dumps(key, indent=1) + "\n")
    atomic_write_text(run_dir / PAGE_NAME, study_page(study, items))
    key["page"] = str(run_dir / PAGE_NAME)
    key["key"] = str(key_path)
    return key


PAGE_JS = """
function answers(){
  const reader=document.getElementById('reader').value.replace(/[,\\n\\r"]/g,' ').trim();
  let rows=['study,reader,pair,choice'];
  let done=0;
  document.querySelectorAll('.pair').forEach(p=>{
    const n=p.dataset.pair; const c=p.querySelector('input:checked');
    if(c){done++;}
    rows.push(STUDY+','+reader+','+n+','+(c?c.value:''));
  });
  return {csv:rows.join('\\n')+'\\n',done:done};
}
function update(){
  const a=answers(); document.getElementById('count').textContent=a.done+' of '+NPAIRS+' answered';
}
function download(){
  const a=answers();
  if(a.done<NPAIRS && !confirm((NPAIRS-a.done)+' pair(s) unanswered. Download anyway?')) return;
  const blob=new Blob([a.csv],{type:'text/csv'});
  const link=document.createElement('a'); link.href=URL.createObjectURL(blob);
  link.download='reader-answers-'+STUDY+'.csv'; document.body.appendChild(link); link.click(); link.remove();
}
document.addEventListener('change',update);
"""


def study_page(study: str, items: list[tuple[int, bytes, bytes]]) -> str:
    """The reader's page: pairs of images A / B, a radio choice each, and a CSV download button."""
    css = ("body{font-family:system-ui,sans-serif;margin:24px;max-width:1100px}.pair{border-top:1px solid #ddd;padding:12px 0}"
           ".imgs{display:flex;gap:24px}.imgs label{text-align:center;cursor:pointer}"
           ".imgs img{width:432px;max-width:45vw;image-rendering:auto;border:3px solid transparent}"
           "input:checked+img{border-color:#1f77b4}.bar{position:sticky;top:0;background:#fff;padding:8px 0;border-bottom:1px solid #ccc}"
           "button{font-size:1em;padding:6px 14px}")
    blocks = []
    for n, a, b in items:
        blocks.append(
            f'<div class="pair" data-pair="{n}"><b>Pair {n}</b>: which image is the better-quality standard plane?'
            f'<div class="imgs">'
            f'<label><input type="radio" name="p{n}" value="A" hidden><img src="{data_uri(a)}" alt="A"><div>A</div></label>'
            f'<label><input type="radio" name="p{n}" value="B" hidden><img src="{data_uri(b)}" alt="B"><div>B</div></label>'
            f"</div></div>")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Reader study "
        f"{html.escape(study)}</title><style>{css}</style></head><body>"
        f"<h1>Reader study</h1><p>For each pair, click the image you judge to be the better-quality fetal head "
        f"standard plane. When done, download your answers and send the CSV file back. "
        f"Study <code>{html.escape(study)}</code>, {len(items)} pairs.</p>"
        "<div class='bar'>Your name or initials: <input id='reader' size='16'> "
        "<button onclick='download()'>Download answers (CSV)</button> <span id='count'></span></div>"
        + "".join(blocks)
        + f"<script>const STUDY={json.dumps(study)};const NPAIRS={len(items)};{PAGE_JS}update();</script>"
        "</body></html>"
    )


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact two-sided (1 - alpha) interval of a binomial proportion k / n."""
    from scipy.stats import beta

    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def read_key(run_dir: str | Path) -> dict:
    path = Path(run_dir) / KEY_NAME
    if not path.is_file():
        raise UserError(f"{path}: no reader-study key; run 'diffice reader-study {run_dir}' first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: unreadable key ({err.msg}); make a new study with --force") from err


def score_answers(run_dir: str | Path, answers: str | Path, alpha: float = 0.05) -> dict:
    """Score one reader's answers CSV against the run's key."""
    key = read_key(run_dir)
    answers = Path(answers)
    if not answers.is_file():
        raise UserError(f"{answers}: answers file not found")
    try:
        with open(answers, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{answers}: unreadable CSV ({type(err).__name__})") from err
    need = {"study", "pair", "choice"}
    if not rows or not need <= set(rows[0]):
        raise UserError(f"{answers}: expected columns study,pair,choice (the file the study page downloads)")
    by_pair = {int(p["pair"]): p for p in key["pairs"]}
    seen: dict[int, str] = {}
    readers = set()
    for line, row in enumerate(rows, start=2):
        if (row.get("study") or "").strip() != key["study"]:
            raise UserError(f"{answers}: line {line} is for study '{row.get('study')}', but {run_dir} holds study "
                            f"'{key['study']}' (answers from another page or an older study)")
        try:
            pair = int(row["pair"])
        except (TypeError, ValueError) as err:
            raise UserError(f"{answers}: line {line}: pair '{row.get('pair')}' is not a number") from err
        if pair not in by_pair:
            raise UserError(f"{answers}: line {line}: pair {pair} is not in the study (1..{len(by_pair)})")
        if pair in seen:
            raise UserError(f"{answers}: line {line}: pair {pair} answered twice")
        choice = (row.get("choice") or "").strip().upper()
        if choice not in ("A", "B", ""):
            raise UserError(f"{answers}: line {line}: choice '{row.get('choice')}' must be A, B or empty")
        seen[pair] = choice
        readers.add((row.get("reader") or "").strip())
    answered = {p: c for p, c in seen.items() if c}
    if not answered:
        raise UserError(f"{answers}: no pair answered")
    k = sum(c == by_pair[p]["cf_side"] for p, c in answered.items())
    n = len(answered)
    lo, hi = clopper_pearson(k, n, alpha)
    from scipy.stats import binomtest

    return {"study": key["study"], "readers": sorted(r for r in readers if r), "pairs": len(by_pair),
            "answered": n, "preferred_cf": k, "fraction_cf": k / n, "ci_low": lo, "ci_high": hi,
            "confidence": 1 - alpha, "p_value": float(binomtest(k, n, 0.5).pvalue)}
