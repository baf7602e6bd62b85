r"""The tiny tokenizer under each quantizer at the README budget, and a tiny generator over FSQ tokens.

  python benchmarks/tiny_quantizers.py --root=/tmp/tiny_quantizers [--seeds=42,1] [--quantizers=vq,fsq,lfq]

For every seed and quantizer it runs the README's tokenizer command (`python -m titok_jax.main`, the
`titok_single_stage.py:tiny_<q>` variant, 2,400 steps of 16 on one CPU device) and reads the held-out EMA
reconstruction MSE and the codebook use of the end-of-run evaluation; then, over the tiny_fsq run of each seed,
the README's generator commands (pretokenize with --flip, `maskgit_generator.py:tiny,tokenizer=tiny_fsq` for
1,800 steps) and the masked-token accuracy against the best context-free guess (each position's most frequent
code). It prints one table and exits 1 when a claim fails:
- every lookup-free quantizer's MSE, averaged over the seeds, is at most tiny_vq's (times 1 + --tolerance);
- the FSQ generator's accuracy beats 1.3x the per-position mode (the README generator test's bar).
Finished runs are read back from ROOT/results.json, so a rerun only trains what is missing. About 12 CPU
minutes per seed on 2 cores (docs/quantizers.md has the measured tables).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from tiny_runs import REPO, TOKENIZERS, Results, report, run, train_tokenizer

sys.path.insert(0, str(REPO))

from titok_jax.data import tokens as token_data

GENERATOR = REPO / "experiments" / "maskgit_generator.py"


def per_position_mode_accuracy(tokens_dir: str) -> float:
    """The best context-free guess of a masked token: the most frequent code at its position."""
    names = sorted(n for n in os.listdir(tokens_dir) if n.endswith(".array_record"))
    codes = np.stack([r["tokens"][0] for n in names for r in token_data.read_shard(os.path.join(tokens_dir, n))])
    modes = np.array([np.bincount(column).argmax() for column in codes.T])
    return float(np.mean(codes == modes))


def tokenizer_run(root: str, quantizer: str, seed: int) -> dict:
    workdir = os.path.join(root, f"tiny_{quantizer}_seed{seed}")
    metrics = train_tokenizer(workdir, f"tiny_{quantizer}", seed)
    return {
        "workdir": workdir,
        "heldout_mse": metrics["eval/ema_reconstruction_mse"],
        "codebook_usage": metrics.get("eval/codebook_usage"),
        "dead_codes": metrics.get("eval/dead_codes"),
        "codebook_entropy_bits": metrics.get("eval/codebook_entropy_bits"),
    }


def fsq_generator_run(root: str, tokenizer_dir: str, seed: int) -> dict:
    tokens_dir = os.path.join(root, f"tiny_fsq_tokens_seed{seed}")
    run(
        "titok_jax.pretokenize",
        f"--config={TOKENIZERS}:tiny_fsq",
        f"--tokenizer={tokenizer_dir}",
        f"--output={tokens_dir}",
        "--flip",
    )
    metrics = run(
        "titok_jax.main",
        f"--config={GENERATOR}:tiny,tokenizer=tiny_fsq",
        f"--config.tokenizer.workdir={tokenizer_dir}",
        f"--config.tokens_dir={tokens_dir}",
        f"--workdir={os.path.join(root, f'tiny_fsq_generator_seed{seed}')}",
        f"--config.seed={seed}",
    )
    return {"masked_token_accuracy": metrics["masked_token_accuracy"], "mode": per_position_mode_accuracy(tokens_dir)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="Folder for the runs and results.json.")
    parser.add_argument("--seeds", default="42,1")
    parser.add_argument("--quantizers", default="vq,fsq,lfq", help="vq first: the others are compared with it.")
    parser.add_argument("--tolerance", type=float, default=0.0, help="Allowed relative excess over tiny_vq's MSE.")
    parser.add_argument("--no_generator", action="store_true", help="Skip the generator over FSQ tokens.")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    quantizers = args.quantizers.split(",")
    results = Results(args.root)
    remember = results.remember

    for seed in seeds:
        for quantizer in quantizers:
            row = remember(f"tiny_{quantizer}/{seed}", lambda q=quantizer, s=seed: tokenizer_run(args.root, q, s))
            print(f"tiny_{quantizer} seed {seed}: held-out MSE {row['heldout_mse']:.4f}, usage {row['codebook_usage']}")
        if "fsq" in quantizers and not args.no_generator:
            tokenizer_dir = results[f"tiny_fsq/{seed}"]["workdir"]
            remember(f"generator_fsq/{seed}", lambda d=tokenizer_dir, s=seed: fsq_generator_run(args.root, d, s))

    failures = []
    print("\n| tokenizer | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | eval codebook usage |")
    print("|---|" + "---|" * (len(seeds) + 2))
    means = {}
    for quantizer in quantizers:
        rows = [results[f"tiny_{quantizer}/{s}"] for s in seeds]
        means[quantizer] = float(np.mean([r["heldout_mse"] for r in rows]))
        usage = ", ".join(f"{r['codebook_usage']:.0%}" for r in rows if r["codebook_usage"] is not None)
        mses = " | ".join(f"{r['heldout_mse']:.4f}" for r in rows)
        print(f"| tiny_{quantizer} | {mses} | {means[quantizer]:.4f} | {usage} |")
    for quantizer in quantizers:
        if quantizer != "vq" and "vq" in means and means[quantizer] > means["vq"] * (1 + args.tolerance):
            failures.append(f"tiny_{quantizer} mean held-out MSE {means[quantizer]:.4f} > tiny_vq {means['vq']:.4f}")
    if "fsq" in quantizers and not args.no_generator:
        print("\n| generator over FSQ tokens | masked-token accuracy | per-position mode |\n|---|---|---|")
        for seed in seeds:
            row = results[f"generator_fsq/{seed}"]
            print(f"| seed {seed} | {row['masked_token_accuracy']:.3f} | {row['mode']:.3f} |")
            if not row["masked_token_accuracy"] > 1.3 * row["mode"]:
                failures.append(f"seed {seed}: generator accuracy {row['masked_token_accuracy']:.3f} <= 1.3 x mode")
    return report(failures)


if __name__ == "__main__":
    sys.exit(main())
