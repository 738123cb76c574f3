"""SAN's side adapter: a small randomly initialised ViT that runs beside the frozen CLIP,
takes CLIP's intermediate features in through fusion layers, and decodes its query tokens
into mask proposals and the attention bias that steers CLIP's recognition blocks.

Shapes at the published scale (640^2 input, Q = 100): patch tokens (B, 1600, 240) on a
40 x 40 grid, queries (B, 100, 240); per decoded block, masks (B, 100, 40, 40) and the bias
(B, 12, 100, 40, 40). Module and parameter names follow the official state dict
(docs/methods/san.md#checkpoint-layout) so that conversion only renames prefixes.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from ovbench_methods.common.mlp import ProjectionMLP

__all__ = ["ChannelLayerNorm", "ClipFusion", "MaskDecoder", "ProjectionMLP", "SideAdapter", "build_side_vit"]


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of (N, C, H, W) maps (eps 1e-6, the official value).

    A plain module rather than `nn.LayerNorm`: the official optimiser exempts only
    `nn.LayerNorm` (and other torch norm types) from weight decay, so these weights decay
    (docs/methods/san.md#weight-decay-of-the-fusion-norms).
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class ClipFusion(nn.Module):
    """Adds one CLIP feature map to the side adapter's patch tokens ("add" fusion):
    LN over channels -> 1x1 conv (CLIP width -> side width) -> bilinear resize to the side
    grid -> add. The conv starts from Caffe2's Xavier fill (uniform, gain 1, zero bias)."""

    def __init__(self, clip_width: int, side_width: int) -> None:
        super().__init__()
        conv = nn.Conv2d(clip_width, side_width, kernel_size=1)
        nn.init.kaiming_uniform_(conv.weight, a=1)
        nn.init.zeros_(conv.bias)
        self.input_proj = nn.Sequential(ChannelLayerNorm(clip_width), conv)

    def forward(self, patch_tokens: Tensor, clip_map: Tensor, grid: tuple[int, int]) -> Tensor:
        """patch_tokens (N, h*w, C_side), clip_map (N, C_clip, h', w') -> (N, h*w, C_side)."""
        projected = self.input_proj(clip_map.contiguous())
        resized = F.interpolate(projected, size=tuple(grid), mode="bilinear", align_corners=False)
        return patch_tokens + resized.flatten(2).transpose(1, 2).to(patch_tokens.dtype)


