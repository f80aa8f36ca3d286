"""A trained side network as a model in your own code, the way peft users load an adapter::

    from train_side import SideModel

    model = SideModel.from_pretrained("runs/ladder")          # or "hf://ORG/NAME"
    ids = model.tokenizer(model.format("What is 12 * 7?"), return_tensors="pt").input_ids
    streamer = TextStreamer(model.tokenizer, skip_prompt=True, skip_special_tokens=True)
    out = model.generate(ids, max_new_tokens=128, streamer=streamer)

``from_pretrained`` reloads exactly the backbone the run's store was extracted from (weights,
quantization, dtype; another is refused, as ``train_side eval`` does). ``model(input_ids)`` gives
logits; ``generate`` takes ``transformers``' usual generation arguments and runs the project's own
generation loop (:func:`.generate.generate`, the one ``train_side eval`` runs), so its tokens are
those of ``eval`` for the same prompts and seed. A ``SideModel`` is a torch module, so it also runs
inside ``transformers.pipeline("text-generation", model=model, tokenizer=model.tokenizer)``.

Why not ``transformers.GenerationMixin``: a step here is backbone (its KV cache) -> codec
round-trip -> side network (a second KV cache) -> frozen head. GenerationMixin owns one cache
object per model and drives it through ``prepare_inputs_for_generation`` and a PreTrainedModel's
config; it would have to own both caches and a CPU round-trip it cannot see, through internals
that change between transformers releases, and its sampling (the global RNG, top_k=50 by default)
would not give ``eval``'s tokens. The arguments users know are accepted by name instead; anything
else is refused with a one-line error rather than ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from extract.backbones import Backbone, same_backbone
from extract.tasks.prompts import encode_prompt, format_prompt
from featurestore import get_codec
from featurestore.errors import UserError

from ..checkpoint import Checkpoint, load_side, save
from ..config import GenerateConfig
from ..backbone import reload_backbone
from .generate import Pipeline, generate
from .hub import fetch_run
from ..network.model import FrozenHead, SideConfig

SUPPORTED = ("max_new_tokens", "max_length", "min_new_tokens", "do_sample", "temperature", "top_p", "top_k",
             "repetition_penalty", "eos_token_id", "pad_token_id", "streamer", "generation_config", "seed", "use_cache",
             "attention_mask", "stop_strings", "return_dict_in_generate")
FROM_GENERATION_CONFIG = ("max_new_tokens", "max_length", "min_new_tokens", "do_sample", "temperature", "top_p",
                          "top_k", "repetition_penalty", "eos_token_id", "pad_token_id", "stop_strings",
                          "return_dict_in_generate")  # what a transformers GenerationConfig may set here


def by_transformers_names(config: GenerateConfig) -> dict:
    """``config``'s settings as transformers names them: a temperature of 0 is ``do_sample=False``
    (and a sampling temperature, when do_sample is asked for without one, is 1)."""
    return {"max_new_tokens": config.max_new_tokens, "do_sample": config.temperature > 0,
            "temperature": config.temperature or 1.0, "top_p": config.top_p, "top_k": config.top_k, "seed": config.seed,
            "min_new_tokens": config.min_new_tokens, "repetition_penalty": config.repetition_penalty}


class GenerationArgumentError(UserError, ValueError):
    """A generation argument this model does not implement; the message lists those it does."""


@dataclass
class SideModelOutput:
    """What ``model(input_ids)`` returns, as transformers' CausalLMOutputWithPast: ``logits`` (B, T, V)
    and, with ``use_cache``, ``past_key_values`` to continue from (both models' caches)."""

    logits: Tensor
    past_key_values: dict | None = None

    def __getitem__(self, i):  # output[0] is the logits, as with transformers' outputs
        return (self.logits, self.past_key_values)[i]


class SideModel(torch.nn.Module):
    """Backbone -> codec round-trip -> side network -> frozen head, loaded from a trained run.

    A torch module, as a ``PeftModel`` is: its submodules are the frozen backbone (``base_model``),
    the side network (``side``; None for the backbone alone) and the frozen head (``head``), so
    ``.parameters()``, ``.to(device)`` and ``.eval()`` reach all three; ``.config`` is the
    backbone's transformers config, ``.side_config`` the side network's.
    """

    def __init__(self, pipeline: Pipeline, checkpoint: Checkpoint, run: Path):
        super().__init__()
        self.pipeline, self.checkpoint, self.run = pipeline, checkpoint, run
        self.backbone: Backbone = pipeline.backbone
        self.base_model = pipeline.backbone.model
        self.side = pipeline.side
        self.head = pipeline.head
        self.tokenizer = pipeline.backbone.tokenizer
        template = checkpoint.store.provenance.template
        self.template: str = template.name
        self.eos_token_ids: list[int] = sorted(template.eos_token_ids(self.tokenizer))
        self.eval()  # as transformers' from_pretrained leaves a model

    @classmethod
    def from_pretrained(cls, run: str | Path, *, device: str = "auto", backbone: Backbone | None = None,
                        backbone_only: bool = False) -> SideModel:
        """Loads the side network of ``run`` (a run directory, or ``hf://ORG/NAME[@REVISION]``) on the
        backbone its store was extracted from, reloaded exactly (another is refused). Pass
        ``backbone`` (e.g. ``other.backbone``) to share one loaded backbone between side networks;
        ``backbone_only`` gives the backbone alone, the baseline, through the same interface."""
        path = fetch_run(run)
        checkpoint = Checkpoint.load(path)
        wanted = checkpoint.store.provenance.model
        if backbone is None:
            backbone = reload_backbone(wanted, device)
        elif differences := same_backbone(backbone.info, wanted.to_json()):
            raise GenerationArgumentError(f"the backbone passed differs from the one {run} was trained on "
                                          f"({', '.join(differences)}); load it with from_pretrained({str(run)!r})")
        head = FrozenHead(*backbone.head()).to(backbone.device)
        side = None if backbone_only else load_side(path, backbone.device)
        return cls(Pipeline(backbone, head, side, get_codec(checkpoint.store.codec)), checkpoint, path)

    def save_pretrained(self, directory: str | Path) -> None:
        """Writes the side network as a run directory (``side.safetensors`` with its current
        weights, ``side_config.json``) that :meth:`from_pretrained` loads back, as peft saves an
        adapter: never the backbone, which is reloaded from the store's record."""
        if self.side is None:
            raise GenerationArgumentError("the backbone alone has no side network to save; save a run's SideModel")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save(directory, self.side, self.checkpoint)

    @property
    def config(self):
        """The backbone's transformers config (``PeftModel.config`` is its base model's too)."""
        return self.base_model.config

    @property
    def side_config(self) -> SideConfig | None:
        """The side network's settings (None for the backbone alone)."""
        return None if self.side is None else self.checkpoint.side

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    @property
    def dtype(self) -> torch.dtype:
        """The backbone's dtype, as the store was extracted (the side network and head compute in float32)."""
        return self.base_model.dtype

    def _apply(self, fn, recurse: bool = True):
        """``.to(device)``, ``.cuda()``, ``.cpu()``: every submodule moves, and generation follows."""
        super()._apply(fn, recurse)
        self.backbone.device = self.head.weight.device
        return self

    def to(self, *args, **kwargs) -> SideModel:
        """Moves the model to a device; a dtype is refused: the backbone computes as the store was
        extracted and the side network in float32, as trained."""
        if torch._C._nn._parse_to(*args, **kwargs)[1] is not None:
            raise GenerationArgumentError("a SideModel keeps its dtypes (the backbone's as extracted, float32 for "
                                          "the side network): give .to() a device only")
        return super().to(*args, **kwargs)

    def can_generate(self) -> bool:
        """True: transformers' pipelines ask before calling :meth:`generate`."""
        return True

    @property
    def generation_config(self):
        """The defaults of :meth:`generate` as a transformers ``GenerationConfig`` (what
        transformers' pipelines read as the model's own)."""
        from transformers import GenerationConfig

        defaults = by_transformers_names(GenerateConfig())
        unused = () if defaults["do_sample"] else ("temperature", "top_p", "top_k")  # transformers warns of them
        settings = {k: v for k, v in defaults.items() if k not in ("seed", *unused)}
        return GenerationConfig(**settings, eos_token_id=self.eos_token_ids, pad_token_id=self.tokenizer.pad_token_id)

    def format(self, question: str) -> str:
        """The prompt text of ``question`` in the run's own template (plain or the chat template),
        ready for the tokenizer; the answer is generated after it."""
        return format_prompt(self.tokenizer, question, self.template)

    def encode(self, question: str) -> list[int]:
        """The prompt ids of ``question`` exactly as training saw prompts (special prefix included)."""
        return encode_prompt(self.tokenizer, question, self.template)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, past_key_values: dict | None = None,
                use_cache: bool = False) -> SideModelOutput:
        """Logits (B, T, V) of ``input_ids`` (B, T), continuing ``past_key_values`` when given;
        ``attention_mask`` (B, past + T) is 0 on left padding."""
        input_ids = torch.as_tensor(input_ids, device=self.device)
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        caches = past_key_values if past_key_values is not None else self.pipeline.start()
        if attention_mask is None:
            past = caches["backbone"].get_seq_length()
            attention_mask = torch.ones(input_ids.shape[0], past + input_ids.shape[1], dtype=torch.long)
        logits = self.pipeline.step(input_ids, torch.as_tensor(attention_mask, device=self.device), caches)
        return SideModelOutput(logits, caches if use_cache else None)

    def generate(self, input_ids: Tensor | list | None = None, attention_mask: Tensor | None = None,
                 **kwargs) -> Tensor | GenerateDecoderOnlyOutput:
        """Generates after each row of ``input_ids`` (B, T; left or right padding marked by
        ``attention_mask``) and returns the rows followed by their new tokens (B, T + new), padded
        with ``pad_token_id`` after EOS, as transformers does. Arguments, by transformers' names,
        their defaults :class:`~train_side.config.GenerateConfig`'s (as ``train_side eval`` and
        ``generate`` have them): ``max_new_tokens`` or ``max_length``, ``min_new_tokens`` (EOS
        cannot be chosen before that many new tokens), ``do_sample`` (default greedy),
        ``temperature`` (default 1 when sampling, as in transformers), ``top_p``, ``top_k`` (0:
        off), ``repetition_penalty`` (the logits of tokens already in the row, prompt included,
        divided by it where positive and multiplied where negative; 1: off), ``eos_token_id``
        (default: the tokenizer's and the template's; ``[]`` for none), ``pad_token_id``,
        ``streamer`` (a ``TextStreamer``, batch size 1),
        ``generation_config`` (transformers' ``GenerationConfig`` or a ``GenerateConfig``: its
        fields are the defaults of the others), ``seed`` (default: drawn from torch's global
        generator, so ``torch.manual_seed`` makes sampling repeat), ``stop_strings`` (a string or a
        list: a row stops once its new text contains one; a compiled regex serves too, such as
        ``extract.tasks.answers.answer_end(labels)``, the finished answer line where ``train_side
        eval`` stops) and ``return_dict_in_generate`` (then a transformers
        ``GenerateDecoderOnlyOutput`` whose ``sequences`` are what is returned otherwise)."""
        options = self._options(kwargs)
        if input_ids is None and kwargs.get("inputs") is None:
            raise GenerationArgumentError("generate() needs input_ids: the prompt's token ids, e.g. "
                                          "model.tokenizer(model.format(question), return_tensors='pt').input_ids")
        ids = torch.as_tensor(input_ids if input_ids is not None else kwargs.get("inputs"), dtype=torch.long)
        ids = ids[None] if ids.dim() == 1 else ids
        mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask).to(ids.device)
        prompts = [row[keep.bool()].tolist() for row, keep in zip(ids.cpu(), mask.cpu())]
        if not prompts:
            raise GenerationArgumentError("input_ids holds no prompt (an empty batch): give at least one row")
        if not all(prompts):
            raise GenerationArgumentError("a row of input_ids has no real token (its attention_mask is all 0)")
        max_new = options["max_new_tokens"]
        if max_new is None:
            max_length = options["max_length"]
            max_new = GenerateConfig().max_new_tokens if max_length is None else max_length - ids.shape[1]
        sampling = bool(options["do_sample"])
        seed = options["seed"]
        if seed is None:
            seed = int(torch.randint(2**62, (1,))) if sampling else 0
        eos = options["eos_token_id"]
        eos = set(self.eos_token_ids if eos is None else [eos] if isinstance(eos, int) else eos)
        pad = options["pad_token_id"]
        pad = self.tokenizer.pad_token_id if pad is None else pad
        streamer = options["streamer"]
        on_step = None
        if streamer is not None:
            streamer.put(ids.cpu())
            finished = torch.zeros(len(prompts), dtype=torch.bool)

            def on_step(tokens: Tensor) -> None:
                tokens = tokens.cpu().masked_fill(finished, pad)
                streamer.put(tokens)
                finished.logical_or_(torch.tensor([t in eos for t in tokens.tolist()]))

        stops = options["stop_strings"] or []
        stops = [stops] if isinstance(stops, (str, re.Pattern)) else list(stops)

        def stop(tokens: list[int]) -> bool:
            if tokens[-1] in eos:
                return True
            text = self.tokenizer.decode(tokens, skip_special_tokens=True) if stops else ""
            return any(s.search(text) if isinstance(s, re.Pattern) else s in text for s in stops)

        outputs = generate(self.pipeline, prompts, max_new_tokens=max(max_new, 0), pad_id=pad, stop=stop,
                           temperature=float(options["temperature"]) if sampling else 0.0,
                           top_p=float(options["top_p"]), top_k=int(options["top_k"] or 0), seed=seed,
                           min_new_tokens=int(options["min_new_tokens"] or 0),
                           repetition_penalty=float(options["repetition_penalty"]), eos_ids=eos, on_step=on_step)
        if streamer is not None:
            streamer.end()
        width = max(map(len, outputs))
        new = torch.full((len(outputs), width), pad, dtype=torch.long)
        for i, tokens in enumerate(outputs):
            new[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        sequences = torch.cat([ids, new.to(ids.device)], dim=1)
        if options["return_dict_in_generate"]:
            from transformers.generation.utils import GenerateDecoderOnlyOutput

            return GenerateDecoderOnlyOutput(sequences=sequences)
        return sequences

    def _options(self, kwargs: dict) -> dict:
        """The generation settings: explicit arguments over ``generation_config``'s over defaults."""
        kwargs = dict(kwargs)
        kwargs.pop("inputs", None)
        unknown = sorted(set(kwargs) - set(SUPPORTED))
        if unknown:
            raise GenerationArgumentError(f"generate() does not implement {', '.join(unknown)}; it takes "
                                          f"{', '.join(SUPPORTED)}")
        if kwargs.pop("use_cache", True) is False:
            raise GenerationArgumentError("generate() always uses both KV caches; drop use_cache=False")
        options = {**by_transformers_names(GenerateConfig()), "max_new_tokens": None, "max_length": None,
                   "eos_token_id": None, "pad_token_id": None, "streamer": None, "seed": None, "stop_strings": None,
                   "return_dict_in_generate": False}
        config = kwargs.pop("generation_config", None)
        if isinstance(config, GenerateConfig):
            options.update(by_transformers_names(config))
        elif config is not None:
            for key in FROM_GENERATION_CONFIG:
                if getattr(config, key, None) is not None:
                    options[key] = getattr(config, key)
            if getattr(config, "num_beams", 1) not in (None, 1):
                raise GenerationArgumentError("beam search is not implemented; use num_beams=1")
        options.update(kwargs)
        if options["do_sample"] and not options["temperature"] > 0:
            raise GenerationArgumentError("do_sample=True needs temperature > 0; use do_sample=False for greedy")
        if not 0 < options["top_p"] <= 1:
            raise GenerationArgumentError(f"top_p must be in (0, 1], not {options['top_p']}")
        if not options["repetition_penalty"] > 0:
            raise GenerationArgumentError("repetition_penalty must be above 0 (1: off), not "
                                          f"{options['repetition_penalty']}")
        return options
