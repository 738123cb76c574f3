"""Prompt-template sets, as data.

A template is a string with one ``{}`` where the class name goes. Methods name the set
they use in their config (``templates: maskclip85``); `get_templates` resolves the name.

Sets:
- ``single``: the one template CAT-Seg and GSNet use.
- ``vild14``: the 14 ViLD templates (SAN, OV-Seg, SCAN, EBSeg).
- ``imagenet80``: CLIP's 80 ImageNet zero-shot templates, in CLIP's order (SED).
- ``maskclip85``: what MaskCLIP's prompt-engineering script encodes: ``imagenet80``
  followed by five scene templates.
"""

from __future__ import annotations

from types import MappingProxyType
from ovbench_methods.common.errors import MethodConfigError
from typing import Mapping

SINGLE_TEMPLATES: tuple[str, ...] = ("A photo of a {} in the scene",)

VILD14_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)

IMAGENET80_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

# MaskCLIP appends these to the ImageNet list because segmentation prompts describe a
# region of a scene rather than a whole-image object.
MASKCLIP_SCENE_TEMPLATES: tuple[str, ...] = (
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
)

TEMPLATE_SETS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "single": SINGLE_TEMPLATES,
        "vild14": VILD14_TEMPLATES,
        "imagenet80": IMAGENET80_TEMPLATES,
        "maskclip85": IMAGENET80_TEMPLATES + MASKCLIP_SCENE_TEMPLATES,
    }
)


class UnknownTemplateSetError(MethodConfigError):
    """A prompt-template set name that `TEMPLATE_SETS` does not define."""


def get_templates(name: str) -> tuple[str, ...]:
    """The templates of the set called `name` (see the module docstring)."""
    try:
        return TEMPLATE_SETS[name]
    except KeyError:
        raise UnknownTemplateSetError(
            f"unknown prompt-template set {name!r}; known sets: {', '.join(sorted(TEMPLATE_SETS))}"
        ) from None


def validate_templates(templates: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Check that every template has exactly one ``{}`` slot; return them as a tuple."""
    checked = tuple(templates)
    if not checked:
        raise UnknownTemplateSetError("empty prompt-template list: at least one template is needed")
    for template in checked:
        if not isinstance(template, str) or template.count("{}") != 1:
            raise UnknownTemplateSetError(f"prompt template {template!r} must contain exactly one '{{}}'")
    return checked
