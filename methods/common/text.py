"""CLIP text side: the text tower, prompt-ensembled class embeddings, and their cache.

A class is given as a sequence of names: its name first, then any synonyms. Its embedding
is the prompt ensemble over every (name, template) pair: encode each prompt, L2-normalise,
average, L2-normalise again. Synonyms therefore count exactly like extra templates.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, get_args, Hashable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Turns a list of prompt strings into a (P, context_length) int tensor of token ids.
Tokenizer = Callable[[list[str]], Tensor]

#: Classes as the methods see them: one tuple of names (name, *synonyms) per class.
ClassNames = Sequence[Sequence[str]]

#: The most prompts fed to the text tower in one forward call. A vocabulary of T classes
#: with P templates is T*P prompts (2000 classes x 85 MaskCLIP templates = 170,000); encoding
#: them in chunks of this size keeps the tower's activations, and the token ids, at one
#: chunk's worth whatever T is, so encoding time grows linearly in T and memory does not.
TEXT_CHUNK_SIZE = 1024


class ClipTextEncoder(nn.Module):
    """The text tower of an open_clip model: token ids (P, L) -> embeddings (P, D), unnormalised.

    It takes ownership of the text modules of `clip` (token embedding, transformer, final
    norm, projection), so the image tower can be wrapped separately without registering any
    parameter twice. Models whose text tower is a separate module (`CustomTextCLIP`,
    ``clip.text``) are wrapped whole.
    """

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        tower = getattr(clip, "text", None)
        if isinstance(tower, nn.Module):
            self.tower: nn.Module | None = tower
            self.context_length = int(getattr(tower, "context_length", getattr(clip, "context_length", 77)))
            return
        self.tower = None
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.pool_type = getattr(clip, "text_pool_type", "argmax")
        self.eos_token_id = getattr(clip, "text_eos_id", None)
        self.context_length = int(clip.context_length)
        self.causal = _is_causal(clip.attn_mask)

    def used_length(self, tokens: Tensor) -> int:
        """The shortest prefix of the (P, L) token ids that gives the same embeddings (to float rounding).

        CLIP pads every prompt to the full context (77), yet class prompts are 7-20 tokens
        long. Under the causal mask a position never sees the positions after it, so the
        pooled token (the end-of-text token for "argmax"/"eos" pooling, the first token for
        "first") does not depend on anything after the longest prompt's pooled position:
        running the tower on that prefix gives the same result at a fraction of the cost
        (about 5x fewer tokens for MaskCLIP's templates, and attention is quadratic in L).
        Without a causal mask, or with a pooling that reads the last position, every
        position matters and the full length is returned.
        """
        full = int(tokens.shape[-1])
        if self.tower is not None or not self.causal or tokens.numel() == 0:
            return full
        if self.pool_type == "first":
            return 1
        if self.pool_type == "argmax":
            pooled = tokens.argmax(dim=-1)
        elif self.pool_type == "eos" and self.eos_token_id is not None:
            pooled = (tokens == self.eos_token_id).int().argmax(dim=-1)
        else:
            return full
        return min(full, int(pooled.max()) + 1)

    def forward(self, tokens: Tensor) -> Tensor:
        if self.tower is not None:
            return self.tower(tokens)
        from open_clip.transformer import text_global_pool

        # Drop the padding no output depends on (see `used_length`); the positional table and
        # the causal mask are cut to the same prefix, which is what they are for those positions.
        length = self.used_length(tokens)
        tokens = tokens[:, :length]
        attn_mask = self.attn_mask[:length, :length] if self.attn_mask is not None else None
        dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(tokens).to(dtype) + self.positional_embedding[:length].to(dtype)
        x = self.transformer(x, attn_mask=attn_mask)
        x = self.ln_final(x)
        x = text_global_pool(x, tokens, self.pool_type, eos_token_id=self.eos_token_id)
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        if self.text_projection is not None:
            return x @ self.text_projection
        return x


def class_prompts(classes: ClassNames, templates: Sequence[str]) -> tuple[list[str], Tensor]:
    """Every (name, template) prompt of every class, and the class index of each prompt."""
    prompts: list[str] = []
    owners: list[int] = []
    for class_index, names in enumerate(classes):
        if isinstance(names, str) or not names:
            raise ValueError(f"class {class_index}: expected a non-empty sequence of names, got {names!r}")
        for name in names:
            for template in templates:
                prompts.append(template.format(name))
                owners.append(class_index)
    return prompts, torch.tensor(owners, dtype=torch.long)


def _is_causal(mask: Tensor | None) -> bool:
    """True when `mask` (additive float or boolean "may not attend") hides every later position."""
    if mask is None or mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
        return False
    later = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu_(1)
    blocked = mask if mask.dtype == torch.bool else torch.isneginf(mask)
    return bool(blocked[later].all())


def _chunk_size(chunk_size: int | None) -> int:
    # Read at call time, so the module constant is the one knob (tests lower it).
    chunk_size = TEXT_CHUNK_SIZE if chunk_size is None else chunk_size
    if chunk_size < 1:
        raise ValueError(f"chunk size must be at least 1, got {chunk_size}")
    return chunk_size


def encode_tokens(encoder: nn.Module, tokens: Tensor, chunk_size: int | None = None) -> Tensor:
    """(P, L) token ids -> (P, D) L2-normalised float embeddings, at most `chunk_size`
    (default TEXT_CHUNK_SIZE) rows per forward call, so that the tower's activations never
    exceed one chunk's worth."""
    chunk_size = _chunk_size(chunk_size)
    if tokens.shape[0] <= chunk_size:
        return F.normalize(encoder(tokens).float(), dim=-1)
    return torch.cat(
        [F.normalize(encoder(tokens[start : start + chunk_size]).float(), dim=-1)
         for start in range(0, tokens.shape[0], chunk_size)]
    )


def encode_class_prompts(
    encoder: nn.Module,
    tokenizer: Tokenizer,
    classes: ClassNames,
    templates: Sequence[str],
    batch_size: int | None = None,
) -> Tensor:
    """Prompt-ensembled, L2-normalised class embeddings (T, D).

    Memory stays at one chunk of `batch_size` (default TEXT_CHUNK_SIZE) prompts whatever the
    vocabulary size:

    - prompts are tokenised and encoded chunk by chunk (token ids of all 170,000 prompts of
      2000 classes x 85 templates would be 105 MB of int64 by themselves);
    - each chunk's normalised embeddings are summed into their classes at once, so only the
      (T, D) sums are kept, never the (T*P, D) per-prompt embeddings (348 MB, twice over
      for the concatenation, with a 512-wide text tower at that size);
    - prompts go through the tower in order of their length, so each chunk holds prompts of
      about the same length and is cut to its longest one (`ClipTextEncoder.used_length`)
      rather than carrying the shortest ones' padding.

    Per class that is the same mean of normalised prompt embeddings, summed in another order
    (equal to float rounding). Gradients flow when the caller has them enabled (methods that
    tune the text tower).
    """
    if not templates:
        raise ValueError("no prompt templates given")
    batch_size = _chunk_size(batch_size)
    prompts, owners = class_prompts(classes, templates)
    if not prompts:
        raise ValueError("no classes given")
    device = next(encoder.parameters()).device
    # Character length is a cheap, good proxy for token length; a stable sort keeps the
    # prompts of one length in their original order. The order only groups the work.
    order = sorted(range(len(prompts)), key=lambda index: len(prompts[index]))
    owners = owners.to(device)
    sums: Tensor | None = None
    for start in range(0, len(prompts), batch_size):
        rows = order[start : start + batch_size]
        tokens = tokenizer([prompts[index] for index in rows]).to(device)
        embeddings = F.normalize(encoder(tokens).float(), dim=-1)
        if sums is None:
            sums = torch.zeros(len(classes), embeddings.shape[-1], device=device)
        # In place: a fresh (T, D) sum per chunk would make the loop quadratic in T.
        sums.index_add_(0, owners[torch.tensor(rows, device=device)], embeddings)
    counts = torch.bincount(owners, minlength=len(classes)).clamp_min(1).unsqueeze(1)
    return F.normalize(sums / counts, dim=-1)


class ClassEmbeddingCache:
    """A small least-recently-used store of class embeddings of a frozen text tower.

    Keys must identify everything the embeddings depend on, for instance the tuple of
    class-name tuples plus the template tuple (`cache_key`), so that two vocabularies never
    share an entry. Clear it whenever the text tower's weights change.
    """

    def __init__(self, max_entries: int = 8) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, Tensor] = OrderedDict()

    @staticmethod
    def cache_key(classes: ClassNames, templates: Sequence[str]) -> tuple:
        return tuple(tuple(names) for names in classes), tuple(templates)

    def get_or_compute(self, key: Hashable, compute: Callable[[], Tensor]) -> Tensor:
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        value = compute().detach()
        self._entries[key] = value
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


