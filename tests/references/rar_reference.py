"""PyTorch test reference of the official RAR generator (bytedance/1d-tokenizer @ 942a96f, modeling/rar.py).

Written from the facts in shared/spec/next-wave.md section 1 (RAR) and checked against the official
module, not copied from it: it reproduces the official `RAR` state_dict keys and shapes (so a released
`rar_{b,l,xl,xxl}.bin` loads strict) and its forward / sampling numerics, so that titok_jax's RAR port
and converter can be tested against "the official model" without installing timm or the official repo.

  RARReference(hidden_size, depth, num_heads, intermediate_size, num_tokens, codebook_size, num_classes)
      .forward_fn(input_ids, condition, orders=None, is_sampling=False, return_labels=False)
      .loss(logits, labels) -> (mean CE, token accuracy)            (modules/losses.py ARLoss)
      .generate(condition_classes, guidance_scale, temperature, guidance_scale_pow, kv_cache, generator)
      .logits_next(ids, condition)                                  next-token logits, no cache
      .preprocess_condition(classes) / .null_condition(batch)        class -> stored condition id
      .randomize_(std)                                              non-trivial weights for parity tests
  reference_param_count(hidden_size, depth, ...)                   exact parameter count from the layout

Vocabulary (one shared embedding table of V + 1 + C + 1 rows): ids 0..V-1 image codes, V the (unused)
mask id, V+1..V+C the classes (class + V + 1), V+1+C the null / dropped class. lm_head has V outputs.
Sequence: [cls, cond, x_0 .. x_{n-1}] (length n + 2), fully causal; the cls output is dropped, so the
logits have n + 1 rows: row j predicts image token j (row 0 = the cond slot).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-6


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def _causal_mask(length: int) -> torch.Tensor:
    """Additive float mask, -inf above the diagonal (as the official `build_causal_mask`)."""
    return torch.full((length, length), float("-inf")).triu_(1)


class _Attention(nn.Module):
    """qkv (bias) -> heads -> LayerNorm(head_dim) on q and k -> SDPA -> proj. qkv rows are [q; k; v],
    each head-major. Optionally takes / returns a per-layer (k, v) cache."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float, proj_drop: float):
        super().__init__()
        assert dim % num_heads == 0, "dim must be divisible by num_heads"
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=LN_EPS)
        self.k_norm = nn.LayerNorm(self.head_dim, eps=LN_EPS)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = proj_drop

    def forward(self, x, attn_mask=None, cache=None):
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, n, head_dim)
        q, k = self.q_norm(q), self.k_norm(k)
        if cache is not None:  # append this call's keys / values to the cached ones
            k = torch.cat([cache[0], k], dim=-2)
            v = torch.cat([cache[1], v], dim=-2)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop if self.training else 0.0
        )
        out = out.transpose(1, 2).reshape(b, n, d)
        out = F.dropout(self.proj(out), self.proj_drop, self.training)
        return out, (k, v)


class _Mlp(nn.Module):
    """timm Mlp: fc1 -> exact GELU -> dropout -> fc2 -> dropout."""

    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = drop

    def forward(self, x):
        x = F.dropout(F.gelu(self.fc1(x)), self.drop, self.training)
        return F.dropout(self.fc2(x), self.drop, self.training)


class _Block(nn.Module):
    """Pre-LN DiT block with adaLN(-zero) modulation from the per-slot conditioning vector c."""

    def __init__(self, dim, num_heads, mlp_hidden, drop, attn_drop):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = _Attention(dim, num_heads, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = _Mlp(dim, mlp_hidden, drop)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c, attn_mask=None, cache=None):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)
        attn_out, kv = self.attn(_modulate(self.norm1(x), shift_msa, scale_msa), attn_mask, cache)
        x = x + gate_msa * attn_out
        x = x + gate_mlp * self.mlp(_modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x, kv


class _FinalLayer(nn.Module):
    """Non-affine LN, then modulation with (scale, shift) -- scale FIRST -- from SiLU -> Linear(D, 2D)."""

    def __init__(self, dim):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, eps=LN_EPS, elementwise_affine=False)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, c):
        scale, shift = self.adaLN_modulation(c).chunk(2, dim=-1)
        return _modulate(self.norm_final(x), shift, scale)


