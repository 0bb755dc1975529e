"""CLIP (open_clip) zero-shot classification as a labeling backend.

Every description becomes a prompt through the spec's template ("a photo of a {}"). The
prompts are encoded ONCE per (ontology, template) and kept, so a run encodes its text
once however many images and chunks follow; images are encoded in batches. A label's box
is the whole image ``(0, 0, w, h)``.

The host keeps out of the model's way: ``prepare`` (open_clip's preprocess of each
image, on the shared preprocessing threads, and each batch stacked, pinned on CUDA)
runs on the labeling loop's feeder thread while the model encodes the previous batch
(``model_loaders.batching.PreparesAhead``). On a GPU, CLIP encodes an image in about a
millisecond, far less than resizing a photo takes: preprocessing serially on the
model's thread left the GPU mostly idle.

How a class is scored:
- ``classify`` (one class per image): softmax over ALL prompts of all classes; a class's
  probability is the SUM over its descriptions (they are synonyms competing for the same
  probability mass, so class probabilities still add up to 1, and a class is not
  penalised for having several good descriptions). Only the top-1 class is returned,
  with its probability and its best description: a threshold above that probability
  leaves the image unlabeled; it never falls back to the second class.
- ``classify-multi`` (any number of classes): each class is scored on its own, so adding
  or removing a class never changes another class's score. A CLIP model trained with a
  softmax has no calibrated independent score, so a description is scored by a two-way
  softmax against the negative prompt ``template.format("something else")``, i.e. how
  much better it matches the image than "nothing in particular" does (a raw cosine
  similarity would be independent too, but it lives in a narrow band around 0.2-0.3 that
  no threshold default fits). A sigmoid-trained model (SigLIP: the model has
  ``logit_bias``) already scores each prompt independently: there we use its own
  ``sigmoid(scale * cos + bias)``. A class takes its best description's score (any
  synonym matching is evidence).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import supervision as sv
import torch
from PIL import Image

from model_loaders.batching import preprocess_pool, stacked_for
from model_loaders.device import resolve_device, resolve_dtype
from model_loaders.ontology import Ontology
from model_loaders.protocol import Images, ModelLoadError, ModelSpec, Predictions

NEGATIVE_DESCRIPTION = "something else"
_PRECISION = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pth"}  # what open_clip looks for
_HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class _Prompts:
    """An ontology's encoded prompts: one unit vector per description, negative last."""

    features: torch.Tensor  # (descriptions + 1, dim), float32
    class_ids: torch.Tensor  # (descriptions,) ontology index of each, on the CPU
    descriptions: tuple[str, ...]


@dataclass
class PreparedClipCall:
    """A ``predict`` call's host-side work, done ahead of the model."""

    sizes: list[tuple[int, int]]  # each image's (width, height): its label's box
    batches: list[torch.Tensor]  # each batch's preprocessed pixels (pinned on CUDA)


