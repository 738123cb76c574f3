"""GSNet's cost-volume fusion (QGFF) and the RSIB projections that feed it.

Query-Guided Feature Fusion (paper eqs. 1-3, docs/methods/gsnet.md#qgff): the CLIP map E^G
and the RSIB map E^S are each compared with the text queries by cosine similarity, giving two
cost volumes M^G, M^S of shape (B, P, T, H, W). Per class (the class axis is batched as B·T):

    Z^G = σ(conv1(M^G)),  Z^S = σ(conv2(M^S)),  Z^F = σ(fusion_corr([Z^G; Z^S])) + Z^G

with 7×7 convolutions P→128, P→128 and 256→128. The ablations of the paper's Table 3 are
the other members of the `CostFusion` family, in the form of the official code
(yecy749/GSNet, gs_net/modeling/transformer/RIPD.py):

- "simple_concatenation" (Table 3 "Cat", row E): L2-normalised CLIP map, L2-normalised RSIB
  map and the text embedding (per-prompt L2, mean over prompts, broadcast over the grid) are
  concatenated (3·512 channels) per class and embedded by one 7×7 conv
  `simple_concatenation_corr_embed` 1536→128 (the paper calls it a linear projection);
  no sigmoid, no residual;
- "fusion_query" ("Fusion Q", row F): `fusion_feats` Conv1×1(1024→512) on the raw
  concatenation [CLIP; RSIB], then one cost volume of the fused map, embedded by `conv1`
  (no sigmoid), exactly as CAT-Seg embeds its single cost volume;
- "clip_only" (rows A, B: CLIP or RemoteCLIP as the only stream) and "rsib_only" (row C):
  one cost volume embedded by `conv1` (no sigmoid).
Row D (RemoteCLIP + RSIB) is "query_guided" with another CLIP.

`RsibProjections` holds GSNet's three projections of DINO block outputs (row 5):
`dino_down_sample` (block 12 → 512 channels at the CLIP grid, the map the RSIB cost volume
is computed from) and `dino_decod_proj1` / `dino_decod_proj2` (blocks 4 and 8 → the RSIB
decoder guidance at 2× and 4× the CLIP grid).

Parameter names are the official ones. In a GSNet state dict the fusion convolutions live
under ``sem_seg_head.predictor.transformer.`` and the RSIB projections at the top level
(`official_prefix` on each class).
"""

from __future__ import annotations

from ovbench_methods.common.errors import MethodConfigError
from typing import get_args, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FUSION_TYPES",
    "ConcatenationFusion",
    "CostFusion",
    "FuseThenQueryFusion",
    "FusionInputError",
    "QueryGuidedFusion",
    "RsibProjections",
    "SingleStreamCost",
    "build_cost_fusion",
    "cost_volume",
]

#: Fusion designs, by the official FUSION_TYPE names plus the single-stream paths.
FusionType = Literal["query_guided", "simple_concatenation", "fusion_query", "clip_only", "rsib_only"]
FUSION_TYPES: tuple[str, ...] = get_args(FusionType)

#: Where GSNet's predictor keeps the fusion layers in its state dict.
TRANSFORMER_PREFIX = "sem_seg_head.predictor.transformer."


class FusionInputError(MethodConfigError):
    """Feature maps or text embeddings a fusion module cannot take."""


def cost_volume(image_feats: Tensor, text_feats: Tensor) -> Tensor:
    """Cosine similarity of every pixel with every prompt embedding, no temperature.

    image_feats (B, C, H, W), text_feats (B, T, P, C) -> (B, P, T, H, W); both sides are
    L2-normalised over C here.
    """
    image = F.normalize(image_feats, dim=1)
    text = F.normalize(text_feats, dim=-1)
    return torch.einsum("bchw,btpc->bpthw", image, text)


def _per_class(conv: nn.Module, volume: Tensor) -> Tensor:
    """Apply a 2-D conv to each class slice: (B, P, T, H, W) -> (B, C', T, H, W)."""
    batch, channels, classes, height, width = volume.shape
    slices = volume.permute(0, 2, 1, 3, 4).reshape(batch * classes, channels, height, width)
    out = conv(slices)
    return out.reshape(batch, classes, out.shape[1], height, width).permute(0, 2, 1, 3, 4)