# ------------------------------------------------------------------ trainable text towers
#: How a class with synonyms ("a, b") becomes prompts when the text tower is fine-tuned:
#: - "first": only its first name (CAT-Seg / GSNet official);
#: - "average": every name, embeddings averaged within each template, then L2-normalised.
SynonymMode = Literal["first", "average"]
SYNONYM_MODES: tuple[str, ...] = get_args(SynonymMode)


def cached_class_embeddings(
    cache: "ClassEmbeddingCache", encoder: nn.Module, tokenizer: Tokenizer, classes: ClassNames, templates: Sequence[str]
) -> Tensor:
    """(T, D) L2-normalised template-ensembled text embeddings of a frozen text tower, computed
    without gradients and cached per vocabulary (SAN, OV-Seg, SCAN)."""
    # An entry made under inference_mode must not be handed to autograd-enabled code.
    key = (ClassEmbeddingCache.cache_key(classes, templates), torch.is_inference_mode_enabled())

    def compute() -> Tensor:
        with torch.no_grad():
            return encode_class_prompts(encoder, tokenizer, classes, templates)

    return cache.get_or_compute(key, compute)


def template_prompts(
    classes: ClassNames, templates: Sequence[str], synonyms: str = "first"
) -> tuple[list[str], Tensor]:
    """Prompts for a (T, P) grid of (class, template) cells, and each prompt's cell index.

    Cell ``t * P + p`` holds class t under template p; with ``synonyms="average"`` it owns
    one prompt per name of the class, otherwise exactly one (the first name).
    """
    if synonyms not in SYNONYM_MODES:
        raise ValueError(f"unknown synonym mode {synonyms!r}; expected one of {', '.join(SYNONYM_MODES)}")
    if not templates:
        raise ValueError("no prompt templates given")
    prompts: list[str] = []
    cells: list[int] = []
    for class_index, names in enumerate(classes):
        if isinstance(names, str) or not names:
            raise ValueError(f"class {class_index}: expected a non-empty sequence of names, got {names!r}")
        used = names if synonyms == "average" else names[:1]
        for template_index, template in enumerate(templates):
            for name in used:
                prompts.append(template.format(name))
                cells.append(class_index * len(templates) + template_index)
    return prompts, torch.tensor(cells, dtype=torch.long)


