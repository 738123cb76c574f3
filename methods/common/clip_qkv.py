"""CLIP attention with separate q/k/v projection weights, for q/v-only fine-tuning.

CAT-Seg and GSNet fine-tune only the query and value projections of every attention layer
of both CLIP towers (docs/methods/catseg.md#selective-fine-tuning). OpenAI and open_clip
store the three projections packed in one ``in_proj_weight``; masking the gradient of its key rows is not
enough, because AdamW's decoupled weight decay would still shrink them. The projections are
therefore split into three Parameters, so the key weight can be frozen outright.

The key names are the official ones (``attn.q_proj_weight``, ``attn.k_proj_weight``,
``attn.v_proj_weight``, packed ``attn.in_proj_bias``, ``attn.out_proj.{weight,bias}``), so the
authors' checkpoints load by name. The math is `nn.MultiheadAttention`'s, computed with
`torch.nn.functional.scaled_dot_product_attention`.

- `SplitQKVAttention`: the attention module (drop-in for open_clip's `nn.MultiheadAttention`).
- `split_qkv_attention(model)`: replace every `nn.MultiheadAttention` of a model in place.
- `split_packed_qkv` / `pack_split_qkv`: state-dict conversion both ways.
- `set_clip_finetuning(model, mode)`: which CLIP parameters train ("attention" = q/v only).
"""

from __future__ import annotations

from ovbench_methods.common.errors import MethodConfigError
from typing import Any, get_args, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Which CLIP parameters train (the official CLIP_FINETUNE values that apply to ViTs):
#: - "attention": q and v projection weights of every block of both towers;
#: - "full": every parameter of both towers' transformer blocks;
#: - "frozen": nothing.
ClipFinetuneMode = Literal["attention", "full", "frozen"]
CLIP_FINETUNE_MODES: tuple[str, ...] = get_args(ClipFinetuneMode)

PACKED_WEIGHT = "in_proj_weight"
SPLIT_WEIGHTS: tuple[str, str, str] = ("q_proj_weight", "k_proj_weight", "v_proj_weight")


class SplitQKVError(MethodConfigError):
    """An attention layer or state dict that cannot be converted to (or from) split q/k/v."""


class SplitQKVAttention(nn.Module):
    """Multi-head attention with separate q/k/v weights and a packed bias.

    Same call signature and result as `nn.MultiheadAttention` (``need_weights=False``):
    ``forward(query, key, value, key_padding_mask=None, need_weights=False, attn_mask=None)``
    returns ``(output, None)``. Masks follow `nn.MultiheadAttention`: boolean True means
    "may not attend", float masks are added to the logits; `attn_mask` is (L, S) or
    (N * num_heads, L, S), `key_padding_mask` is (N, S).
    """

    def __init__(self, embed_dim: int, num_heads: int, batch_first: bool = True) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise SplitQKVError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.batch_first = batch_first
        self.q_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim))
        self.k_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim))
        self.v_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        for weight in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
            nn.init.xavier_uniform_(weight)
        nn.init.zeros_(self.out_proj.bias)

    @classmethod
    def from_multihead(cls, attention: nn.MultiheadAttention) -> "SplitQKVAttention":
        """A copy of `attention`'s weights (packed or already separate) in the split layout."""
        if not isinstance(attention, nn.MultiheadAttention):
            raise SplitQKVError(f"expected nn.MultiheadAttention, got {type(attention).__name__}")
        if attention.in_proj_bias is None:
            raise SplitQKVError("attention without input-projection bias is not supported (CLIP always has one)")
        if attention.bias_k is not None or attention.add_zero_attn:
            raise SplitQKVError("attention with bias_k/bias_v or add_zero_attn is not supported")
        if attention.kdim != attention.embed_dim or attention.vdim != attention.embed_dim:
            raise SplitQKVError("attention whose key/value width differs from its embedding width is not supported")
        if attention.dropout:
            raise SplitQKVError(f"attention dropout {attention.dropout} is not supported (CLIP uses none)")
        split = cls(attention.embed_dim, attention.num_heads, batch_first=attention.batch_first)
        weight = attention.in_proj_weight
        if weight is not None:
            weights = weight.detach().chunk(3, dim=0)
        else:
            weights = tuple(getattr(attention, name).detach() for name in SPLIT_WEIGHTS)
        reference = attention.out_proj.weight
        split.to(device=reference.device, dtype=reference.dtype)
        with torch.no_grad():
            for name, value in zip(SPLIT_WEIGHTS, weights):
                getattr(split, name).copy_(value)
            split.in_proj_bias.copy_(attention.in_proj_bias.detach())
            split.out_proj.weight.copy_(attention.out_proj.weight.detach())
            split.out_proj.bias.copy_(attention.out_proj.bias.detach())
        split.train(attention.training)
        return split

    @property
    def packed_weight(self) -> Tensor:
        """The (3D, D) weight in OpenAI's packed order q, k, v (a new tensor, not a view)."""
        return torch.cat((self.q_proj_weight, self.k_proj_weight, self.v_proj_weight), dim=0)

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = False,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, None]:
        if need_weights:
            raise SplitQKVError("SplitQKVAttention does not return attention weights (call it with need_weights=False)")
        key = query if key is None else key
        value = key if value is None else value
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)

        bias_q, bias_k, bias_v = self.in_proj_bias.chunk(3)
        if query is key and key is value:
            # Self-attention: one GEMM over the packed weight is faster than three.
            q, k, v = F.linear(query, self.packed_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            q = F.linear(query, self.q_proj_weight, bias_q)
            k = F.linear(key, self.k_proj_weight, bias_k)
            v = F.linear(value, self.v_proj_weight, bias_v)
        batch, length = q.shape[0], q.shape[1]
        source = k.shape[1]
        q, k, v = (t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2) for t in (q, k, v))
        mask = self._merge_masks(attn_mask, key_padding_mask, batch, length, source, q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None)
        out = self.out_proj(out.transpose(1, 2).reshape(batch, length, self.embed_dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1)
        return out, None

    def _merge_masks(
        self, attn_mask: Tensor | None, key_padding_mask: Tensor | None, batch: int, length: int, source: int, dtype
    ) -> Tensor | None:
        """Both masks as one additive float mask broadcastable to (N, heads, L, S)."""
        merged: Tensor | None = None
        if attn_mask is not None:
            merged = _additive(attn_mask, dtype)
            if merged.dim() == 2:
                merged = merged.view(1, 1, length, source)
            elif merged.dim() == 3:
                if merged.shape[0] != batch * self.num_heads:
                    raise SplitQKVError(
                        f"3-D attn_mask must have N * num_heads = {batch * self.num_heads} rows, got {merged.shape[0]}"
                    )
                merged = merged.view(batch, self.num_heads, length, source)
            else:
                raise SplitQKVError(f"attn_mask must be 2-D or 3-D, got shape {tuple(attn_mask.shape)}")
        if key_padding_mask is not None:
            padding = _additive(key_padding_mask, dtype).view(batch, 1, 1, source)
            merged = padding if merged is None else merged + padding
        return merged

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


def split_qkv_attention(model: nn.Module) -> int:
    """Replace every `nn.MultiheadAttention` inside `model` by a `SplitQKVAttention` copy.

    Returns how many were replaced. Parameter names change from ``attn.in_proj_weight`` to
    ``attn.{q,k,v}_proj_weight``; everything else keeps its name.
    """
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.MultiheadAttention)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, SplitQKVAttention.from_multihead(module))
    return len(targets)


