"""SCAN's semantic-assisted calibration of the query class embeddings.

Every prediction of the query decoder (the final one and each auxiliary one, with shared
weights) leaves the class head as embeddings (B, Q, D) that are later L2-normalised and compared
with the text embeddings. SCAN calibrates them first with what the frozen original CLIP sees in
the whole image (docs/methods/scan.md#semantic-assisted-calibration):

1. `LFM`: the patch maps of a few CLIP blocks (6, 9, 12 of ViT-B; 12, 18, 24 of ViT-L), one at
   a time through one shared frequency module with a per-layer Gaussian width σ: 2-D FFT,
   × (1 − Gaussian(σ)), [real; imag] → 1×1 conv → ReLU → 1×1 conv, inverse FFT, real part, added
   to the input map (docs/methods/scan.md#frequency-module);
2. `oriclip_mlp`: the layers' tokens concatenated (3·g² of them) → Linear → Linear, no activation;
3. `fusion_decoder`: cross-attention layers, the class embeddings attending to those tokens, each
   with a residual and a LayerNorm except the last (no FFN);
4. global prior: + `learnable_weight` × the L2-normalised final CLIP image embedding;
5. `lightweight_transformer`: post-norm encoder layers run on (B·Q, 1, D), i.e. every query is a
   sequence of length one (docs/methods/scan.md#lightweight-transformer-sees-one-token).

Steps 1-2 depend on the image only, so the official model computes them once per image and reuses
them for every prediction: `encode_clip_tokens` then `calibrate` is that split; `forward` does both.

Attribute names are the official ones, so `ScanCalibration().state_dict()` has exactly the
top-level calibration keys of a SCAN checkpoint (`learnable_weight`, `LFM.*`, `oriclip_mlp.*`,
`fusion_decoder.*`, `lightweight_transformer.*`; docs/methods/scan.md#module-and-state-dict-correspondence).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovbench_methods.common.errors import MethodConfigError

__all__ = [
    "OFFICIAL_KEY_PREFIXES",
    "CrossAttentionStack",
    "FrequencyModule",
    "ScanCalibration",
    "ScanCalibrationConfig",
    "ScanCalibrationInputError",
    "TokenProjection",
    "calibration_state",
    "gaussian_window",
]

#: The top-level entries of a SCAN checkpoint's `model` dict that belong to the calibration stack.
OFFICIAL_KEY_PREFIXES: tuple[str, ...] = (
    "learnable_weight",
    "LFM.",
    "oriclip_mlp.",
    "fusion_decoder.",
    "lightweight_transformer.",
)


class ScanCalibrationInputError(MethodConfigError):
    """CLIP maps, tokens or class embeddings of a shape the calibration stack cannot take."""


@dataclass(frozen=True)
class ScanCalibrationConfig:
    """Sizes of the calibration stack; the defaults are the published ViT-B/16 configuration.

    `clip_width` is the CLIP tower width (the official CLIP_VISION_DIM), `scan_dim` the class
    embedding and CLIP projection width (SCAN_DIM), `grid` the CLIP patch grid side (the official
    PATCH_SIZE), `clip_layers` the 1-based CLIP blocks whose patch tokens are used
    (SELECT_ORI_CLIP_ID) and `frequency_sigma` one Gaussian width per such block.
    `shift_spectrum` False keeps the official filter, centred at (h//2, w//2) of the un-shifted
    spectrum; True centres it on the zero frequency instead (a plain high-pass;
    docs/methods/scan.md#frequency-filter-on-unshifted-spectrum).
    """

    clip_width: int = 768
    scan_dim: int = 512
    clip_layers: tuple[int, ...] = (6, 9, 12)
    frequency_sigma: tuple[float, ...] = (9, 7, 3)
    grid: int = 14
    ca_layers: int = 5
    ca_heads: int = 8
    tf_layers: int = 5
    tf_heads: int = 8
    tf_ffn: int = 2048
    tf_dropout: float = 0.1
    learnable_weight_init: float = 0.1
    shift_spectrum: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "clip_layers", tuple(self.clip_layers))
        object.__setattr__(self, "frequency_sigma", tuple(self.frequency_sigma))
        for name in ("clip_width", "scan_dim", "grid", "ca_layers", "ca_heads", "tf_layers", "tf_heads", "tf_ffn"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise MethodConfigError(f"scan calibration: {name} must be a positive integer, got {value!r}")
        if not self.clip_layers or any(not isinstance(i, int) or i < 1 for i in self.clip_layers):
            raise MethodConfigError(f"scan calibration: clip_layers must be 1-based block indices, got {self.clip_layers}")
        if len(self.frequency_sigma) != len(self.clip_layers):
            raise MethodConfigError(
                f"scan calibration: frequency_sigma has {len(self.frequency_sigma)} values for "
                f"{len(self.clip_layers)} clip_layers"
            )
        if any(not sigma > 0 for sigma in self.frequency_sigma):
            raise MethodConfigError(f"scan calibration: frequency_sigma must be positive, got {self.frequency_sigma}")
        for heads in ("ca_heads", "tf_heads"):
            if self.scan_dim % getattr(self, heads):
                raise MethodConfigError(
                    f"scan calibration: scan_dim {self.scan_dim} is not divisible by {heads} {getattr(self, heads)}"
                )
        if not 0.0 <= self.tf_dropout < 1.0:
            raise MethodConfigError(f"scan calibration: tf_dropout must lie in [0, 1), got {self.tf_dropout}")

    @classmethod
    def vit_b16(cls, **changes) -> "ScanCalibrationConfig":
        """The published CLIP ViT-B/16 configuration (configs/scan_vitB.yaml)."""
        return cls(**changes)

    @classmethod
    def vit_l14(cls, **changes) -> "ScanCalibrationConfig":
        """The published CLIP ViT-L/14 configuration (configs/scan_vitL.yaml)."""
        settings = dict(clip_width=1024, scan_dim=768, clip_layers=(12, 18, 24), grid=16)
        settings.update(changes)
        return cls(**settings)

    @property
    def num_clip_tokens(self) -> int:
        """How many CLIP tokens the class embeddings attend to (588 for ViT-B/16)."""
        return len(self.clip_layers) * self.grid * self.grid


def gaussian_window(height: int, width: int, sigma: float, *, device=None) -> Tensor:
    """exp(−((y − h//2)² + (x − w//2)²) / (2σ²)) on the (height, width) index grid, shape (1, 1, h, w).

    Peak 1 at (h//2, w//2), no normalisation, float32: the official window. Applied to an
    un-shifted FFT its centre is the highest frequency, not the zero frequency.
    """
    rows = torch.arange(height, dtype=torch.float32, device=device).view(height, 1)
    cols = torch.arange(width, dtype=torch.float32, device=device).view(1, width)
    window = torch.exp(-((rows - height // 2) ** 2 + (cols - width // 2) ** 2) / (2 * sigma**2))
    return window.view(1, 1, height, width)


class FrequencyModule(nn.Module):
    """The official `LFM`: a filtered, learned transform of a map's 2-D spectrum, added back to the map.

    The spectrum is computed in float32 (as officially); the output is float32 too.
    """

    def __init__(self, num_channels: int, shift_spectrum: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2 * num_channels, 2 * num_channels, kernel_size=1)
        self.conv2 = nn.Conv2d(2 * num_channels, 2 * num_channels, kernel_size=1)
        self.shift_spectrum = shift_spectrum

    def spectral_mask(self, height: int, width: int, sigma: float, device=None) -> Tensor:
        """1 − Gaussian(σ), laid out for the un-shifted spectrum torch.fft.fft2 returns."""
        window = gaussian_window(height, width, sigma, device=device)
        if self.shift_spectrum:
            # A window centred at (h//2, w//2) of the fftshift-ed spectrum sits at index 0 here.
            window = torch.fft.ifftshift(window, dim=(-2, -1))
        return 1 - window

    def forward(self, maps: Tensor, sigma: float) -> Tensor:
        """(B, C, h, w) -> (B, C, h, w): maps + Re(ifft2(conv2(relu(conv1([Re; Im](mask · fft2(maps)))))))."""
        maps = maps.float()
        height, width = maps.shape[-2:]
        spectrum = torch.fft.fft2(maps) * self.spectral_mask(height, width, sigma, device=maps.device)
        stacked = torch.cat([spectrum.real, spectrum.imag], dim=1).to(self.conv1.weight.dtype)
        mixed = self.conv2(F.relu(self.conv1(stacked))).float()
        real, imag = torch.chunk(mixed, 2, dim=1)
        # The official `.float()` on this complex tensor keeps the real part; `.real` says so.
        return maps + torch.fft.ifft2(torch.complex(real, imag), s=(height, width)).real


class TokenProjection(nn.Module):
    """The official `oriclip_mlp`: two stacked Linear layers with no activation between them."""

    def __init__(self, input_dim: int, output_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(input_dim, output_dim)
        self.fc2 = nn.Linear(output_dim, output_dim)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.fc2(self.fc1(tokens))


class CrossAttentionStack(nn.Module):
    """The official `fusion_decoder` ("CA"): residual cross-attention layers, batch first.

    Each layer: query ← query + MHA(query, memory, memory); then LayerNorm, except after the last
    layer (so there are `num_layers − 1` norms). No FFN, no positional terms, attention dropout 0.
    """

    def __init__(self, dim: int, num_layers: int, num_heads: int = 8) -> None:
        super().__init__()
        self.num = num_layers
        self.multiattn = nn.ModuleList(
            nn.MultiheadAttention(embed_dim=dim, num_heads=num_heads, batch_first=True) for _ in range(num_layers)
        )
        self.ln = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_layers - 1))

    def forward(self, queries: Tensor, memory: Tensor) -> Tensor:
        """queries (B, Q, D), memory (B, N, D) -> (B, Q, D)."""
        for index, attention in enumerate(self.multiattn):
            # Called as officially (attention weights requested and dropped), so the same kernel runs.
            queries = queries + attention(queries, memory, memory)[0]
            if index < len(self.ln):
                queries = self.ln[index](queries)
        return queries


class ScanCalibration(nn.Module):
    """SCAN's calibration of query class embeddings with the original CLIP's view of the image.

    `forward(class_embeddings, clip_patch_maps, clip_image_embedding)` = `calibrate(class_embeddings,
    encode_clip_tokens(clip_patch_maps), clip_image_embedding)`; call the two halves separately to
    reuse the CLIP tokens for the auxiliary predictions, as the official model does.
    """

    def __init__(self, config: ScanCalibrationConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ScanCalibrationConfig()
        # Built in the official construction order (the encoder layer first, then LFM, CA, MLP) so
        # one seed draws the same initial weights, and registered in the official attribute order
        # so the state dict lists its keys as a SCAN checkpoint does.
        # One encoder layer cloned `tf_layers` times, as the official nn.TransformerEncoder(layer, 5):
        # every layer starts from the same weights. ReLU, post-norm, no final norm.
        layer = nn.TransformerEncoderLayer(
            d_model=config.scan_dim,
            nhead=config.tf_heads,
            dim_feedforward=config.tf_ffn,
            dropout=config.tf_dropout,
            batch_first=True,
        )
        lightweight_transformer = nn.TransformerEncoder(layer, num_layers=config.tf_layers)
        frequency_module = FrequencyModule(config.clip_width, shift_spectrum=config.shift_spectrum)
        fusion_decoder = CrossAttentionStack(config.scan_dim, config.ca_layers, config.ca_heads)
        oriclip_mlp = TokenProjection(config.clip_width, config.scan_dim)

        self.learnable_weight = nn.Parameter(torch.tensor([float(config.learnable_weight_init)]))
        self.lightweight_transformer = lightweight_transformer
        self.LFM = frequency_module
        self.fusion_decoder = fusion_decoder
        self.oriclip_mlp = oriclip_mlp

    def encode_clip_tokens(self, clip_patch_maps: Sequence[Tensor]) -> Tensor:
        """One (B, clip_width, g, g) patch map per configured CLIP block, in order -> (B, L·g², scan_dim).

        Each map goes through the shared `LFM` with its own σ; the tokens are laid out layer by
        layer, row-major within a layer, before `oriclip_mlp`.
        """
        config = self.config
        if len(clip_patch_maps) != len(config.clip_layers):
            raise ScanCalibrationInputError(
                f"scan calibration: got {len(clip_patch_maps)} CLIP patch maps for clip_layers {config.clip_layers}"
            )
        batch = clip_patch_maps[0].shape[0] if clip_patch_maps[0].dim() == 4 else None
        expected = (batch, config.clip_width, config.grid, config.grid)
        tokens = []
        for maps, sigma in zip(clip_patch_maps, config.frequency_sigma):
            if maps.dim() != 4 or tuple(maps.shape) != expected:
                raise ScanCalibrationInputError(
                    f"scan calibration: CLIP patch map of shape {tuple(maps.shape)}, expected {expected}"
                )
            tokens.append(self.LFM(maps, sigma=sigma).flatten(2).permute(2, 0, 1))
        # Joined sequence-first and viewed batch-first, the official memory layout: the Linear
        # layers then round exactly as officially (a contiguous copy differs by ~1e-7).
        joined = torch.cat(tokens, dim=0).transpose(0, 1).to(self.oriclip_mlp.fc1.weight.dtype)
        return self.oriclip_mlp(joined)

    def calibrate(self, class_embeddings: Tensor, clip_tokens: Tensor, clip_image_embedding: Tensor) -> Tensor:
        """class_embeddings (B, Q, D), clip_tokens (B, N, D), clip_image_embedding (B, D) -> (B, Q, D).

        The official code reshapes with a literal 100 queries; here Q is read from the tensor,
        which gives the same numbers for Q = 100 (docs/methods/scan.md#queries-hard-coded-100).
        """
        dim = self.config.scan_dim
        if class_embeddings.dim() != 3 or class_embeddings.shape[-1] != dim:
            raise ScanCalibrationInputError(
                f"scan calibration: class embeddings of shape {tuple(class_embeddings.shape)}, expected (B, Q, {dim})"
            )
        batch, queries, _ = class_embeddings.shape
        if clip_tokens.dim() != 3 or clip_tokens.shape[0] != batch or clip_tokens.shape[-1] != dim:
            raise ScanCalibrationInputError(
                f"scan calibration: CLIP tokens of shape {tuple(clip_tokens.shape)}, expected ({batch}, N, {dim})"
            )
        if tuple(clip_image_embedding.shape) != (batch, dim):
            raise ScanCalibrationInputError(
                f"scan calibration: CLIP image embedding of shape {tuple(clip_image_embedding.shape)}, "
                f"expected ({batch}, {dim})"
            )
        fused = self.fusion_decoder(class_embeddings, clip_tokens)
        # Plain division by the norm, no epsilon, as officially.
        prior = clip_image_embedding / clip_image_embedding.norm(dim=-1, keepdim=True)
        prior = prior.unsqueeze(1).expand(-1, queries, -1).reshape(batch * queries, 1, dim)
        per_query = fused.reshape(batch * queries, 1, dim) + self.learnable_weight * prior
        return self.lightweight_transformer(per_query).reshape(batch, queries, dim)

    def forward(self, class_embeddings: Tensor, clip_patch_maps: Sequence[Tensor], clip_image_embedding: Tensor) -> Tensor:
        """Calibrated class embeddings (B, Q, D), not normalised; see `encode_clip_tokens`, `calibrate`."""
        return self.calibrate(class_embeddings, self.encode_clip_tokens(clip_patch_maps), clip_image_embedding)


def calibration_state(model_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The calibration entries of a SCAN checkpoint's `model` dict, keys unchanged (loadable into
    `ScanCalibration` as they are)."""
    module_prefixes = tuple(prefix for prefix in OFFICIAL_KEY_PREFIXES if prefix.endswith("."))
    return {
        key: value
        for key, value in model_state.items()
        if key == "learnable_weight" or key.startswith(module_prefixes)
    }