class CostFusion(nn.Module):
    """Base of the fusion family: (CLIP map, RSIB map, text) -> embedded cost (B, hidden, T, H, W).

    `uses_clip` / `uses_rsib` say which image maps a member reads; a map it does not read
    may be None. Maps are (B, feat_dim, H, W), text (B, T, P, feat_dim).
    """

    fusion_type: str = ""
    uses_clip: bool = True
    uses_rsib: bool = True
    official_prefix: str = TRANSFORMER_PREFIX

    def __init__(self, feat_dim: int = 512, hidden_dim: int = 128, prompt_channels: int = 1) -> None:
        super().__init__()
        for name, value in (("feat_dim", feat_dim), ("hidden_dim", hidden_dim), ("prompt_channels", prompt_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise FusionInputError(f"{type(self).__name__}: {name} must be a positive integer, got {value!r}")
        self.feat_dim = feat_dim
        self.hidden_dim = hidden_dim
        self.prompt_channels = prompt_channels

    def _check(self, clip_feats: Tensor | None, rsib_feats: Tensor | None, text_feats: Tensor) -> None:
        name = self.fusion_type
        if text_feats.ndim != 4 or text_feats.shape[-1] != self.feat_dim:
            raise FusionInputError(
                f"{name} fusion: text embeddings must be (B,T,P,{self.feat_dim}), got {tuple(text_feats.shape)}"
            )
        maps = []
        for label, used, feats in (("CLIP", self.uses_clip, clip_feats), ("RSIB", self.uses_rsib, rsib_feats)):
            if not used:
                continue
            if feats is None:
                raise FusionInputError(f"{name} fusion needs the {label} feature map, got None")
            if feats.ndim != 4 or feats.shape[1] != self.feat_dim:
                raise FusionInputError(
                    f"{name} fusion: {label} map must be (B,{self.feat_dim},H,W), got {tuple(feats.shape)}"
                )
            if feats.shape[0] != text_feats.shape[0]:
                raise FusionInputError(
                    f"{name} fusion: {label} map batch {feats.shape[0]} != text batch {text_feats.shape[0]}"
                )
            maps.append(feats)
        if len(maps) == 2 and maps[0].shape != maps[1].shape:
            raise FusionInputError(
                f"{name} fusion: CLIP map {tuple(maps[0].shape)} and RSIB map {tuple(maps[1].shape)} differ"
            )
        needs_prompts = self.fusion_type != "simple_concatenation"
        if needs_prompts and text_feats.shape[2] != self.prompt_channels:
            raise FusionInputError(
                f"{name} fusion was built for {self.prompt_channels} prompt(s) per class, got {text_feats.shape[2]}"
            )


class QueryGuidedFusion(CostFusion):
    """QGFF: σ(conv1(M^G)) and σ(conv2(M^S)) fused by σ(fusion_corr(concat)), plus the CLIP residual."""

    fusion_type = "query_guided"

    def __init__(self, feat_dim: int = 512, hidden_dim: int = 128, prompt_channels: int = 1) -> None:
        super().__init__(feat_dim, hidden_dim, prompt_channels)
        self.conv1 = nn.Conv2d(prompt_channels, hidden_dim, kernel_size=7, stride=1, padding=3)
        self.conv2 = nn.Conv2d(prompt_channels, hidden_dim, kernel_size=7, stride=1, padding=3)
        self.fusion_corr = nn.Conv2d(2 * hidden_dim, hidden_dim, kernel_size=7, stride=1, padding=3)

    def forward(self, clip_feats: Tensor | None, rsib_feats: Tensor | None, text_feats: Tensor) -> Tensor:
        self._check(clip_feats, rsib_feats, text_feats)
        clip_embed = torch.sigmoid(_per_class(self.conv1, cost_volume(clip_feats, text_feats)))
        rsib_embed = torch.sigmoid(_per_class(self.conv2, cost_volume(rsib_feats, text_feats)))
        fused = torch.sigmoid(_per_class(self.fusion_corr, torch.cat([clip_embed, rsib_embed], dim=1)))
        # The residual keeps CLIP's open-vocabulary evidence intact (paper eq. 3).
        return fused + clip_embed


class ConcatenationFusion(CostFusion):
    """Table 3 "Cat": [L2 CLIP; L2 RSIB; text] per class -> 7×7 conv 3·C -> hidden."""

    fusion_type = "simple_concatenation"

    def __init__(self, feat_dim: int = 512, hidden_dim: int = 128, prompt_channels: int = 1) -> None:
        super().__init__(feat_dim, hidden_dim, prompt_channels)
        self.simple_concatenation_corr_embed = nn.Conv2d(3 * feat_dim, hidden_dim, kernel_size=7, stride=1, padding=3)

    def forward(self, clip_feats: Tensor | None, rsib_feats: Tensor | None, text_feats: Tensor) -> Tensor:
        self._check(clip_feats, rsib_feats, text_feats)
        batch, classes = text_feats.shape[:2]
        height, width = clip_feats.shape[-2:]
        # As the official code: prompts are L2-normalised, then averaged without re-normalising.
        text = F.normalize(text_feats, dim=-1).mean(dim=2)  # (B, T, C)
        clip = F.normalize(clip_feats, dim=1).unsqueeze(1).expand(-1, classes, -1, -1, -1)
        rsib = F.normalize(rsib_feats, dim=1).unsqueeze(1).expand(-1, classes, -1, -1, -1)
        text = text[..., None, None].expand(-1, -1, -1, height, width)
        stacked = torch.cat([clip, rsib, text], dim=2).reshape(batch * classes, 3 * self.feat_dim, height, width)
        out = self.simple_concatenation_corr_embed(stacked)
        return out.reshape(batch, classes, self.hidden_dim, height, width).permute(0, 2, 1, 3, 4)


class FuseThenQueryFusion(CostFusion):
    """Table 3 "Fusion Q": fusion_feats Conv1×1([CLIP; RSIB]) -> one cost volume -> conv1."""

    fusion_type = "fusion_query"

    def __init__(self, feat_dim: int = 512, hidden_dim: int = 128, prompt_channels: int = 1) -> None:
        super().__init__(feat_dim, hidden_dim, prompt_channels)
        self.conv1 = nn.Conv2d(prompt_channels, hidden_dim, kernel_size=7, stride=1, padding=3)
        self.fusion_feats = nn.Conv2d(2 * feat_dim, feat_dim, kernel_size=1, stride=1, padding=0)

    def forward(self, clip_feats: Tensor | None, rsib_feats: Tensor | None, text_feats: Tensor) -> Tensor:
        self._check(clip_feats, rsib_feats, text_feats)
        fused = self.fusion_feats(torch.cat([clip_feats, rsib_feats], dim=1))
        return _per_class(self.conv1, cost_volume(fused, text_feats))


class SingleStreamCost(CostFusion):
    """One stream only (Table 3 rows A-C): cost volume of that map -> conv1, as CAT-Seg."""

    def __init__(self, stream: str = "clip", feat_dim: int = 512, hidden_dim: int = 128, prompt_channels: int = 1) -> None:
        if stream not in ("clip", "rsib"):
            raise FusionInputError(f"single-stream cost: stream must be 'clip' or 'rsib', got {stream!r}")
        super().__init__(feat_dim, hidden_dim, prompt_channels)
        self.stream = stream
        self.fusion_type = f"{stream}_only"
        self.uses_clip = stream == "clip"
        self.uses_rsib = stream == "rsib"
        self.conv1 = nn.Conv2d(prompt_channels, hidden_dim, kernel_size=7, stride=1, padding=3)

    def forward(self, clip_feats: Tensor | None, rsib_feats: Tensor | None, text_feats: Tensor) -> Tensor:
        self._check(clip_feats, rsib_feats, text_feats)
        feats = clip_feats if self.stream == "clip" else rsib_feats
        return _per_class(self.conv1, cost_volume(feats, text_feats))


def build_cost_fusion(
    fusion_type: str = "query_guided", *, feat_dim: int = 512, hidden_dim: int = 128, prompt_channels: int = 1
) -> CostFusion:
    """The `CostFusion` member for a `FUSION_TYPES` name (GSNet: "query_guided")."""
    dims = {"feat_dim": feat_dim, "hidden_dim": hidden_dim, "prompt_channels": prompt_channels}
    if fusion_type == "query_guided":
        return QueryGuidedFusion(**dims)
    if fusion_type == "simple_concatenation":
        return ConcatenationFusion(**dims)
    if fusion_type == "fusion_query":
        return FuseThenQueryFusion(**dims)
    if fusion_type in ("clip_only", "rsib_only"):
        return SingleStreamCost(fusion_type.split("_")[0], **dims)
    raise FusionInputError(f"unknown fusion type {fusion_type!r}; expected one of {', '.join(FUSION_TYPES)}")


class RsibProjections(nn.Module):
    """GSNet's projections of DINO block outputs (docs/methods/gsnet.md#rsib-projections).

    - `dino_down_sample` Conv(C→512, k2, s2) on block 12: the map the RSIB cost volume uses;
    - `dino_decod_proj1` Conv1×1(C→256) on block 4 and `dino_decod_proj2` ConvT(C→128, k2, s2)
      on block 8: the RSIB decoder guidance (absent with `decoder_guidance=False`, the
      official layout when DECODER_DINO_GUIDANCE_DIMS is 0).

    `forward` takes the DINO maps keyed by 0-based block index (`DinoFeatures.maps`); the
    blocks it reads are `source_blocks` (11, 3, 7 for a 12-block ViT).
    """

    official_prefix: str = ""

    def __init__(
        self,
        embed_dim: int = 768,
        feat_dim: int = 512,
        guidance_dims: Sequence[int] = (256, 128),
        depth: int = 12,
        decoder_guidance: bool = True,
    ) -> None:
        super().__init__()
        if len(tuple(guidance_dims)) != 2:
            raise FusionInputError(f"RSIB projections take two guidance widths, got {tuple(guidance_dims)}")
        if depth < 8:
            raise FusionInputError(f"RSIB projections read blocks 4, 8 and the last; a depth-{depth} ViT has too few")
        self.embed_dim = embed_dim
        self.dino_down_sample = nn.Conv2d(embed_dim, feat_dim, kernel_size=2, stride=2, padding=0)
        if decoder_guidance:
            self.dino_decod_proj1 = nn.Conv2d(embed_dim, guidance_dims[0], kernel_size=1, stride=1, padding=0)
            self.dino_decod_proj2 = nn.ConvTranspose2d(embed_dim, guidance_dims[1], kernel_size=2, stride=2)
        else:
            self.dino_decod_proj1 = None
            self.dino_decod_proj2 = None
        # GSNet's layers 12, 4, 8 (1-based) -> block indices.
        self.source_blocks: tuple[int, int, int] = (depth - 1, 3, 7)

    @property
    def blocks_needed(self) -> tuple[int, ...]:
        """The DINO blocks to ask for, sorted."""
        if self.dino_decod_proj1 is None:
            return (self.source_blocks[0],)
        return tuple(sorted(set(self.source_blocks)))

    def _map(self, maps: Mapping[int, Tensor], index: int) -> Tensor:
        if index not in maps:
            raise FusionInputError(f"RSIB projections need DINO block {index}; got blocks {sorted(maps)}")
        feats = maps[index]
        if feats.ndim != 4 or feats.shape[1] != self.embed_dim:
            raise FusionInputError(f"DINO block {index} map must be (B,{self.embed_dim},h,w), got {tuple(feats.shape)}")
        return feats

    def forward(self, maps: Mapping[int, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """-> (cost map (B,512,h/2,w/2), (guidance (B,256,h,w), (B,128,2h,2w)) or None)."""
        last, early, middle = self.source_blocks
        down = self.dino_down_sample(self._map(maps, last))
        if self.dino_decod_proj1 is None:
            return down, None
        guidance = (self.dino_decod_proj1(self._map(maps, early)), self.dino_decod_proj2(self._map(maps, middle)))
        return down, guidance