def split_packed_qkv(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``*.in_proj_weight`` -> ``*.q_proj_weight``, ``*.k_proj_weight``, ``*.v_proj_weight``
    (dim-0 chunks, OpenAI's q, k, v order); every other key is kept as it is."""
    converted: dict[str, Any] = {}
    for key, value in state_dict.items():
        if key.endswith(PACKED_WEIGHT):
            if value.shape[0] % 3:
                raise SplitQKVError(f"{key}: first dimension {value.shape[0]} is not a multiple of 3")
            prefix = key[: -len(PACKED_WEIGHT)]
            for name, chunk in zip(SPLIT_WEIGHTS, value.chunk(3, dim=0)):
                converted[prefix + name] = chunk.clone()
        else:
            converted[key] = value
    return converted


def pack_split_qkv(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `split_packed_qkv`: concatenate q, k, v weights into ``in_proj_weight``."""
    converted: dict[str, Any] = {}
    prefixes = {key[: -len(SPLIT_WEIGHTS[0])] for key in state_dict if key.endswith(SPLIT_WEIGHTS[0])}
    for prefix in prefixes:
        missing = [prefix + name for name in SPLIT_WEIGHTS if prefix + name not in state_dict]
        if missing:
            raise SplitQKVError(f"cannot pack {prefix}: missing {missing[0]}")
    for key, value in state_dict.items():
        if any(key.endswith(name) and key[: -len(name)] in prefixes for name in SPLIT_WEIGHTS):
            continue
        converted[key] = value
    for prefix in prefixes:
        converted[prefix + PACKED_WEIGHT] = torch.cat([state_dict[prefix + name] for name in SPLIT_WEIGHTS], dim=0)
    return converted


def set_clip_finetuning(model: nn.Module, mode: str = "attention") -> list[str]:
    """Set `requires_grad` on an open_clip CLIP (or a tower) after `split_qkv_attention`.

    Like the official rule, only parameters whose name contains "transformer" (both towers'
    blocks) can train: "attention" keeps the q and v projection weights, "full" all of them,
    "frozen" none. Returns the names left trainable.
    """
    if mode not in CLIP_FINETUNE_MODES:
        raise SplitQKVError(f"unknown CLIP fine-tuning mode {mode!r}; expected one of {', '.join(CLIP_FINETUNE_MODES)}")
    if mode == "attention" and not any(isinstance(m, SplitQKVAttention) for m in model.modules()):
        raise SplitQKVError("q/v fine-tuning needs split q/k/v attention: call split_qkv_attention first")
    trainable: list[str] = []
    for name, param in model.named_parameters():
        if "transformer" not in name or mode == "frozen":
            wanted = False
        elif mode == "full":
            wanted = True
        else:
            wanted = name.endswith(("q_proj_weight", "v_proj_weight"))
        param.requires_grad_(wanted)
        if wanted:
            trainable.append(name)
    return trainable


def attach_zero_grad(tensor: Tensor, *params: Tensor) -> Tensor:
    """`tensor` unchanged in value, with an all-zero gradient path to each trainable `params`.

    The official dense last block computes q and k with one packed GEMM and then discards
    them, so its trainable q weight gets an exact zero gradient every step (AdamW still
    applies weight decay to it) and DistributedDataParallel sees it used. Tying it in at
    zero cost reproduces both without computing the discarded projections.
    """
    for param in params:
        if param.requires_grad:
            tensor = tensor + param.sum() * 0.0
    return tensor
