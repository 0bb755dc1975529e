"""Splits follow each image's content hash: stable across runs and orderings, close to
the fractions asked for, and refused in one line when they make no sense."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from tasks.splits import SplitError, Splits

IMAGE_IDS = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(4000)]


def test_fractions_are_met_within_sampling_noise():
    splits = Splits.parse("train=0.8,val=0.1,test=0.1")
    counts = Counter(splits.split_of(i) for i in IMAGE_IDS)
    assert sum(counts.values()) == len(IMAGE_IDS)
    assert abs(counts["train"] / len(IMAGE_IDS) - 0.8) < 0.03
    assert abs(counts["val"] / len(IMAGE_IDS) - 0.1) < 0.03
    assert abs(counts["test"] / len(IMAGE_IDS) - 0.1) < 0.03


def test_an_image_keeps_its_split_whatever_else_is_there():
    splits = Splits.parse("train=0.7,val=0.2,test=0.1")
    alone = {i: splits.split_of(i) for i in IMAGE_IDS[:100]}
    again = {
        i: Splits.parse("train=0.7,val=0.2,test=0.1").split_of(i)
        for i in reversed(IMAGE_IDS)
    }
    assert all(again[i] == split for i, split in alone.items())
    assert len(set(alone.values())) == 3  # all three splits occur in 100 images


def test_the_seed_draws_another_split():
    a, b = Splits.parse("train=0.5,val=0.5"), Splits.parse("train=0.5,val=0.5", seed=1)
    differ = sum(a.split_of(i) != b.split_of(i) for i in IMAGE_IDS[:200])
    assert 50 < differ < 150


def test_the_default_is_everything_in_train_and_a_val_split_where_needed():
    default = Splits()
    assert {default.split_of(i) for i in IMAGE_IDS[:200]} == {"train"}
    assert default.names == ["train"]
    with_val = default.with_val()
    assert with_val.names == ["train", "val"]
    counts = Counter(with_val.split_of(i) for i in IMAGE_IDS)
    assert abs(counts["val"] / len(IMAGE_IDS) - 0.1) < 0.03
    given = Splits.parse("train=0.6,val=0.4")
    assert given.with_val() == given


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("train=0.8,val=0.1", "add up to 0.9"),
        ("train=0.8,valid=0.2", "expected train=F"),
        ("train=0.8,val=x", "'x' is not a number"),
        ("val=1", "train split must hold some images"),
        ("train=1.5,val=-0.5", "train"),
    ],
)
def test_bad_splits_are_one_line(text, words):
    with pytest.raises(SplitError) as raised:
        Splits.parse(text)
    message = str(raised.value)
    assert "\n" not in message and words in message and text in message
