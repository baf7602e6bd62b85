r"""The tiny variable-length tokenizer at the README budget against the same run without token dropout.

  python benchmarks/tiny_variable_length.py --root=/tmp/tiny_variable_length [--seeds=42,1,2,3]

For every seed it trains `titok_single_stage.py:tiny_vq_nested` and `tiny_vq` with the README's tokenizer command
(2,400 steps of 16 on one CPU device); the two configs differ only in the token-dropout fields (checked first), so
tiny_vq is the same run without dropout. Each is scored on the 256 held-out images with
`python -m titok_jax.evaluate --metrics=mse` (the nested run with `--token_counts=1,2,4,...,K`). It prints the MSE
by k and exits 1 when a claim of issue 22 fails, on the means over the seeds:
- every k is at least as good as k / 2 (the error falls monotonically with k);
- at k = K the nested run is within --tolerance (15%) of the run without dropout.
Finished runs are read back from ROOT/results.json. About 7 CPU minutes per seed on 2 cores
(docs/variable_length.md has the measured table).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import numpy as np
from tiny_runs import TOKENIZERS, Results, report, run, train_tokenizer

NESTED, WITHOUT = "tiny_vq_nested", "tiny_vq"


def check_same_run(get_config) -> None:
    """Refuse to compare unless tiny_vq is tiny_vq_nested without its token-dropout fields."""
    nested, without = get_config(NESTED).to_dict(), get_config(WITHOUT).to_dict()
    for config in (nested, without):
        config.pop("variant")
        config["model"] = {k: v for k, v in config["model"].items() if not k.startswith("token_dropout")}
    if nested != without:
        raise SystemExit(f"{NESTED} and {WITHOUT} differ in more than token dropout: not the same run without it.")


def heldout_mse(root: str, variant: str, seed: int, num_tokens: int) -> dict[str, float]:
    """Train one run, then its held-out MSE: {"k": mse} for every power-of-two k (nested) or {"K": mse}."""
    workdir = os.path.join(root, f"{variant}_seed{seed}")
    train_tokenizer(workdir, variant, seed)
    evaluate = ["titok_jax.evaluate", f"--config={TOKENIZERS}:{variant}", f"--workdir={workdir}", "--metrics=mse"]
    if variant == NESTED:
        counts = [2**i for i in range(int(np.log2(num_tokens)) + 1)]
        result = run(*evaluate, f"--token_counts={','.join(map(str, counts))}")
        return {k: row["mse"] for k, row in result["by_num_tokens"].items()}
    return {str(num_tokens): run(*evaluate)["mse"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="Folder for the runs and results.json.")
    parser.add_argument("--seeds", default="42,1,2,3")
    parser.add_argument("--tolerance", type=float, default=0.15, help="Allowed relative excess at k = K.")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    sys.path.insert(0, str(TOKENIZERS.parents[1]))
    from titok_jax import configs

    def get_config(variant: str):
        return configs.load_config(f"{TOKENIZERS}:{variant}")

    check_same_run(get_config)
    num_tokens = get_config(NESTED).model.num_latent_tokens
    results = Results(args.root)
    for seed in seeds:
        for name in (NESTED, WITHOUT):
            row = results.remember(f"{name}/{seed}", lambda n=name, s=seed: heldout_mse(args.root, n, s, num_tokens))
            print(f"{name} seed {seed}: held-out MSE by k {row}")

    counts = sorted(int(k) for k in results[f"{NESTED}/{seeds[0]}"])
    # name -> {k: mean over the seeds}; the runs without dropout have k = K only
    means = {
        name: {
            int(k): float(np.mean([results[f"{name}/{s}"][k] for s in seeds])) for k in results[f"{name}/{seeds[0]}"]
        }
        for name in (NESTED, WITHOUT)
    }
    print("\n| run | k | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |")
    print("|---|---|" + "---|" * (len(seeds) + 1))
    for name in (NESTED, WITHOUT):
        for k in sorted(means[name]):
            values = " | ".join(f"{results[f'{name}/{s}'][str(k)]:.4f}" for s in seeds)
            print(f"| {name} | {k} | {values} | {means[name][k]:.4f} |")

    failures = []
    nested = means[NESTED]
    for small, large in itertools.pairwise(counts):
        if nested[large] > nested[small]:
            failures.append(f"k = {large} mean MSE {nested[large]:.4f} is worse than k = {small}'s {nested[small]:.4f}")
    full, baseline = nested[num_tokens], means[WITHOUT][num_tokens]
    print(f"k = K: {NESTED} {full:.4f} vs {WITHOUT} {baseline:.4f} ({full / baseline - 1:+.0%})")
    if full > baseline * (1 + args.tolerance):
        failures.append(f"k = K mean MSE {full:.4f} > {WITHOUT}'s {baseline:.4f} x {1 + args.tolerance}")
    return report(failures)


if __name__ == "__main__":
    sys.exit(main())