class TemplateClassEncoder:
    """Class embeddings (T, P, D) of a text tower that may be fine-tuned (CAT-Seg, GSNet).

    One embedding per (class, template), L2-normalised, so P templates give P cost-volume
    channels. Token ids are cached per vocabulary (tokenising is pure string work); the
    encoder itself runs with gradients on every call made with ``cache=False`` (training,
    where its q/v weights change each step). With ``cache=True`` (evaluation) embeddings are
    cached per vocabulary; call `clear_embeddings` whenever the tower's weights change.
    Not an `nn.Module`: the caller owns the text tower and passes it in.
    """

    def __init__(
        self, tokenizer: Tokenizer, templates: Sequence[str], synonyms: str = "first", max_entries: int = 8
    ) -> None:
        if synonyms not in SYNONYM_MODES:
            raise ValueError(f"unknown synonym mode {synonyms!r}; expected one of {', '.join(SYNONYM_MODES)}")
        if not templates:
            raise ValueError("no prompt templates given")
        self.tokenizer = tokenizer
        self.templates = tuple(templates)
        self.synonyms = synonyms
        self._tokens = ClassEmbeddingCache(max_entries)
        self._embeddings = ClassEmbeddingCache(max_entries)

    @property
    def num_templates(self) -> int:
        return len(self.templates)

    def key(self, classes: ClassNames) -> tuple:
        return ClassEmbeddingCache.cache_key(classes, self.templates) + (self.synonyms,)

    def tokens(self, classes: ClassNames, device: torch.device | str) -> tuple[Tensor, Tensor]:
        """(prompt token ids (N, L), cell index of each prompt (N,)) on `device`, cached."""
        key = self.key(classes) + (str(device),)

        def compute() -> Tensor:
            prompts, cells = template_prompts(classes, self.templates, self.synonyms)
            ids = self.tokenizer(prompts)
            # One tensor holds both, so the cache stores a single entry per vocabulary.
            return torch.cat([ids, cells.unsqueeze(1).to(ids.dtype)], dim=1).to(device)

        packed = self._tokens.get_or_compute(key, compute)
        return packed[:, :-1], packed[:, -1]

    def encode(self, encoder: nn.Module, classes: ClassNames) -> Tensor:
        """(T, P, D) L2-normalised embeddings, computed now (with gradients if enabled)."""
        if not classes:
            raise ValueError("no classes given")
        device = next(encoder.parameters()).device
        tokens, cells = self.tokens(classes, device)
        # In bounded chunks (see TEXT_CHUNK_SIZE): a large vocabulary with many templates
        # would otherwise run every prompt through the tower in one batch.
        embeddings = encode_tokens(encoder, tokens)
        num_cells = len(classes) * self.num_templates
        if embeddings.shape[0] != num_cells:
            sums = torch.zeros(num_cells, embeddings.shape[-1], device=device).index_add_(0, cells, embeddings)
            embeddings = F.normalize(sums / torch.bincount(cells, minlength=num_cells).unsqueeze(1), dim=-1)
        return embeddings.view(len(classes), self.num_templates, -1)

    def __call__(self, encoder: nn.Module, classes: ClassNames, cache: bool = False) -> Tensor:
        if not cache:
            return self.encode(encoder, classes)

        def compute() -> Tensor:
            with torch.no_grad():
                return self.encode(encoder, classes)

        return self._embeddings.get_or_compute(self.key(classes), compute)

    def clear_embeddings(self) -> None:
        self._embeddings.clear()
