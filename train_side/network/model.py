"""The side network of Ladder Side Tuning, in its Ladder, xLadder and top-blocks forms, and the frozen LM head.

A side network reads a few hidden states h_k of a frozen backbone (L blocks, width d; h_0 is the
embedding output, h_L the post-final-norm state) and computes y (B, T, d) for the backbone's frozen
LM head. Ladder: the side state starts from h_0 and each side block first takes a "ladder" from its
tap h_t. xLadder(delta): it starts from h_{L-delta} and has 2 * delta blocks; the first delta take
ladders from h_{L-delta+1} .. h_L, the last delta take none::

    s = down_0(h_initial)                               # (B, T, d) -> (B, T, d_s)
    for block i:
        mu_i = sigmoid(alpha_i / temperature)           # only for blocks with a ladder
        s = mu_i * s + (1 - mu_i) * down_i(h_{tap_i})
        s = Block_i(s)
    out = up(norm(s))                                   # (B, T, d)
    y = (1 - z) * out + z * h_L,  z = sigmoid(beta)     # with mix; else y = out

Top(delta): the backbone's own top delta blocks at full width (copied from it by
``prune.copy_top_blocks``), with no ladders: ``s = h_{L-delta}; s = Block_i(s); y = norm(s)``, the
backbone's function from h_{L-delta} to h_L until training changes it.

Each down_i is RMSNorm then a linear map: the norm tames the "massive activations" of real residual
streams (single values ~1e4 in a few tokens) that would otherwise swamp the side state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from featurestore import head as stored_head
from featurestore.errors import UserError

from .encoded import Encoded, decoded

KINDS = ("ladder", "xladder", "top")
LADDER_ONLY = ("taps", "every")  # settings the other kinds refuse: they read the top delta blocks
LADDER_SHAPE = (*LADDER_ONLY, "reduction", "side_width")  # settings the top blocks (full width) ignore
# The defaults each kind won with in docs/compare (SmolLM2-135M on arith): the Ladder's levers there
# (width d/2, every block tapped, the pruned-backbone start) all lost to d/4 with every 3rd block tapped.
DELTA = {"xladder": 2, "top": 8}
EVERY, REDUCTION = 3, 4


class SideConfigError(UserError, ValueError):
    """Side-network settings that do not fit together or the backbone; the message says which."""


@dataclass
class SideConfig:
    """A Ladder, xLadder or top-blocks side network; JSON round-trips as ``SideConfig(**asdict(config))``."""

    n_layers: int  # backbone blocks L
    hidden_size: int  # backbone width d
    intermediate_size: int  # backbone MLP width
    kind: str | None = field(default=None, metadata={
        "choices": KINDS, "help": "ladder: ladders from taps along the backbone; xladder: from its top delta blocks; "
                                  "top: the backbone's own top delta blocks, at full width, read from h_{L-delta}. "
                                  "Default: top where the store holds the backbone's top blocks (extract keeps 8 of "
                                  "a Llama-style backbone) and no Ladder setting (taps, every, reduction, side "
                                  "width) is given, else ladder."})
    taps: list[int] | None = field(default=None, metadata={
        "help": "Ladder: backbone blocks feeding a ladder, e.g. 10,20,30 (default: see every)."})
    every: int | None = field(default=None, metadata={
        "help": f"Ladder without taps: every k-th block, counted down from L, so L is always a tap (default {EVERY})."})
    delta: int | None = field(default=None, metadata={
        "help": f"xLadder: top blocks tapped, the side network has 2 * delta blocks (default {DELTA['xladder']}); "
                f"top: blocks copied (default {DELTA['top']})."})
    reduction: int | None = field(default=None, metadata={
        "help": f"r: the side width is the backbone width / r, the side MLP width the backbone's / r (default "
                f"{REDUCTION}).", "min": 1})
    side_width: int | None = field(default=None, metadata={
        "help": "Explicit side width, overriding reduction (the MLP width keeps the backbone's ratio)."})
    n_heads: int | None = field(default=None, metadata={
        "aliases": ["heads"], "help": "Attention heads of the side blocks (default: side width // 32, at least 1)."})
    n_kv_heads: int | None = field(default=None, metadata={
        "help": "Key/value heads, shared by groups of query heads (default: n_heads)."})
    lora_rank: int = field(default=0, metadata={
        "help": "top: train rank-r LoRA adapters (alpha = 2r) on every linear map of the copied blocks and keep the "
                "blocks frozen, as QLoRA does (0: train the blocks themselves).", "min": 0})
    gate_temperature: float = field(default=0.1, metadata={
        "help": "T in mu = sigmoid(alpha / T): a small T makes the ladder gates learn fast."})
    mix: bool = field(default=True, metadata={
        "help": "Mix the output with the backbone's final state through a learned per-channel gate."})
    rope_theta: float = field(default=10000.0, metadata={"help": "RoPE base of the side blocks."})
    norm_eps: float = field(default=1e-5, metadata={"help": "RMSNorm epsilon."})

    def __post_init__(self):
        if self.taps is not None:
            self.taps = list(self.taps)  # a tuple would not survive the JSON round trip
        self.kind = self.kind or "ladder"  # a store's default (train_side.training.recipe) needs the store
        if self.kind not in KINDS:
            raise SideConfigError(f"kind must be one of {KINDS}, not {self.kind!r}")
        self.delta = self.delta if self.delta is not None else DELTA.get(self.kind, DELTA["xladder"])
        self.reduction = self.reduction if self.reduction is not None else REDUCTION
        if self.n_layers < 1:
            raise SideConfigError(f"n_layers must be at least 1, not {self.n_layers}")
        self._check_taps()
        if self.side_width is None and self.reduction < 1:
            raise SideConfigError(f"reduction must be a positive divisor of hidden_size {self.hidden_size}, not "
                                  f"{self.reduction}")
        if self.side_width is None and self.hidden_size % self.reduction:
            raise SideConfigError(f"hidden_size {self.hidden_size} is not divisible by reduction {self.reduction}")
        if self.width < 1 or self.mlp_width < 1:
            raise SideConfigError(f"side width {self.width} and MLP width {self.mlp_width} must be positive")
        if self.heads < 1 or self.width % self.heads or (self.width // self.heads) % 2:
            raise SideConfigError(f"side width {self.width} must split into {self.heads} heads of even size (RoPE); "
                             "set n_heads")
        if self.kv_heads < 1 or self.heads % self.kv_heads:
            raise SideConfigError(f"n_kv_heads {self.kv_heads} must divide n_heads {self.heads}")
        if self.lora_rank and self.kind != "top":
            raise SideConfigError(f"lora_rank adapts the backbone's blocks of a top network, not a {self.kind}")
        if self.gate_temperature <= 0:
            raise SideConfigError(f"gate_temperature must be positive, not {self.gate_temperature}")

    def _check_taps(self):
        L = self.n_layers
        if self.kind != "ladder":
            if self.taps is not None or self.every not in (None, 1):  # 1: every's default before EVERY
                raise SideConfigError(f"taps and every are Ladder options; {self.kind} reads the top delta blocks")
            self.every = None
            if not 1 <= self.delta <= L:
                raise SideConfigError(f"delta must be in 1..{L}, not {self.delta}")
        elif self.taps is None:
            self.every = self.every if self.every is not None else min(EVERY, L)
            if not 1 <= self.every <= L:
                raise SideConfigError(f"every must be in 1..{L}, not {self.every}")
        elif self.every not in (None, 1):
            raise SideConfigError("give taps or every, not both")
        elif not self.taps or self.taps != sorted(set(self.taps)) or not 1 <= self.taps[0] <= self.taps[-1] <= L:
            raise SideConfigError(f"taps must be a non-empty increasing list of blocks in 1..{L}, not {self.taps}")

    @property
    def width(self) -> int:
        if self.kind == "top":
            return self.hidden_size
        return self.side_width if self.side_width is not None else self.hidden_size // self.reduction

    @property
    def heads(self) -> int:
        return self.n_heads if self.n_heads is not None else max(1, self.width // 32)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads if self.n_kv_heads is not None else self.heads

    @property
    def mlp_width(self) -> int:
        return self.intermediate_size * self.width // self.hidden_size

    @property
    def initial(self) -> int:
        """The hidden state the side state starts from."""
        return 0 if self.kind == "ladder" else self.n_layers - self.delta

    @property
    def ladders(self) -> tuple[int, ...]:
        """The hidden state feeding each ladder, in side-block order."""
        L = self.n_layers
        if self.kind == "top":
            return ()
        if self.kind == "xladder":
            return tuple(range(L - self.delta + 1, L + 1))
        if self.taps is not None:
            return tuple(self.taps)
        return tuple(reversed(range(L, 0, -self.every)))

    @property
    def n_blocks(self) -> int:
        return {"ladder": len(self.ladders), "xladder": 2 * self.delta, "top": self.delta}[self.kind]

    @property
    def mixed(self) -> bool:
        """Whether the output is mixed with h_L (the top blocks compute h_L themselves)."""
        return self.mix and self.kind != "top"

    @property
    def inputs(self) -> tuple[int, ...]:
        """Every hidden-state index forward reads, so a data loader can read only those."""
        mixed = (self.n_layers,) if self.mixed else ()
        return tuple(sorted({self.initial, *self.ladders, *mixed}))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = wide(x)
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def wide(x: Tensor) -> Tensor:
    """x in at least float32: the squares of massive activations overflow half precision."""
    return x.float() if x.element_size() < 4 else x


class NormLinear(torch.autograd.Function):
    """linear(rms_norm(h) * g, W) = rstd * (h @ (W * g).T), saving for backward only h (as given:
    possibly still encoded) and its per-token rstd = 1 / rms.

    Written for memory: autograd would keep two normalised (B, T, d) copies of every ladder input,
    and with a ladder on each block those are the largest activations of a side network, while h
    itself is part of the batch, alive anyway. Folding the norm into the small (d_s, d) weight and
    the (B, T, d_s) output leaves no (B, T, d) temporary beyond decoding h: backward needs one
    matmul, M = (rstd * dy).T @ h, for both dW = M * g and dg = sum_i W_ij M_ij.
    ``decode`` maps the saved tensors to h (None: the single tensor is h)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, g: Tensor, W: Tensor, eps: float, decode, *tensors: Tensor) -> Tensor:
        h = decode(*tensors) if decode else tensors[0]
        rstd = rms_inverse(h, eps)  # (..., 1)
        ctx.decode = decode
        ctx.save_for_backward(g, W, rstd, *tensors)
        return F.linear(h, W * g) * rstd

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dy: Tensor):
        g, W, rstd, *tensors = ctx.saved_tensors
        h = ctx.decode(*tensors) if ctx.decode else tensors[0]
        dy_r = dy * rstd  # (..., d_s)
        M = dy_r.flatten(0, -2).T @ h.flatten(0, -2).type_as(dy_r)  # (d_s, d)
        dW, dg = M * g, (M * W).sum(0)
        dh = None
        if ctx.decode is None and ctx.needs_input_grad[4]:  # only when h itself is trained (never from a store)
            n32 = wide(h) * rstd
            dn = wide(dy @ (W * g).type_as(dy))  # gradient wrt the normalised input
            dh = (rstd * (dn - n32 * (dn * n32).mean(-1, keepdim=True))).type_as(h)
        return dg.to(g.dtype), dW.to(W.dtype), None, None, dh, *[None] * (len(tensors) - 1)