class MaskDecoder(nn.Module):
    """Query tokens and patch maps -> mask logits and the per-head attention bias.

    Three MLP branches of equal depth: queries -> query embeddings (B, Q, E); patches ->
    pixel embeddings (B, E, h, w); patches -> bias embeddings (B, layers*heads*E, h, w).
    masks = <query, pixel> per position; bias = <query, bias embedding of head n> per position,
    then the learnable scalar affine `bias_scaling` (w * bias + b).
    """

    def __init__(
        self,
        in_channels: int,
        num_heads: int,
        num_layers: int,
        embed_channels: int,
        mlp_channels: int,
        mlp_layers: int,
        rescale_attn_bias: bool,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.embed_channels = embed_channels
        self.query_mlp = ProjectionMLP(in_channels, mlp_channels, embed_channels, mlp_layers)
        self.pix_mlp = ProjectionMLP(in_channels, mlp_channels, embed_channels, mlp_layers, dense=True)
        self.attn_mlp = ProjectionMLP(
            in_channels, mlp_channels, embed_channels * num_heads * num_layers, mlp_layers, dense=True
        )
        self.bias_scaling: nn.Module = nn.Linear(1, 1) if rescale_attn_bias else nn.Identity()

    def forward(self, queries: Tensor, patches: Tensor) -> tuple[Tensor, list[Tensor]]:
        """queries (B, Q, C), patches (B, C, h, w) -> masks (B, Q, h, w) and one bias
        (B, heads, Q, h, w) per bias layer."""
        query = self.query_mlp(queries)
        pixel = self.pix_mlp(patches)
        batch, channels, height, width = pixel.shape
        masks = torch.einsum("bqc,bchw->bqhw", query, pixel)
        bias_embed = self.attn_mlp(patches).reshape(batch, self.num_layers, self.num_heads, channels, height, width)
        bias = torch.einsum("bqc,blnchw->blnqhw", query, bias_embed)
        bias = self.bias_scaling(bias.unsqueeze(-1)).squeeze(-1)
        return masks, list(bias.unbind(dim=1))


def build_side_vit(
    *, width: int, depth: int, heads: int, patch_size: int, mlp_ratio: float, image_size: int, drop_path: float
) -> VisionTransformer:
    """timm's ViT as SAN configures it (official `vit_w240n6d8_patch16` at the published
    scale): qkv bias, LayerNorm eps 1e-6, GELU, no class token, no final norm, no head,
    random init. timm's own forward is not used (`SideAdapter` adds the queries)."""
    return VisionTransformer(
        img_size=image_size,
        patch_size=patch_size,
        embed_dim=width,
        depth=depth,
        num_heads=heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=True,
        class_token=False,
        global_pool="",
        num_classes=0,
        fc_norm=False,
        final_norm=False,
        drop_path_rate=drop_path,
    )


class SideAdapter(nn.Module):
    """The side network (official `RegionwiseSideAdapterNetwork`); see the module docstring.

    forward(pixels, clip_maps) with pixels the normalised, padded image (B, 3, H, W) and
    clip_maps {CLIP output index: (B, C_clip, h', w')} -> one (masks, biases) pair per
    decoded side block: every block of `deep_supervision_idxs` in training, the last one
    only in evaluation.
    """

    def __init__(
        self,
        *,
        clip_width: int,
        width: int,
        depth: int,
        heads: int,
        patch_size: int,
        mlp_ratio: float,
        image_size: int,
        drop_path: float,
        num_queries: int,
        fusion_map: Mapping[int, int],
        deep_supervision_idxs: Sequence[int],
        decoder_embed_channels: int,
        decoder_mlp_channels: int,
        decoder_mlp_layers: int,
        attn_bias_heads: int,
        attn_bias_layers: int,
        rescale_attn_bias: bool,
    ) -> None:
        super().__init__()
        self.vit_model = build_side_vit(
            width=width, depth=depth, heads=heads, patch_size=patch_size, mlp_ratio=mlp_ratio,
            image_size=image_size, drop_path=drop_path,
        )
        self.num_queries = num_queries
        self.query_embed = nn.Parameter(torch.zeros(1, num_queries, width))
        self.query_pos_embed = nn.Parameter(torch.zeros(1, num_queries, width))
        nn.init.normal_(self.query_embed, std=0.02)
        nn.init.normal_(self.query_pos_embed, std=0.02)
        #: side block index -> CLIP output index (the official map, inverted).
        self.fusion_sources = {int(side): int(clip) for clip, side in fusion_map.items()}
        self.fusion_layers = nn.ModuleDict(
            {f"layer_{side}": ClipFusion(clip_width, width) for side in sorted(self.fusion_sources)}
        )
        self.deep_supervision_idxs = tuple(int(i) for i in deep_supervision_idxs)
        self.mask_decoder = MaskDecoder(
            width, attn_bias_heads, attn_bias_layers, decoder_embed_channels, decoder_mlp_channels,
            decoder_mlp_layers, rescale_attn_bias,
        )

    @property
    def patch_size(self) -> int:
        return int(self.vit_model.patch_embed.proj.kernel_size[0])

    @property
    def clip_outputs_needed(self) -> tuple[int, ...]:
        """The CLIP output indices the fusion layers read."""
        return tuple(sorted(set(self.fusion_sources.values())))

    def positional_embedding(self, grid: tuple[int, int]) -> Tensor:
        """The side ViT's (1, h*w, C) table, bicubically resized from its image-size grid when
        the input grid differs (inside the forward, so it keeps its gradient)."""
        table = self.vit_model.pos_embed
        pretrained = tuple(int(g) for g in self.vit_model.patch_embed.grid_size)
        if tuple(grid) == pretrained:
            return table
        grid_map = table.reshape(1, pretrained[0], pretrained[1], -1).permute(0, 3, 1, 2)
        resized = F.interpolate(grid_map, size=tuple(grid), mode="bicubic", align_corners=False)
        return resized.flatten(2).transpose(1, 2)

    def _fuse(self, side_index: int, tokens: Tensor, clip_maps: Mapping[int, Tensor], grid: tuple[int, int]) -> Tensor:
        if side_index not in self.fusion_sources:
            return tokens
        num_patches = grid[0] * grid[1]
        fusion = self.fusion_layers[f"layer_{side_index}"]
        fused = fusion(tokens[:, -num_patches:], clip_maps[self.fusion_sources[side_index]], grid)
        return torch.cat([tokens[:, :-num_patches], fused], dim=1)

    def encode(self, pixels: Tensor, clip_maps: Mapping[int, Tensor]) -> list[tuple[Tensor, Tensor]]:
        """The (queries (B, Q, C), patch map (B, C, h, w)) after each block to decode."""
        patches = self.vit_model.patch_embed.proj(pixels)
        grid = (int(patches.shape[-2]), int(patches.shape[-1]))
        patches = self.vit_model.patch_embed.norm(patches.flatten(2).transpose(1, 2))
        batch, num_patches = patches.shape[0], patches.shape[1]
        position = torch.cat(
            [self.query_pos_embed.expand(batch, -1, -1), self.positional_embedding(grid).expand(batch, -1, -1)], dim=1
        )
        tokens = torch.cat([self.query_embed.expand(batch, -1, -1), patches], dim=1) + position
        tokens = self.vit_model.norm_pre(tokens)
        tokens = self._fuse(0, tokens, clip_maps, grid)
        decode_at = set(self.deep_supervision_idxs if self.training else self.deep_supervision_idxs[-1:])
        last_needed = max(decode_at)
        depth = len(self.vit_model.blocks)
        outputs = []
        for index, block in enumerate(self.vit_model.blocks, start=1):
            tokens = block(tokens)
            tokens = self._fuse(index, tokens, clip_maps, grid)
            if index in decode_at:
                patch_map = tokens[:, -num_patches:].transpose(1, 2).reshape(batch, -1, grid[0], grid[1])
                outputs.append((tokens[:, :-num_patches], patch_map))
            if index == last_needed:
                break
            # Positions are added again before every block but the first (docs/methods/san.md#side-adapter).
            if index < depth:
                tokens = tokens + position
        return outputs

    def forward(self, pixels: Tensor, clip_maps: Mapping[int, Tensor]) -> list[tuple[Tensor, list[Tensor]]]:
        return [self.mask_decoder(queries, patch_map) for queries, patch_map in self.encode(pixels, clip_maps)]
