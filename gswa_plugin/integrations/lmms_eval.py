"""lmms-eval models with GSWA: ``lmms-eval --model gswa_<family> --model_args pretrained=...,gswa=...``.

lmms-eval finds these models through its entry-point group ``lmms_eval.models``; this package
publishes ``manifests`` there (see ``pyproject.toml``), so installing gswa-plugin next to
lmms-eval is enough::

    lmms-eval --model gswa_internvl \\
        --model_args pretrained=OpenGVLab/InternVL3-2B-hf,gswa=runs/gswa,max_tiles=12 \\
        --tasks mme,ocrbench,realworldqa --device cuda --batch_size 1

Model arguments (``--model_args``, comma-separated ``key=value``):

* ``pretrained``: the host checkpoint (local directory or hub id).
* ``gswa``: a saved GSWA directory, a YAML with a ``gswa:`` block, ``default`` (the packaged
  training-free ``cosine``), or ``none`` to evaluate the same host without GSWA (the baseline,
  in the same run setup). Required, so that a table never mixes up the two.
* ``max_tiles``: tile cap per image (changes scores; InternVL's ``max_patches``, the anyres
  grids of LLaVA-NeXT/OneVision); the checkpoint's own setting when unset.
* ``dtype`` (``float32``, ``bfloat16``, ...), ``max_new_tokens`` (caps the task's value).
* ``keep`` (a fraction such as ``0.5``, or a token count per image) and ``budget_method``
  (``gswa``, ``uniform``, ``random``, ``globalcom``): the token budget (docs page 'Token budget');
  needs a GSWA (not ``gswa=none``).
* ``remove_k``, ``remove_by``, ``remove_which``, ``remove_threshold``, ``remove_mode``: the tile
  removal experiment ([`gswa_plugin.tools.inspect.RemovalSpec`][gswa_plugin.tools.inspect.RemovalSpec]).

The families differ only in which hosts they accept; ``gswa_hf`` takes any model with a
registered GSWA adapter. Requests are answered one at a time (``batch_size`` is accepted and
processed sequentially). Only ``generate_until`` tasks are supported, which covers MME,
OCRBench and RealWorldQA; a generation error is raised, never turned into an empty answer.
"""

from __future__ import annotations

import time
from typing import Any, List

import torch
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from lmms_eval.protocol import ChatMessages
from tqdm.auto import tqdm

from gswa_plugin.errors import GSWAError, UnsupportedRequestError, WrongFamilyError
from gswa_plugin.tools.hosts import enable_gswa, gswa_source_kind, load_pretrained, on_model, set_tile_cap
from gswa_plugin.tools.inspect import RemovalSpec, run_with_removal


