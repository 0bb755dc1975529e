"""What the Hugging Face open-vocabulary backends that embed each description once
(SAM 3, OWLv2) share: the loaded model and processor, the text length its config
allows, loading through ``hub.load_pretrained``, and refusing a description too long
for the text encoder before the weights load (only the processor and config are read).

A subclass names its transformers classes and says how many tokens a description
takes; it keeps its own forward pass and per-ontology embedding cache.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from model_loaders.grounding_dino_prompts import PromptTooLongError
from model_loaders.hub import load_light, load_pretrained
from model_loaders.ontology import Ontology
from model_loaders.protocol import ModelSpec


class TextPromptedBackend:
    """Base of a backend that reads each description through a text encoder."""

    what: ClassVar[str]  # the model's name in messages ("SAM 3")
    model_class: ClassVar[str]  # transformers class names
    processor_class: ClassVar[str]
    config_class: ClassVar[str]
    prompt_unit: ClassVar[str] = "prompt"  # what the model calls one description

    def __init__(self, model, processor, spec: ModelSpec, device: torch.device) -> None:
        self.model = model
        self.processor = processor
        self.spec = spec
        self.device = device
        self.dtype = next(model.parameters()).dtype
        self.max_text_len = int(model.config.text_config.max_position_embeddings)
        self._texts: dict[Ontology, object] = {}

    def text_for(self, ontology: Ontology):
        """The ontology's text embeddings (``_embed_text``), computed once per
        ontology and reused for every image.

        Raises:
            PromptTooLongError: If a description is longer than the text encoder reads.
        """
        if ontology not in self._texts:
            self._texts[ontology] = self._embed_text(ontology)
        return self._texts[ontology]

    def _embed_text(self, ontology: Ontology):
        """Every description of ``ontology`` through the text encoder (per backend)."""
        raise NotImplementedError

    @classmethod
    def load(cls, spec: ModelSpec):
        """Load processor and weights from a Hugging Face id or a local directory."""
        import transformers

        model_class = getattr(transformers, cls.model_class)
        processor_class = getattr(transformers, cls.processor_class)
        processor, model, device = load_pretrained(
            spec,
            what=cls.what,
            load=lambda dtype: (
                processor_class.from_pretrained(spec.model),
                model_class.from_pretrained(spec.model, dtype=dtype),
            ),
        )
        return cls(model, processor, spec, device)

    @classmethod
    def check_ontology(cls, spec: ModelSpec, ontology: Ontology) -> None:
        """Refuse descriptions too long for the text encoder before the weights load.

        Raises:
            PromptTooLongError: The first description over the text length.
            ModelLoadError: If the processor or config cannot be read.
        """
        import transformers

        processor_class = getattr(transformers, cls.processor_class)
        config_class = getattr(transformers, cls.config_class)
        processor, config = load_light(
            spec,
            what=cls.what,
            load=lambda: (
                processor_class.from_pretrained(spec.model),
                config_class.from_pretrained(spec.model),
            ),
        )
        limit = int(config.text_config.max_position_embeddings)
        for prompt, _ in ontology.prompts():
            cls.check_length(prompt, cls.token_count(processor, prompt), limit)

    @staticmethod
    def token_count(processor, prompt: str) -> int:
        """How many tokens ``prompt`` takes in the model's text encoder."""
        raise NotImplementedError

    @classmethod
    def check_length(cls, prompt: str, length: int, limit: int) -> None:
        """A PromptTooLongError if ``length`` tokens are more than the model reads."""
        if length > limit:
            raise PromptTooLongError(
                f"the description {prompt!r} is {length} tokens long; {cls.what} "
                f"reads at most {limit} per {cls.prompt_unit}: shorten it"
            )
