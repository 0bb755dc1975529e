"""Every command's flags, as users' scripts type them.

The lists are the public interface: a flag that disappears or is renamed breaks
someone's script. Adding one is fine: add it here too.
"""

from __future__ import annotations

import pytest
import typer.main

from cli.main import app

FLAGS = {
    "evaluate": {
        "--iou",
        "--map",
        "--truth",
    },
    "train": {
        "--base",
        "--batch-size",
        "--credit-rates",
        "--credits-ledger",
        "--dataset",
        "--device",
        "--dtype",
        "--epochs",
        "--image-size",
        "--learning-rate",
        "--max-credits",
        "--out-model",
        "--split",
    },
    "approve": {
        "--approved-by",
        "--description",
        "--revise",
        "--threshold",
    },
    "credits": {
        "--dataset",
        "--ledger",
        "--no-runs",
        "--out",
        "--runs",
    },
    "label": {
        "--backend",
        "--batch-size",
        "--chunk-size",
        "--class",
        "--class-names",
        "--credit-rates",
        "--credits-ledger",
        "--dataset",
        "--device",
        "--dtype",
        "--fps",
        "--map",
        "--mask-threshold",
        "--max-credits",
        "--model",
        "--nms",
        "--nms-iou",
        "--ontology",
        "--out",
        "--pretrained",
        "--prompt-mode",
        "--prompt-template",
        "--quality",
        "--s3-endpoint-url",
        "--sam-checkpoint",
        "--sam-model-type",
        "--split",
        "--task",
        "--threshold",
        "--torchvision-arch",
        "--upload-to",
        "-c",
    },
    "label-sharded": {
        "--backend",
        "--batch-size",
        "--chunk-size",
        "--class",
        "--class-names",
        "--credit-rates",
        "--credits-ledger",
        "--dataset",
        "--deployment",
        "--device",
        "--dtype",
        "--fps",
        "--map",
        "--max-attempts",
        "--mask-threshold",
        "--max-credits",
        "--model",
        "--nms",
        "--nms-iou",
        "--ontology",
        "--out",
        "--poll-interval",
        "--pretrained",
        "--prompt-mode",
        "--prompt-template",
        "--quality",
        "--s3-endpoint-url",
        "--sam-checkpoint",
        "--sam-model-type",
        "--shard-timeout",
        "--shards",
        "--stale-after",
        "--split",
        "--task",
        "--threshold",
        "--torchvision-arch",
        "--upload-to",
        "-c",
    },
    "notify-upload": {
        "--image",
        "--manifest",
        "--out",
        "--print-curl",
        "--source",
    },
    "preview": {
        "--backend",
        "--batch-size",
        "--class",
        "--class-names",
        "--dataset",
        "--device",
        "--dtype",
        "--fps",
        "--from",
        "--images",
        "--map",
        "--mask-threshold",
        "--model",
        "--nms",
        "--nms-iou",
        "--ontology",
        "--out",
        "--pretrained",
        "--prompt-mode",
        "--prompt-template",
        "--s3-endpoint-url",
        "--sam-checkpoint",
        "--sam-model-type",
        "--sample",
        "--seed",
        "--task",
        "--threshold",
        "--torchvision-arch",
        "--truth",
        "--truth-map",
        "-c",
    },
    "run": {
        "--approve",
        "--backend",
        "--batch-size",
        "--chunk-size",
        "--class",
        "--class-names",
        "--credit-rates",
        "--credits-ledger",
        "--dataset",
        "--device",
        "--dtype",
        "--fps",
        "--images",
        "--map",
        "--mask-threshold",
        "--max-credits",
        "--model",
        "--nms",
        "--nms-iou",
        "--ontology",
        "--out",
        "--pretrained",
        "--prompt-mode",
        "--prompt-template",
        "--quality",
        "--reuse-approved",
        "--s3-endpoint-url",
        "--sam-checkpoint",
        "--sam-model-type",
        "--sample",
        "--seed",
        "--split",
        "--task",
        "--threshold",
        "--timeout",
        "--torchvision-arch",
        "--truth",
        "--truth-map",
        "--upload-to",
        "-c",
    },
    "ui": {
        "--allow-source",
        "--batch-size",
        "--chunk-size",
        "--class",
        "--credit-rates",
        "--credits-ledger",
        "--dataset",
        "--device",
        "--fps",
        "--host",
        "--max-credits",
        "--model",
        "--ontology",
        "--out",
        "--port",
        "--pretrained",
        "--s3-endpoint-url",
        "--sam-checkpoint",
        "--sam-model-type",
        "--sample",
        "--task",
        "--token",
        "-c",
    },
}


def _command_flags() -> dict[str, set[str]]:
    command = typer.main.get_command(app)
    return {
        name: {
            flag
            for param in sub.params
            for flag in (*param.opts, *param.secondary_opts)
            if flag.startswith("-")
        }
        for name, sub in command.commands.items()
    }


def test_every_command_is_listed():
    assert set(_command_flags()) == set(FLAGS)


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_command_offers_exactly_its_flags(name):
    assert _command_flags()[name] == FLAGS[name]


@pytest.mark.parametrize("name", ["label", "run", "label-sharded"])
def test_every_labeling_command_takes_the_same_option_groups(name):
    """label, run and label-sharded label a batch: same classes, model, credit,
    output and source options."""
    shared = _command_flags()["label"] - {"--out", "--help"}
    assert len(shared) == 31
    assert shared <= _command_flags()[name]