class RARReference(nn.Module):
    """The official `RAR` (state_dict-compatible). `num_tokens` is the image sequence length N."""

    def __init__(
        self,
        hidden_size: int,
        depth: int,
        num_heads: int,
        intermediate_size: int,
        num_tokens: int,
        codebook_size: int,
        num_classes: int,
        dropout: float = 0.1,
        attn_drop: float = 0.1,
    ):
        super().__init__()
        d = hidden_size
        self.hidden_size = d
        self.num_tokens = num_tokens
        self.codebook_size = codebook_size
        self.num_classes = num_classes
        self.null_condition_id = codebook_size + 1 + num_classes
        # The official passes mlp_ratio = intermediate / D and timm takes int(D * mlp_ratio).
        mlp_hidden = int(d * (intermediate_size / d))

        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.blocks = nn.ModuleList([_Block(d, num_heads, mlp_hidden, dropout, attn_drop) for _ in range(depth)])
        self.embeddings = nn.Embedding(codebook_size + 1 + num_classes + 1, d)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens + 1024, d))
        self.target_aware_pos_embed = nn.Parameter(torch.zeros(1, num_tokens + 1024, d))
        self.timesteps_embeddings = nn.Parameter(torch.zeros(1, num_tokens + 100, d))
        self.adaln_before_head = _FinalLayer(d)
        self.lm_head = nn.Linear(d, codebook_size)
        self.register_buffer("attn_mask", _causal_mask(num_tokens + 1024), persistent=False)
        self.reset_parameters()

    # ------------------------------------------------------------------ init

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official init: trunc-normal 0.02 for Linear / Embedding weights and the three tables,
        zero biases, LayerNorm (1, 0), adaLN-zero for every modulation Linear, cls_token zero."""
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                nn.init.trunc_normal_(mod.weight, mean=0.0, std=0.02)
                nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.Embedding):
                nn.init.trunc_normal_(mod.weight, mean=0.0, std=0.02)
            elif isinstance(mod, nn.LayerNorm) and mod.weight is not None:
                nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)
        for table in (self.pos_embed, self.target_aware_pos_embed, self.timesteps_embeddings):
            nn.init.trunc_normal_(table, mean=0.0, std=0.02)
        for mod in [blk.adaLN_modulation[1] for blk in self.blocks] + [self.adaln_before_head.adaLN_modulation[1]]:
            nn.init.zeros_(mod.weight)
            nn.init.zeros_(mod.bias)
        self.cls_token.zero_()

    @torch.no_grad()
    def randomize_(self, std: float = 0.05, generator: torch.Generator | None = None) -> RARReference:
        """Fill EVERY parameter (adaLN, cls_token and the tables included) with N(0, std^2); LayerNorm
        weights get 1 + N(0, std^2). Uses the global torch RNG (seed it with torch.manual_seed) unless
        `generator` is given. Draws in named_parameters order. Returns self."""
        norm_weights = {id(m.weight) for m in self.modules() if isinstance(m, nn.LayerNorm) and m.weight is not None}
        for p in self.parameters():
            values = std * torch.randn(p.shape, generator=generator, dtype=torch.float32)
            if id(p) in norm_weights:
                values += 1.0
            p.copy_(values.to(device=p.device, dtype=p.dtype))
        return self

    # ------------------------------------------------------------------ conditions

    def preprocess_condition(self, classes: torch.Tensor) -> torch.Tensor:
        """Class index in [0, C) -> stored condition id class + V + 1 (no label dropout)."""
        return classes + self.codebook_size + 1

    def null_condition(self, like: torch.Tensor) -> torch.Tensor:
        return torch.full_like(like, self.null_condition_id)

    # ------------------------------------------------------------------ forward

    def _tables(self, orders: torch.Tensor):
        """(B, N+2, D) position table [pos_0, pos_1, pos_{2+order}] and (B, N+2, D) target-aware table
        [0, TA_{2+order[0]}, ..., TA_{2+order[N-1]}, 0]: slot 0 (cls) 0, slot 1 (cond) TA[2+order[0]],
        slot 2+i TA[2+order[i+1]], the last image slot 0."""
        b = orders.shape[0]
        n_img = self.num_tokens
        rows = orders + 2  # (B, N)
        pos = self.pos_embed[0]
        ta = self.target_aware_pos_embed[0]
        pos_table = torch.cat([pos[:2].unsqueeze(0).expand(b, -1, -1), pos[rows]], dim=1)
        zero = torch.zeros(b, 1, self.hidden_size, dtype=ta.dtype, device=ta.device)
        ta_table = torch.cat([zero, ta[rows], zero], dim=1)
        assert pos_table.shape[1] == ta_table.shape[1] == n_img + 2
        return pos_table, ta_table

    def _embed(self, input_ids, condition, orders, is_sampling):
        """Input sequence x (B, n+2, D), per-slot conditioning c (B, n+2, D) and the (permuted) labels."""
        b, n = input_ids.shape
        if orders is None:
            orders = torch.arange(self.num_tokens, device=input_ids.device).unsqueeze(0).expand(b, -1)
        labels = input_ids.clone()
        cond_emb = self.embeddings(condition.view(b))  # (B, D), raw embedding, no position
        tok_emb = self.embeddings(input_ids)  # (B, n, D)
        if not is_sampling:
            if n != self.num_tokens:  # the official `shuffle` needs the full sequence
                raise ValueError(f"is_sampling=False needs n == num_tokens ({self.num_tokens}), got {n}")
            gather = orders.unsqueeze(-1).expand(-1, -1, tok_emb.shape[-1])
            tok_emb = torch.gather(tok_emb, 1, gather)
            labels = torch.gather(labels, 1, orders)
        x = torch.cat([self.cls_token.expand(b, -1, -1), cond_emb.unsqueeze(1), tok_emb], dim=1)
        length = x.shape[1]
        pos_table, ta_table = self._tables(orders)
        x = x + pos_table[:, :length]
        x = x + ta_table[:, :length]
        c = cond_emb.unsqueeze(1) + self.timesteps_embeddings[:, :length]
        return x, c, labels

    def forward_fn(
        self,
        input_ids: torch.Tensor,
        condition: torch.Tensor,
        orders: torch.Tensor | None = None,
        is_sampling: bool = False,
        return_labels: bool = False,
    ):
        """input_ids (B, n) long (n == N unless is_sampling); condition (B,) long, already preprocessed
        (class + V + 1, or the null id V + 1 + C); orders (B, N) long or None (raster).
        Returns logits (B, n+1, V) and, with return_labels, the labels (permuted by orders unless
        is_sampling). Like the official, is_sampling only turns off the permutation of the tokens and
        labels; the position / target-aware tables are still permuted by `orders`."""
        x, c, labels = self._embed(input_ids, condition, orders, is_sampling)
        length = x.shape[1]
        mask = self.attn_mask[:length, :length]
        for blk in self.blocks:
            x, _ = blk(x, c, attn_mask=mask)
        x, c = x[:, 1:], c[:, 1:]  # drop the cls slot
        logits = self.lm_head(self.adaln_before_head(x, c))
        return (logits, labels) if return_labels else logits

    def forward(self, input_ids, condition, orders=None, return_labels=False):
        return self.forward_fn(input_ids, condition, orders=orders, return_labels=return_labels)

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor):
        """ARLoss: drop the last output, mean CE of the remaining N rows against labels (B, N);
        also the token accuracy (argmax == label, averaged). Returns (loss, accuracy)."""
        shift = logits[:, :-1]
        loss = F.cross_entropy(shift.reshape(-1, shift.shape[-1]).float(), labels.reshape(-1))
        accuracy = (shift.argmax(-1) == labels).float().mean()
        return loss, accuracy

    @torch.no_grad()
    def logits_next(self, ids: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) of the next token after `ids` (B, n), n < N, raster order, no cache."""
        return self.forward_fn(ids, condition, is_sampling=True)[:, -1]

    # ------------------------------------------------------------------ sampling

    def _cached_step(self, ids, condition, caches):
        """One KV-cached step. First call (caches None): slots [cls, cond] with the causal mask; later
        calls: only the newest slot (n + 1), no mask, keys/values appended per layer. The slot's input
        and conditioning vector are those of the full sequence at that slot. Returns logits (B, V)."""
        x, c, _ = self._embed(ids, condition, None, True)
        if caches is None:
            mask = self.attn_mask[:2, :2]
            layer_caches = [None] * len(self.blocks)
        else:
            x, c, mask = x[:, -1:], c[:, -1:], None
            layer_caches = caches
        new_caches = []
        for blk, cache in zip(self.blocks, layer_caches, strict=True):
            x, kv = blk(x, c, attn_mask=mask, cache=cache)
            new_caches.append(kv)
        logits = self.lm_head(self.adaln_before_head(x, c))
        return logits[:, -1], new_caches

    @torch.no_grad()
    def generate(
        self,
        condition_classes: torch.Tensor,
        guidance_scale: float,
        temperature: float,
        guidance_scale_pow: float,
        kv_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """N raster steps, one token each. cfg_scale_t = (g-1)(1 - cos(pi (t/N)^p))/2 + 1 (torch pow, so
        0**0 = 1); whenever g != 0 the cond and null batches run concatenated and
        logits = uncond + (cond - uncond) * cfg_scale_t. logits / temperature, softmax, one multinomial
        draw per sample (from `generator`, else the global RNG, in the same order as the official, which
        first spends B uniforms on its no-op label dropout).
        condition_classes (B,) in [0, C). Returns ids (B, N) long."""
        device = condition_classes.device
        # The official preprocess_condition draws its label-dropout uniforms (rand_like, B values) from
        # the RNG even with cond_drop_prob 0; draw (and discard) them too so the multinomials line up.
        torch.rand(condition_classes.shape, generator=generator, device=device)
        condition = self.preprocess_condition(condition_classes)
        b = condition.shape[0]
        ids = torch.full((b, 0), -1, dtype=torch.long, device=device)
        use_cfg = guidance_scale != 0
        if use_cfg:
            condition = torch.cat([condition, self.null_condition(condition)], dim=0)
        caches = None
        for step in range(self.num_tokens):
            scale_pow = torch.ones(1, device=device) * guidance_scale_pow
            scale_step = (1 - torch.cos(((step / self.num_tokens) ** scale_pow) * math.pi)) * 1 / 2
            cfg_scale = (guidance_scale - 1) * scale_step + 1
            batch_ids = torch.cat([ids, ids], dim=0) if use_cfg else ids
            if kv_cache:
                logits, caches = self._cached_step(batch_ids, condition, caches)
            else:
                logits = self.forward_fn(batch_ids, condition, is_sampling=True)[:, -1]
            if use_cfg:
                cond_logits, uncond_logits = logits[:b], logits[b:]
                logits = uncond_logits + (cond_logits - uncond_logits) * cfg_scale
            probs = F.softmax(logits / temperature, dim=-1)
            sampled = torch.multinomial(probs, num_samples=1, generator=generator)
            ids = torch.cat([ids, sampled], dim=-1)
        return ids


def reference_param_count(
    hidden_size: int,
    depth: int,
    num_tokens: int = 256,
    codebook_size: int = 1024,
    num_classes: int = 1000,
    intermediate_size: int | None = None,
    num_heads: int = 16,
) -> int:
    """Exact parameter count of the official RAR layout (intermediate_size defaults to 4 * D; the
    released XXL uses 6144, not 4 * 1408)."""
    d, n, v, c = hidden_size, num_tokens, codebook_size, num_classes
    mlp = int(d * ((intermediate_size or 4 * d) / d))
    head_dim = d // num_heads
    top = (
        d  # cls_token (1, 1, D)
        + (v + 1 + c + 1) * d  # embeddings.weight
        + (n + 1024) * d  # pos_embed
        + (n + 1024) * d  # target_aware_pos_embed
        + (n + 100) * d  # timesteps_embeddings
    )
    block = (
        2 * d  # norm1 weight + bias
        + (3 * d * d + 3 * d)  # attn.qkv
        + 2 * head_dim  # attn.q_norm
        + 2 * head_dim  # attn.k_norm
        + (d * d + d)  # attn.proj
        + 2 * d  # norm2
        + (mlp * d + mlp)  # mlp.fc1
        + (d * mlp + d)  # mlp.fc2
        + (6 * d * d + 6 * d)  # adaLN_modulation.1
    )
    head = (
        (2 * d * d + 2 * d)  # adaln_before_head.adaLN_modulation.1 (norm_final has no parameters)
        + (v * d + v)  # lm_head
    )
    return top + depth * block + head


# name -> (hidden_size, depth, intermediate_size), README_RAR; 16 heads, N 256, V 1024, C 1000
RAR_SIZES = {
    "rar_b": (768, 24, 3072),
    "rar_l": (1024, 24, 4096),
    "rar_xl": (1280, 32, 5120),
    "rar_xxl": (1408, 40, 6144),
}


if __name__ == "__main__":
    for d, depth, heads, inter, n, v, c in [(64, 2, 4, 256, 16, 32, 10), (96, 3, 8, 200, 9, 17, 5)]:
        model = RARReference(d, depth, heads, inter, n, v, c)
        actual = sum(p.numel() for p in model.parameters())
        expected = reference_param_count(d, depth, n, v, c, inter, heads)
        assert actual == expected, (actual, expected)
        print(f"D={d} L={depth}: {actual} parameters (formula agrees)")
    for name, (d, depth, inter) in RAR_SIZES.items():
        count = reference_param_count(d, depth, intermediate_size=inter)
        print(f"{name}: {count} ({count / 1e6:.1f}M)")
