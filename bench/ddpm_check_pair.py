"""Two DDPMs on the same frames, paired: ``diffice ddpm-check ... --out A`` and ``--out B`` (same split,
count, cf.tau and seed), then

    .venv/bin/python bench/ddpm_check_pair.py A/ddpm_check.json B/ddpm_check.json

prints, frame by frame over the frames both checked: SonoNet-16's brain-plane calls of the two
reconstructions (exact McNemar) and their PSNR difference B − A (bootstrap interval, Wilcoxon).
"""
import argparse
import json

from diffice.metrics.stats import fmt_interval, fmt_p, mcnemar, paired_difference

ap = argparse.ArgumentParser()
ap.add_argument("a")
ap.add_argument("b")
args = ap.parse_args()
runs = [json.load(open(p)) for p in (args.a, args.b)]
frames = [{f["index"]: f for f in r.get("per_frame", [])} for r in runs]
common = sorted(set(frames[0]) & set(frames[1]))
if not common:
    raise SystemExit("the two checks share no frame (per_frame missing: rerun ddpm-check with this diffice)")
for name, r in zip("AB", runs):
    print(f"{name}: {r['ckpt']} ({r['trained_steps']} steps), tau {r['tau']}, {r['frames']} frames")
print(f"paired over {len(common)} frames")
if "brain_reconstruction" in frames[0][common[0]]:
    inp = [frames[0][i]["brain_input"] for i in common]
    a = [frames[0][i]["brain_reconstruction"] for i in common]
    b = [frames[1][i]["brain_reconstruction"] for i in common]
    m = mcnemar(a, b)
    print(f"SonoNet-16 brain plane: frames {sum(inp)}, A {m['a']}, B {m['b']} of {m['n']} "
          f"(A only {m['a_only']}, B only {m['b_only']}; exact McNemar p = {fmt_p(m['p_value'])})")
d = paired_difference([frames[0][i]["psnr"] for i in common], [frames[1][i]["psnr"] for i in common])
print(f"PSNR B − A: {fmt_interval(d, 2)} dB (Wilcoxon p = {fmt_p(d['p_value'])})")