class GSWALmms(lmms):
    """A transformers image-text-to-text host with GSWA, answering lmms-eval chat requests.

    Attributes:
        families: ``config.model_type`` values this model accepts (empty: any).
    """

    is_simple = False
    families: tuple[str, ...] = ()

    def __init__(
        self,
        pretrained: str,
        gswa: str | None = None,
        max_tiles: int | None = None,
        dtype: str = "float32",
        device: str = "cpu",
        batch_size: int | str = 1,
        max_new_tokens: int | None = None,
        remove_k: int = 0,
        remove_by: str = "weight",
        remove_which: str = "highest",
        remove_threshold: float | None = None,
        remove_mode: str = "zero",
        keep: float | int | str | None = None,
        budget_method: str = "gswa",
        **kwargs: Any,
    ) -> None:
        super().__init__()
        kwargs.pop("max_batch_size", None)
        if kwargs:
            raise TypeError(
                f"unknown model_args for {type(self).__name__}: {', '.join(sorted(kwargs))}; see "
                "`gswa_plugin.integrations.lmms_eval` for the accepted ones"
            )
        if gswa is None:
            raise GSWAError(
                "say which GSWA to evaluate: --model_args ...,gswa=DIR (a saved GSWA), gswa=FILE.yaml, "
                "gswa=default (training-free cosine) or gswa=none (the host without GSWA, the baseline)"
            )
        gswa = str(gswa)
        gswa_source_kind(gswa)  # a bad path fails before the model loads
        self.pretrained = str(pretrained)
        self._device = torch.device(device)
        self.batch_size_per_gpu = int(batch_size)
        self.max_new_tokens = None if max_new_tokens is None else int(max_new_tokens)
        self.removal = RemovalSpec(
            k=int(remove_k),
            by=str(remove_by),
            which=str(remove_which),
            threshold=None if remove_threshold is None else float(remove_threshold),
            mode=str(remove_mode),
        )
        self._model, self.processor = load_pretrained(self.pretrained, dtype=dtype, device=device)
        mtype = getattr(self._model.config, "model_type", None)
        if self.families and mtype not in self.families:
            raise WrongFamilyError(
                f"{self.pretrained} is a {mtype!r} model but this lmms-eval model takes {', '.join(self.families)}; "
                "use --model gswa_hf (any family with a GSWA adapter) or the matching gswa_<family>"
            )
        set_tile_cap(self._model, self.processor, None if max_tiles is None else int(max_tiles))
        self.handle = enable_gswa(self._model, gswa)
        if self.handle is None and self.removal.active:
            raise GSWAError("tile removal ranks tiles by GSWA: it needs gswa=DIR/YAML/default, not gswa=none")
        if keep is not None:
            if self.handle is None:
                raise GSWAError("the token budget (keep=...) is chosen by GSWA: it needs gswa=DIR/YAML/default, not gswa=none")
            from gswa_plugin.api import set_budget
            from gswa_plugin.budget import parse_keep

            set_budget(self._model, {"keep": parse_keep(keep), "method": str(budget_method)})
        self.gswa = gswa
        self._tokenizer = getattr(self.processor, "tokenizer", self.processor)

    # --- properties lmms-eval reads ------------------------------------------------------------
    @property
    def model(self) -> torch.nn.Module:
        return self._model

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def config(self) -> Any:
        return self._model.config

    # --- requests ---------------------------------------------------------------------------
    def _prompt(self, messages: list[dict[str, Any]], n_images: int) -> str:
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # no chat template (e.g. a bare checkpoint): image tokens, then the text of the turns
        token = getattr(self.processor, "image_token", "<image>")
        text = " ".join(c["text"] for m in messages for c in m["content"] if c.get("type") == "text")
        return " ".join([token] * n_images + [text])

    def _inputs(self, images: list[Any], text: str) -> dict[str, Any]:
        return on_model(self._model, self.processor(text=[text], images=images or None, return_tensors="pt"))

    def generate_until(self, requests: List[Instance]) -> List[GenerationResult]:
        """Answer each request greedily (or as its ``generation_kwargs`` say)."""
        results: List[GenerationResult] = []
        for request in tqdm(requests, desc="gswa: answering", disable=self.rank != 0):
            ctx, doc_to_messages, gen_kwargs, doc_id, task, split = request.args
            doc = self.task_dict[task][split][doc_id]
            chat = ChatMessages(messages=doc_to_messages(doc))
            images, videos, audios = chat.extract_media()
            if videos or audios:
                raise UnsupportedRequestError(
                    f"task {task!r} sends video or audio; the gswa models answer image tasks only"
                )
            text = self._prompt(chat.model_dump()["messages"], len(images))
            inputs = self._inputs(images, text)
            kwargs = dict(gen_kwargs or {})
            new_tokens = int(kwargs.get("max_new_tokens", 128))
            if self.max_new_tokens is not None:
                new_tokens = min(new_tokens, self.max_new_tokens)
            temperature = float(kwargs.get("temperature", 0) or 0)
            generate = {
                "max_new_tokens": new_tokens,
                "do_sample": temperature > 0,
                "num_beams": int(kwargs.get("num_beams", 1) or 1),
                "pad_token_id": self._tokenizer.pad_token_id,
                "eos_token_id": self._tokenizer.eos_token_id,
            }
            if temperature > 0:
                generate["temperature"] = temperature
                if kwargs.get("top_p") is not None:
                    generate["top_p"] = float(kwargs["top_p"])
            start = time.time()
            if images and self.removal.active:
                out, _, feed = run_with_removal(self._model, inputs, self.removal, generate)
            else:
                with torch.no_grad():
                    out = self._model.generate(**inputs, **generate)
                feed = inputs
            new = out[0, feed["input_ids"].shape[1] :]
            answer = self._tokenizer.decode(new, skip_special_tokens=True)
            for stop in kwargs.get("until") or []:
                if isinstance(stop, str) and stop and stop in answer:
                    answer = answer.split(stop, 1)[0]
            self.cache_hook.add_partial("generate_until", (ctx, gen_kwargs), answer)
            results.append(GenerationResult(text=answer, token_counts=TokenCounts(output_tokens=int(new.numel()))))
            self.last_elapsed = time.time() - start
        return results

    def loglikelihood(self, requests: List[Instance]) -> List[tuple[float, bool]]:
        """Not answered: the gswa models evaluate ``generate_until`` tasks."""
        raise UnsupportedRequestError(
            "the gswa lmms-eval models answer generate_until tasks (MME, OCRBench, RealWorldQA, ...), not "
            "loglikelihood (multiple-choice by likelihood) tasks; pick the task's generation variant"
        )

    def generate_until_multi_round(self, requests: List[Instance]) -> List[str]:
        """Not answered: the gswa models evaluate single-turn ``generate_until`` tasks."""
        raise UnsupportedRequestError("the gswa lmms-eval models answer single-turn generate_until tasks only")


class GSWAInternVL(GSWALmms):
    """Native transformers InternVL (``InternVLForConditionalGeneration``: InternVL2.5/3 ``-hf``,
    InternVL2 converted with ``gswa convert-internvl2``). ``max_tiles`` is InternVL's ``max_patches``."""

    families = ("internvl",)


class GSWALlavaNext(GSWALmms):
    """LLaVA-NeXT (``LlavaNextForConditionalGeneration``). ``max_tiles`` keeps the anyres grids
    with at most that many tiles."""

    families = ("llava_next",)


class GSWALlavaOneVision(GSWALmms):
    """LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``). ``max_tiles`` keeps the
    anyres grids with at most that many tiles."""

    families = ("llava_onevision",)


class GSWAAuto(GSWALmms):
    """Any image-text-to-text host with a registered GSWA adapter (chosen by ``enable()``)."""

    families = ()


#: lmms-eval model name -> class, published through the entry point.
MODELS: dict[str, type[GSWALmms]] = {
    "gswa_internvl": GSWAInternVL,
    "gswa_llava_next": GSWALlavaNext,
    "gswa_llava_onevision": GSWALlavaOneVision,
    "gswa_hf": GSWAAuto,
}


def manifests() -> list[ModelManifest]:
    """What lmms-eval's ``lmms_eval.models`` entry point loads: one manifest per gswa model."""
    return [ModelManifest(model_id=name, chat_class_path=f"{__name__}.{cls.__name__}") for name, cls in MODELS.items()]
