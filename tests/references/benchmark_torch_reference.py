"""CPU side by side: the train step of the PyTorch reference of the official TiTok (eager, as the official
training script runs it) on the same shapes as `python -m titok_jax.benchmark`'s train mode.

  python tests/benchmark_torch_reference.py --model=tiny_vq --batch=32 --steps=20
  python tests/benchmark_torch_reference.py --model=s128_stage1 --batch=4 --steps=3

tiny_vq: the single-stage tiny tokenizer (32 px, 4 px patches, 2 + 2 blocks 64 wide, 16 tokens, 256 x 8 l2 codes),
  loss L2 + quantizer loss, AdamW. s128_stage1: TiTok-S-128 stage 1 at 256 px with the frozen MaskGIT-VQGAN
  teacher encoding the batch (no grad), cross-entropy over the 1024 proxy codes + quantizer loss, AdamW.
Both sides use fp32 and every core torch sees (torch.get_num_threads()). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from official_torch_reference import TOKENIZER_VARIANTS, OfficialTiTok, OfficialVQGANPort

TINY_VQ = {
    "model": {
        "vq_model": {
            "codebook_size": 256,
            "token_size": 8,
            "use_l2_norm": True,
            "commitment_cost": 0.05,
            "vit_enc_patch_size": 4,
            "vit_dec_patch_size": 4,
            "num_latent_tokens": 16,
            "finetune_decoder": False,
            "is_legacy": False,
            **{f"vit_{p}_{k}": v for p in ("enc", "dec") for k, v in (("width", 64), ("depth", 2), ("num_heads", 2))},
        }
    },
    "dataset": {"preprocessing": {"crop_size": 32}},
}


def _s128_stage1() -> dict:
    config = json.loads(json.dumps(TOKENIZER_VARIANTS["titok_s128"]))
    config["model"]["vq_model"]["finetune_decoder"] = False  # stage 1: proxy-code logits, no pixel decoder
    return config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=("tiny_vq", "s128_stage1"), default="tiny_vq")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    stage1 = args.model == "s128_stage1"
    config = _s128_stage1() if stage1 else TINY_VQ
    size = config["dataset"]["preprocessing"]["crop_size"]
    model = OfficialTiTok(config).train()
    teacher = OfficialVQGANPort().eval() if stage1 else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.99), weight_decay=1e-4)
    images = torch.rand(args.batch, 3, size, size)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        decoded, info = model(images)
        if stage1:
            with torch.no_grad():
                codes = teacher.encode(images)
            loss = F.cross_entropy(decoded, codes) + info["quantizer_loss"]
        else:
            loss = F.mse_loss(decoded, images) + info["quantizer_loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = (time.perf_counter() - start) / args.steps
    print(json.dumps({
        "framework": f"torch {torch.__version__} (eager)", "threads": torch.get_num_threads(), "model": args.model,
        "batch": args.batch, "step_ms": round(1e3 * seconds, 1), "images_per_second": round(args.batch / seconds, 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
