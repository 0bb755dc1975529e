"""Prompt building: chunking past the token limit and mapping tokens back to classes."""

from __future__ import annotations

import random
import string

import pytest
import torch
from transformers import AutoTokenizer

from model_loaders.grounding_dino_prompts import (
    PromptTooLongError,
    build_joint_texts,
    build_per_class_texts,
    phrase_scores,
    phrase_token_mask,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_grounding_dino):
    return AutoTokenizer.from_pretrained(tiny_grounding_dino)


def _count(tokenizer):
    return lambda piece: len(tokenizer(piece, add_special_tokens=False)["input_ids"])


def _random_class_names(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(
            "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9)))
            for _ in range(rng.randint(1, 3))
        )
        for _ in range(n)
    ]


def test_a_class_list_over_256_tokens_is_split_into_texts_within_the_limit(tokenizer):
    names = _random_class_names(150)
    prompts = [(name, class_id) for class_id, name in enumerate(names)]
    single_text_tokens = len(tokenizer(" . ".join(names) + " .")["input_ids"])
    assert single_text_tokens > 256  # the list really needs splitting

    texts = build_joint_texts(prompts, count_tokens=_count(tokenizer), max_tokens=256)

    assert len(texts) >= 2
    for text in texts:
        assert len(tokenizer(text.text)["input_ids"]) <= 256
        assert text.text.endswith(" .")
    # Every description lands in exactly one text, in order, with its own class id.
    flattened = [(p.prompt, p.class_id) for text in texts for p in text.phrases]
    assert flattened == prompts
    # Packing is greedy: no text could have taken the next text's first description.
    assert len(texts) <= -(-single_text_tokens // 250) + 1


def test_short_lists_stay_in_one_text(tokenizer):
    texts = build_joint_texts(
        [("a cat", 0), ("dog", 1)], count_tokens=_count(tokenizer), max_tokens=256
    )
    assert [t.text for t in texts] == ["a cat . dog ."]


def test_a_description_longer_than_the_limit_is_named(tokenizer):
    long_prompt = " ".join(["cat"] * 300)
    with pytest.raises(PromptTooLongError, match="cat cat"):
        build_joint_texts(
            [(long_prompt, 0)], count_tokens=_count(tokenizer), max_tokens=256
        )


def test_tokens_map_to_their_phrase_and_separators_to_none(tokenizer):
    (text,) = build_joint_texts(
        [("a shiny metal drink can", 0), ("person", 1)],
        count_tokens=_count(tokenizer),
        max_tokens=64,
    )
    encoded = tokenizer(text.text, return_offsets_mapping=True)
    mask = phrase_token_mask(encoded["offset_mapping"], text.phrases, length=12)
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    owner = {
        token: int(mask[i].nonzero()[0]) if mask[i].any() else None
        for i, token in enumerate(tokens)
    }
    assert owner == {
        "[CLS]": None,
        "a": 0,
        "shiny": 0,
        "metal": 0,
        "drink": 0,
        "can": 0,
        ".": None,
        "person": 1,
        "[SEP]": None,
    }
    assert mask[len(tokens) :].sum() == 0  # padding belongs to nobody


def test_phrase_score_is_the_max_over_its_own_tokens_only():
    probs = torch.tensor([[0.99, 0.2, 0.6, 0.1, 0.95]])  # [CLS] a b . [SEP]
    mask = torch.tensor([[0], [1], [1], [0], [0]], dtype=torch.bool)
    assert phrase_scores(probs, mask)[0].tolist() == pytest.approx([0.6])


def test_per_class_texts_are_the_bare_descriptions():
    texts = build_per_class_texts([("a cat", 0), ("dog", 1)])
    assert [(t.text, t.phrases[0].class_id) for t in texts] == [
        ("a cat", 0),
        ("dog", 1),
    ]