def rms_inverse(h: Tensor, eps: float) -> Tensor:
    """1 / sqrt(mean(h^2) + eps) per row (..., 1), in float32 and without a squared copy of h."""
    norm = torch.linalg.vector_norm(h, dim=-1, keepdim=True, dtype=torch.float32 if h.element_size() < 4 else None)
    return torch.rsqrt(norm.square() / h.shape[-1] + eps)


class Down(nn.Module):
    """A backbone hidden state into the side network: its own RMSNorm, then d -> d_s."""

    def __init__(self, config: SideConfig):
        super().__init__()
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.proj = nn.Linear(config.hidden_size, config.width, bias=False)

    def forward(self, h: Tensor | Encoded) -> Tensor:
        if isinstance(h, Encoded):
            return NormLinear.apply(self.norm.weight, self.proj.weight, self.norm.eps, h.decoder(), *h.parts.values())
        return NormLinear.apply(self.norm.weight, self.proj.weight, self.norm.eps, None, h)


class KVCache:
    """Keys and values of every side block, grown by each forward call during generation."""

    def __init__(self):
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []

    @property
    def length(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def update(self, block: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Appends k, v (B, H, T, hd) of a side block; returns all of its keys and values so far."""
        if block == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        else:
            self.keys[block] = torch.cat([self.keys[block], k], dim=2)
            self.values[block] = torch.cat([self.values[block], v], dim=2)
        return self.keys[block], self.values[block]


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return (x * cos + rotate_half(x) * sin).type_as(x)


class LoRALinear(nn.Linear):
    """A frozen linear map plus a trained low-rank update: x @ (W + (alpha / r) B A).T, B at zero
    so that it starts as W. Its ``weight`` keeps nn.Linear's name: the backbone's copies go there."""

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__(in_features, out_features, bias=False)
        self.weight.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(rank, in_features))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=5 ** 0.5)  # peft's init of A
        self.scale = 2.0  # alpha / r with alpha = 2r

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight) + self.scale * F.linear(F.linear(x, self.lora_a), self.lora_b)


def linear(config: SideConfig, in_features: int, out_features: int) -> nn.Linear:
    """A side block's linear map: trained itself, or frozen with LoRA (``lora_rank``)."""
    if config.lora_rank:
        return LoRALinear(in_features, out_features, config.lora_rank)
    return nn.Linear(in_features, out_features, bias=False)


class Attention(nn.Module):
    def __init__(self, config: SideConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads = config.heads, config.kv_heads
        kv_width = config.width // config.heads * config.kv_heads
        self.split = (config.width, kv_width, kv_width)
        self.qkv = linear(config, config.width, sum(self.split))
        self.proj = linear(config, config.width, config.width)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None, cache: KVCache | None,
                block: int) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(self.split, dim=2)
        q = q.view(B, T, self.n_heads, -1).transpose(1, 2)  # (B, H, T, hd)
        k, v = (t.view(B, T, self.n_kv_heads, -1).transpose(1, 2) for t in (k, v))  # (B, H_kv, T, hd)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(block, k, v)  # (B, H_kv, past + T, hd)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                           enable_gqa=self.n_kv_heads != self.n_heads)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    """SwiGLU, as in Llama."""

    def __init__(self, config: SideConfig):
        super().__init__()
        self.gate = linear(config, config.width, config.mlp_width)
        self.up = linear(config, config.width, config.mlp_width)
        self.down = linear(config, config.mlp_width, config.width)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    """A pre-norm Llama decoder block at the side width."""

    def __init__(self, config: SideConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.width, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.width, config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None, cache: KVCache | None,
                block: int) -> Tensor:
        x = x + self.attn(self.attn_norm(x), rope, mask, cache, block)
        return x + self.mlp(self.mlp_norm(x))


class SideNetwork(nn.Module):
    """The trainable side network. Its state_dict is the whole checkpoint: the head stays outside."""

    def __init__(self, config: SideConfig):
        super().__init__()
        self.config = config
        # initial, then ladders; the top blocks read h_{L-delta} as it is, at full width
        self.down = nn.ModuleList(Down(config) for _ in range(len(config.ladders) + (config.kind != "top")))
        self.alpha = nn.Parameter(torch.zeros(len(config.ladders)))  # ladder gates: mu = 0.5 at init
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_blocks))
        self.norm = RMSNorm(config.width, config.norm_eps)  # top: the backbone's final norm
        if config.lora_rank:  # only the adapters train: the norms stay the backbone's too
            for norm in (self.norm, *(n for b in self.blocks for n in (b.attn_norm, b.mlp_norm))):
                norm.weight.requires_grad_(False)
        if config.kind != "top":
            self.up = nn.Linear(config.width, config.hidden_size, bias=False)
            # Linear layers keep PyTorch's fan-in scaled init, which suits every side width (4 .. 256+).
            # up starts at zero (like LoRA's B): at init y = z * h_L, and no random output is mixed in.
            nn.init.zeros_(self.up.weight)
        if config.mixed:
            self.beta = nn.Parameter(torch.zeros(config.hidden_size))  # mix gate: z = 0.5 at init
        head_dim = config.width // config.heads
        inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        # training: recompute each block's activations in backward instead of keeping them (~20 small
        # tensors per block and token add up to more than the batch itself), for ~7% more time
        self.recompute = False

    def n_parameters(self) -> int:
        """The trained weights (a LoRA top network's frozen blocks are not counted)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def forward(self, hidden: dict[int, Tensor | Encoded], cache: KVCache | None = None,
                attention_mask: Tensor | None = None) -> Tensor:
        """hidden[k]: (B, T, d) backbone hidden state k (a tensor, or still encoded as the store keeps
        it) for every k in config.inputs. Returns y (B, T, d), the input of the frozen LM head.

        Training: right-padded batches, no mask (causal attention keeps real tokens from padding).
        Generation: ``cache`` holds the side blocks' keys and values of earlier calls; ``attention_mask``
        (B, past + T) marks real tokens with 1 and (left) padding with 0.
        """
        c = self.config
        top = c.kind == "top"
        s = decoded(hidden[c.initial]).float() if top else self.down[0](hidden[c.initial])  # (B, T, d_s)
        B, T, _ = s.shape
        past = cache.length if cache is not None else 0
        mask = None if attention_mask is None and past == 0 else self.causal_mask(B, T, past, attention_mask)
        rope = self.rope(self.positions(B, T, past, attention_mask))  # 2 x (B, 1, T, hd)
        mu = torch.sigmoid(self.alpha / c.gate_temperature)  # (n_ladders,)
        for i, block in enumerate(self.blocks):
            if i < len(c.ladders):
                s = mu[i] * s + (1 - mu[i]) * self.down[i + 1](hidden[c.ladders[i]])  # top: no ladders
            if self.recompute and cache is None and torch.is_grad_enabled():
                s = checkpoint(block, s, rope, mask, None, i, use_reentrant=False)  # keeps only s
            else:
                s = block(s, rope, mask, cache, i)
        if top:
            return self.norm(s)  # (B, T, d): h_L while the blocks are the backbone's
        out = self.up(self.norm(s))  # (B, T, d)
        if not c.mixed:
            return out
        z = torch.sigmoid(self.beta)  # (d,)
        return (1 - z) * out + z * decoded(hidden[c.n_layers])

    def positions(self, B: int, T: int, past: int, attention_mask: Tensor | None) -> Tensor:
        """(B, T) RoPE positions of the new tokens; counted over real tokens only, so that a
        left-padded sequence gets the positions it has unpadded."""
        if attention_mask is None:
            return torch.arange(past, past + T, device=self.inv_freq.device).expand(B, T)
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]

    def rope(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        angles = positions[..., None].float() * self.inv_freq  # (B, T, hd / 2)
        angles = torch.cat([angles, angles], dim=-1)[:, None]  # (B, 1, T, hd)
        return angles.cos(), angles.sin()

    def causal_mask(self, B: int, T: int, past: int, attention_mask: Tensor | None) -> Tensor:
        """(B, 1, T, past + T) boolean: causal, and no real token attends to padding."""
        total = past + T
        if attention_mask is None:
            attention_mask = torch.ones(B, total, dtype=torch.bool, device=self.inv_freq.device)
        if attention_mask.shape != (B, total):
            raise ValueError(f"attention_mask must be (batch, cached + new tokens) = {(B, total)}, "
                             f"not {tuple(attention_mask.shape)}")
        query = torch.arange(past, total, device=attention_mask.device)[:, None]
        key = torch.arange(total, device=attention_mask.device)[None, :]
        # padding attends to itself: some SDPA backends give NaN for a fully masked row, and a NaN value
        # leaks into every later query through its zero attention weight
        return (key <= query) & (attention_mask[:, None, None, :].bool() | (key == query))


class FrozenHead(nn.Module):
    """The backbone's LM head, never trained: logits = softcap(y @ weight.T + bias).

    Built from a feature store's ``head()``, with any projection and logit scale folded into
    ``weight`` (see :mod:`featurestore.head`). It stays outside the SideNetwork so that one head serves
    every side network trained from a store and a side checkpoint holds the side network only; its
    weights are non-persistent buffers, so they move with ``.to(device)`` but are never saved.
    """

    def __init__(self, weights: dict[str, np.ndarray], config: dict):
        super().__init__()
        weight, bias, self.softcap = stored_head.fold(weights, config)
        self.register_buffer("weight", float32(weight), persistent=False)  # (V, d)
        self.register_buffer("bias", float32(bias), persistent=False)  # (V,)
        # the backbone's final norm, kept for reference only: h_L is already post-norm
        self.register_buffer("norm_weight", float32(weights.get("norm.weight")), persistent=False)  # (d,)

    def forward(self, y: Tensor) -> Tensor:
        logits = F.linear(y, self.weight, self.bias)  # (..., V)
        if self.softcap is not None:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits


def float32(array: np.ndarray | None) -> Tensor | None:
    """A float32 copy: arrays read from a store may be read-only."""
    return None if array is None else torch.tensor(array, dtype=torch.float32)
