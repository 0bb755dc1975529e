"""Grounding DINO text prompts: building them from an ontology and mapping tokens back.

Grounding DINO scores every query against every text token. We build the prompt
ourselves so we know exactly which tokens belong to which description, and read each
description's score as the max over its own tokens. That makes every detection map back
to exactly one ontology class (never the decoded-token guess of transformers'
post-processing, whose labels can contain fragments of several phrases or special tokens
such as ``[SEP]``).

Joint mode packs all descriptions into as few texts as the model's token limit allows
(``"a . b . c ."``); per-class mode gives every description its own text, the bare
description, exactly as transformers' ``zero-shot-object-detection`` pipeline does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

SEPARATOR = " . "
SPECIAL_TOKENS_PER_TEXT = 2  # [CLS] and [SEP]


@dataclass(frozen=True)
class Phrase:
    """One description inside a text: its characters ``[start, end)`` and its class."""

    prompt: str
    class_id: int
    start: int
    end: int


@dataclass(frozen=True)
class PromptText:
    """A text given to the model in one forward pass, and the phrases it contains."""

    text: str
    phrases: tuple[Phrase, ...]


class PromptTooLongError(ValueError):
    """A single description does not fit into the model's text limit on its own."""


def build_joint_texts(
    prompts: Sequence[tuple[str, int]],
    *,
    count_tokens: Callable[[str], int],
    max_tokens: int,
) -> list[PromptText]:
    """Pack descriptions into texts ``"p1 . p2 . ... ."`` of at most ``max_tokens``
    tokens.

    The class list is split only when it has to be: one forward pass per text, so fewer
    texts means fewer passes. ``count_tokens`` counts a piece's tokens without special
    tokens; the BERT tokenizer splits on whitespace and punctuation, so token counts of
    pieces add up.
    """
    budget = max_tokens - SPECIAL_TOKENS_PER_TEXT
    separator_tokens = count_tokens(".")
    texts: list[PromptText] = []
    current: list[tuple[str, int]] = []
    used = 0
    for prompt, class_id in prompts:
        cost = count_tokens(prompt) + separator_tokens
        if cost > budget:
            raise PromptTooLongError(
                f"the description {prompt!r} is {cost} tokens long; "
                "the model reads at most "
                f"{budget} per text: shorten it"
            )
        if current and used + cost > budget:
            texts.append(_joined(current))
            current, used = [], 0
        current.append((prompt, class_id))
        used += cost
    if current:
        texts.append(_joined(current))
    return texts


def build_per_class_texts(prompts: Sequence[tuple[str, int]]) -> list[PromptText]:
    """One text per description: the bare description, as the transformers pipeline
    does."""
    return [
        PromptText(text=prompt, phrases=(Phrase(prompt, class_id, 0, len(prompt)),))
        for prompt, class_id in prompts
    ]


def _joined(prompts: list[tuple[str, int]]) -> PromptText:
    phrases = []
    text = ""
    for prompt, class_id in prompts:
        start = len(text)
        text += prompt
        phrases.append(Phrase(prompt, class_id, start, len(text)))
        text += SEPARATOR
    return PromptText(text=text.rstrip(), phrases=tuple(phrases))


def phrase_token_mask(
    offsets: Sequence[tuple[int, int]], phrases: Sequence[Phrase], length: int
) -> torch.Tensor:
    """A (length, n_phrases) bool mask: token i belongs to phrase j.

    Special tokens have the empty offset (0, 0) and separators lie outside every phrase,
    so neither counts towards any class. ``length`` is the padded token length of the
    batch.
    """
    mask = torch.zeros(length, len(phrases), dtype=torch.bool)
    for token_index, (start, end) in enumerate(offsets):
        if end <= start:
            continue
        for phrase_index, phrase in enumerate(phrases):
            if start >= phrase.start and end <= phrase.end:
                mask[token_index, phrase_index] = True
                break
    return mask


def phrase_scores(token_probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each query's score for each phrase: the max probability over the phrase's tokens.

    ``token_probs`` is (queries, tokens) of sigmoid scores, or (rows, queries, tokens)
    for several rows of one text at once; ``mask`` is (tokens, phrases). Returns
    (queries, phrases), or (rows, queries, phrases).
    """
    tokens = min(token_probs.shape[-1], mask.shape[0])
    probs = token_probs[..., :tokens, None]
    masked = probs.masked_fill(~mask[:tokens, :].to(probs.device), -1.0)
    return masked.amax(dim=-2)
