"""OV-Seg (Liang et al., CVPR 2023): a MaskFormer proposal network and a mask-adapted CLIP
that classifies every proposal's masked crop (docs/methods/ovseg.md)."""