class ClipModel:
    """Zero-shot single- or multi-label classification with open_clip."""

    def __init__(self, model, preprocess, tokenizer, spec: ModelSpec, device) -> None:
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.spec = spec
        self.device = device
        self.multi_label = spec.task == "classify-multi"
        self._prompts: dict[tuple[Ontology, str], _Prompts] = {}

    @classmethod
    def load(cls, spec: ModelSpec) -> ClipModel:
        """Load an open_clip model; refuse to run one with random weights.

        ``spec.model`` is a built-in name (with the ``pretrained`` option, a tag or a
        file), ``hf-hub:ORG/REPO`` or ``local-dir:PATH``.
        """
        import open_clip

        device = resolve_device(spec.device)
        dtype = resolve_dtype(spec.dtype, device)
        _check_loadable(spec)
        try:
            model, preprocess = open_clip.create_model_from_pretrained(
                spec.model,
                pretrained=spec.options.pretrained,
                precision=_PRECISION[dtype],
                device=device,
            )
            tokenizer = open_clip.get_tokenizer(spec.model)
        except Exception as error:  # open_clip raises RuntimeError, ValueError, OSError
            first_line = str(error).splitlines()[0] if str(error) else "no details"
            raise ModelLoadError(
                f"cannot load CLIP {_described(spec)}: {type(error).__name__}: "
                f"{first_line}"
            ) from error
        return cls(model.eval(), preprocess, tokenizer, spec, device)

    def prompts_for(self, ontology: Ontology) -> _Prompts:
        """The ontology's encoded prompts, computed on first use and kept."""
        key = (ontology, self.spec.options.prompt_template)
        if key not in self._prompts:
            pairs = ontology.prompts()
            template = self.spec.options.prompt_template
            texts = [template.format(d) for d, _ in pairs]
            texts.append(template.format(NEGATIVE_DESCRIPTION))
            with torch.inference_mode():
                tokens = self.tokenizer(texts).to(self.device)
                features = self.model.encode_text(tokens, normalize=True).float()
            self._prompts[key] = _Prompts(
                features=features,
                class_ids=torch.tensor([c for _, c in pairs]),
                descriptions=tuple(d for d, _ in pairs),
            )
        return self._prompts[key]

    def predict(
        self, images: Images, ontology: Ontology, *, confidence_floor: float
    ) -> Predictions:
        return self.predict_prepared(
            self.prepare(images, ontology), ontology, confidence_floor=confidence_floor
        )

    def prepare(self, images: Images, ontology: Ontology) -> PreparedClipCall:
        """The host-side half of ``predict``: every image through open_clip's
        preprocess (on a few threads: PIL's resize releases the GIL), stacked per
        batch, pinned on CUDA. Safe to run on another thread than the model's."""
        del ontology  # the prompts are encoded by the model, in predict_prepared
        rows = list(preprocess_pool().map(self._preprocessed, images))
        size = self.spec.batch_size
        batches = [
            stacked_for(self.device, rows[start : start + size])
            for start in range(0, len(rows), size)
        ]
        return PreparedClipCall([image.size for image in images], batches)

    def predict_prepared(
        self, prepared: PreparedClipCall, ontology: Ontology, *, confidence_floor: float
    ) -> Predictions:
        """The model's half of ``predict``: the prompts (encoded once per ontology),
        each batch's image features, and the scores."""
        prompts = self.prompts_for(ontology)
        scores = []
        for pixels in prepared.batches:
            logits = self._logits(pixels, prompts)
            if self.multi_label:
                batch_scores = self._multi_label_scores(logits)
            else:
                batch_scores = logits[:, :-1].softmax(dim=-1)
            scores.extend(batch_scores.cpu())  # one transfer per batch
        return [
            self._detections(size, image_scores, prompts, ontology, confidence_floor)
            for size, image_scores in zip(prepared.sizes, scores, strict=True)
        ]

    def _preprocessed(self, image: Image.Image) -> torch.Tensor:
        """One image as the model's input, (3, S, S), on the host."""
        return self.preprocess(_centre_of_strip(image, self.preprocess).convert("RGB"))

    @torch.inference_mode()
    def _logits(self, pixels: torch.Tensor, prompts: _Prompts) -> torch.Tensor:
        """Scaled cosine similarities (images, descriptions + 1), float32."""
        dtype = next(self.model.parameters()).dtype
        features = self.model.encode_image(
            pixels.to(self.device, non_blocking=True).to(dtype), normalize=True
        ).float()
        logits = self.model.logit_scale.exp().float() * features @ prompts.features.T
        bias = getattr(self.model, "logit_bias", None)
        return logits + bias.float() if bias is not None else logits

    def _multi_label_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Each description's own score in [0, 1] (see the module docstring)."""
        if getattr(self.model, "logit_bias", None) is not None:
            return logits[:, :-1].sigmoid()
        return (logits[:, :-1] - logits[:, -1:]).sigmoid()  # 2-way softmax vs negative

    def _detections(
        self,
        size: tuple[int, int],
        description_scores: torch.Tensor,
        prompts: _Prompts,
        ontology: Ontology,
        confidence_floor: float,
    ) -> sv.Detections:
        n_classes = len(ontology.classes)
        if self.multi_label:
            class_scores = torch.full((n_classes,), -1.0)
            class_scores = class_scores.scatter_reduce(
                0, prompts.class_ids, description_scores, reduce="amax"
            )
            candidates = torch.arange(n_classes)
        else:
            class_scores = torch.zeros(n_classes)
            class_scores = class_scores.index_add(
                0, prompts.class_ids, description_scores
            )
            candidates = class_scores.argmax().reshape(1)
        chosen = [
            c for c in candidates.tolist() if class_scores[c].item() >= confidence_floor
        ]
        best_prompt = [
            self._best_description(description_scores, prompts, c) for c in chosen
        ]
        return sv.Detections(
            xyxy=np.tile(
                np.array([0, 0, *size], dtype=np.float32),
                (len(chosen), 1),
            ),
            confidence=np.array(
                [class_scores[c].item() for c in chosen], dtype=np.float32
            ),
            class_id=np.array(chosen, dtype=int),
            data={
                "class_name": np.array(
                    [ontology.class_names[c] for c in chosen], dtype=str
                ).reshape(-1),
                "prompt": np.array(best_prompt, dtype=str).reshape(-1),
            },
        )

    @staticmethod
    def _best_description(
        description_scores: torch.Tensor, prompts: _Prompts, class_id: int
    ) -> str:
        own = (prompts.class_ids == class_id).nonzero().flatten()
        return prompts.descriptions[own[description_scores[own].argmax()].item()]


def _check_loadable(spec: ModelSpec) -> None:
    """Fail at once, in one line, where open_clip would fail late or retry a minute."""
    import open_clip

    name = spec.model
    if name.startswith("local-dir:"):
        folder = Path(name.removeprefix("local-dir:")).expanduser()
        if not folder.is_dir():
            raise ModelLoadError(f"--model {name}: no such folder")
        if not (folder / "open_clip_config.json").is_file():
            raise ModelLoadError(
                f"--model {name}: the folder has no open_clip_config.json"
            )
        weights = [p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES]
        if not weights:
            raise ModelLoadError(
                f"--model {name}: the folder has no weights "
                "(open_clip_model.safetensors)"
            )
        return
    if name.startswith("hf-hub:"):
        repo = name.removeprefix("hf-hub:")
        if not _cached(repo, ("open_clip_config.json",)) and not _hub_reachable():
            raise ModelLoadError(_offline_message(name))
        return
    if open_clip.get_model_config(name.replace("/", "-")) is None:
        raise ModelLoadError(
            f"unknown CLIP model {name!r}: use an open_clip name (e.g. ViT-B-32, see "
            "open_clip.list_models()), hf-hub:ORG/REPO or local-dir:PATH"
        )
    if not spec.options.pretrained:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)[:5])
        raise ModelLoadError(
            f"CLIP model {name} needs --pretrained: a weights file or a tag "
            f"({tags}, ...)"
        )
    if os.path.isfile(spec.options.pretrained):
        return
    config = open_clip.get_pretrained_cfg(name, spec.options.pretrained)
    if not config:
        raise ModelLoadError(
            f"--pretrained {spec.options.pretrained}: neither a file nor a known "
            f"tag of {name}"
        )
    hub = config.get("hf_hub", "")
    repo, file_name = (hub.rstrip("/"), "") if hub.endswith("/") else os.path.split(hub)
    files = (file_name,) if file_name else _HF_WEIGHT_FILES
    if repo and _cached(repo, files):
        return
    url = config.get("url", "")
    if url and Path("~/.cache/clip", os.path.basename(url)).expanduser().is_file():
        return
    if not _hub_reachable():
        raise ModelLoadError(_offline_message(name, spec.options.pretrained))


def _cached(repo: str, files: Sequence[str]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)
    except ValueError:  # not a valid repo id
        return False


def _hub_reachable() -> bool:
    from model_loaders.hub import _hub_resolves

    return _hub_resolves()


def _offline_message(name: str, pretrained: str | None = None) -> str:
    what = f"{name} --pretrained {pretrained}" if pretrained else name
    return (
        f"cannot load CLIP {what}: its weights are not in the local cache and the Hub "
        "cannot be reached (offline?). On a machine with internet save the model as a "
        "folder with open_clip_config.json + open_clip_model.safetensors, copy it here "
        "and pass --model local-dir:FOLDER."
    )


def _described(spec: ModelSpec) -> str:
    return f"{spec.model!r}" + (
        f" ({spec.options.pretrained})" if spec.options.pretrained else ""
    )


_MAX_RESIZED_PIXELS = 1 << 25  # ~100 MB of RGB: a resized strip never gets bigger


def _centre_of_strip(image: Image.Image, preprocess) -> Image.Image:
    """A very long strip cut to its centre, when the preprocess keeps only the centre.

    open_clip's default preprocess resizes the SHORT side to the input size S and keeps
    the centre square: a 20000x1 image would first become a 4.5-billion-pixel strip at
    S=224. A strip whose resized size would pass ``_MAX_RESIZED_PIXELS`` (aspect ratio
    over ~670:1 at S=224) is cropped to a centred box that stays within it first: the
    centre square is still inside, moved by at most a fraction of a source pixel. Every
    other image, and any other preprocess (longest side, squash), is left as it is, so
    their labels do not change.
    """
    size = _centre_crop_size(preprocess)
    width, height = image.size
    short = max(1, min(width, height))
    if size is None:
        return image
    max_aspect = max(1, _MAX_RESIZED_PIXELS // (size * size))
    if max(width, height) <= max_aspect * short:
        return image
    long_kept = max_aspect * short
    if width > height:
        left = (width - long_kept) // 2
        return image.crop((left, 0, left + long_kept, height))
    top = (height - long_kept) // 2
    return image.crop((0, top, width, top + long_kept))


def _centre_crop_size(preprocess) -> int | None:
    """S if ``preprocess`` resizes the short side to S, then crops the centre SxS."""
    from torchvision import transforms

    steps = list(getattr(preprocess, "transforms", ()))
    kinds = [type(step) for step in steps]
    if transforms.Resize not in kinds or transforms.CenterCrop not in kinds:
        return None
    resize = steps[kinds.index(transforms.Resize)]
    crop = steps[kinds.index(transforms.CenterCrop)]
    size = resize.size
    if isinstance(size, list | tuple) and len(size) == 1:
        size = size[0]
    if (
        not isinstance(size, int)
        or kinds.index(transforms.Resize) > kinds.index(transforms.CenterCrop)
        or tuple(crop.size) != (size, size)
    ):
        return None
    return size
