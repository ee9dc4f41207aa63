"""Stand-in for InternVL2's remote code: ``InternVLChatModel`` / ``InternVLChatConfig``.

What it stands in for: ``modeling_internvl_chat.py`` and ``configuration_internvl_chat.py`` that
the InternVL2 checkpoints (``OpenGVLab/InternVL2-1B`` ... ``-76B``, and SleighVL built on
InternVL2-2B) ship on the Hugging Face hub and load with ``trust_remote_code=True``. That code
cannot be downloaded here, so this module reproduces its interface and the order of operations
at the vision-language seam:

* attributes ``vision_model`` (InternViT: patch embeddings with a CLS token first; its forward
  takes ``pixel_values, output_hidden_states, return_dict`` and returns a ``BaseModelOutput``
  with ``last_hidden_state`` and ``hidden_states``), ``mlp1`` (``LayerNorm(4 * vit_hidden) ->
  Linear -> GELU -> Linear``), ``language_model`` (a causal LM), ``num_image_token``,
  ``select_layer`` (default -1), ``downsample_ratio``, ``ps_version``, ``template``,
  ``img_context_token_id`` (``None`` until ``chat``/``batch_chat`` set it, or the training
  script does);
* ``extract_feature(pixel_values)``: vision model -> drop CLS ``[:, 1:]`` -> square grid ->
  ``pixel_shuffle(0.5)`` -> flatten -> ``mlp1``, giving ``num_image_token`` tokens per tile;
* ``forward(pixel_values, input_ids, attention_mask, position_ids, image_flags, ...)`` (the
  training path): every tile of the batch is encoded, tiles whose ``image_flags`` is 0 (dummy
  images of text-only samples) are dropped, and the rest replace the ``<IMG_CONTEXT>`` token
  embeddings in order;
* ``generate(pixel_values, input_ids, attention_mask, ...)``: the same splice, then
  ``language_model.generate(inputs_embeds=...)``;
* ``chat(tokenizer, pixel_values, question, generation_config, num_patches_list=...)`` and
  ``batch_chat(tokenizer, pixel_values, questions, generation_config, num_patches_list=...)``:
  build the conversation prompt, replace each ``<image>`` by ``<img>`` + ``<IMG_CONTEXT>`` x
  ``num_image_token * tiles`` + ``</img>``, and generate.

Differences from the real code, none at the seam: the vision tower is transformers'
``InternVLVisionModel`` (the same InternViT architecture, ported), the language model is any
transformers causal LM named by ``llm_config["architectures"]`` (the released InternVL2-1B uses
``Qwen2ForCausalLM``; InternVL2-2B's ``InternLM2ForCausalLM`` is itself remote code), the
conversation template is a minimal ``internlm2-chat`` (``<|im_start|>`` / ``<|im_end|>``), and
flash attention, LoRA and the video helpers are left out. Tiles come from the same
closest-aspect-ratio algorithm as InternVL's ``dynamic_preprocess`` (transformers'
``GotOcr2ImageProcessor`` with ``crop_to_patches``: row-major tiles, thumbnail last).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, InternVLVisionConfig, InternVLVisionModel, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling, CausalLMOutputWithPast

IMG_START_TOKEN = "<img>"
IMG_END_TOKEN = "</img>"
IMG_CONTEXT_TOKEN = "<IMG_CONTEXT>"


@dataclass
class Conversation:
    """The MPT-style conversation template of InternVL2's ``internlm2-chat``."""

    name: str = "internlm2-chat"
    system_template: str = "<|im_start|>system\n{system_message}"
    system_message: str = "you are a helpful assistant ."
    roles: tuple[str, str] = ("<|im_start|>user\n", "<|im_start|>assistant\n")
    sep: str = "<|im_end|>"
    messages: list[list[Any]] = field(default_factory=list)

    def append_message(self, role: str, message: str | None) -> None:
        self.messages.append([role, message])

    def get_prompt(self) -> str:
        ret = self.system_template.format(system_message=self.system_message) + self.sep
        for role, message in self.messages:
            ret += role + message + self.sep if message else role
        return ret


def get_conv_template(name: str) -> Conversation:
    return copy.deepcopy(Conversation(name=name))


class InternVLChatConfig(PreTrainedConfig):
    """Mirror of the remote ``InternVLChatConfig`` (``model_type = "internvl_chat"``)."""

    model_type = "internvl_chat"
    sub_configs = {"vision_config": InternVLVisionConfig, "llm_config": AutoConfig}

    def __init__(
        self,
        vision_config: dict[str, Any] | None = None,
        llm_config: dict[str, Any] | None = None,
        select_layer: int = -1,
        force_image_size: int | None = None,
        downsample_ratio: float = 0.5,
        template: str = "internlm2-chat",
        dynamic_image_size: bool = True,
        use_thumbnail: bool = True,
        ps_version: str = "v2",
        min_dynamic_patch: int = 1,
        max_dynamic_patch: int = 12,
        **kwargs: Any,
    ):
        vision_config = vision_config or {}
        llm_config = llm_config or {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}
        self.vision_config = (
            vision_config if isinstance(vision_config, InternVLVisionConfig) else InternVLVisionConfig(**vision_config)
        )
        if isinstance(llm_config, PreTrainedConfig):
            self.llm_config = llm_config
        else:
            llm = dict(llm_config)
            self.llm_config = AutoConfig.for_model(llm.pop("model_type"), **llm)
        self.select_layer = select_layer
        self.force_image_size = force_image_size
        self.downsample_ratio = downsample_ratio
        self.template = template
        self.dynamic_image_size = dynamic_image_size
        self.use_thumbnail = use_thumbnail
        self.ps_version = ps_version
        self.min_dynamic_patch = min_dynamic_patch
        self.max_dynamic_patch = max_dynamic_patch
        super().__init__(**kwargs)


class InternVisionModel(InternVLVisionModel):
    """InternViT with the remote code's forward signature (CLS token first in its outputs)."""

    def forward(  # type: ignore[override]
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        pixel_embeds: torch.Tensor | None = None,
    ) -> BaseModelOutputWithPooling:
        out = super().forward(pixel_values, output_hidden_states=bool(output_hidden_states))
        last = out.last_hidden_state
        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=last[:, 0], hidden_states=out.hidden_states)


class InternVLChatModel(PreTrainedModel):
    """Stand-in for the remote ``InternVLChatModel`` (see the module docstring)."""

    config_class = InternVLChatConfig
    config: InternVLChatConfig
    main_input_name = "pixel_values"
    base_model_prefix = "language_model"
    _no_split_modules = ["InternVLVisionLayer", "Qwen2DecoderLayer", "LlamaDecoderLayer"]

    def __init__(self, config: InternVLChatConfig, vision_model: nn.Module | None = None, language_model: nn.Module | None = None):
        super().__init__(config)
        from transformers import AutoModelForCausalLM

        image_size = config.force_image_size or _edge(config.vision_config.image_size)
        patch_size = _edge(config.vision_config.patch_size)
        self.patch_size = patch_size
        self.select_layer = config.select_layer
        self.template = config.template
        self.num_image_token = int((image_size // patch_size) ** 2 * (config.downsample_ratio**2))
        self.downsample_ratio = config.downsample_ratio
        self.ps_version = config.ps_version
        self.vision_model = vision_model or InternVisionModel(config.vision_config)
        self.language_model = language_model or AutoModelForCausalLM.from_config(config.llm_config)
        vit_hidden_size = config.vision_config.hidden_size
        llm_hidden_size = config.llm_config.hidden_size
        shuffled = vit_hidden_size * int(1 / self.downsample_ratio) ** 2
        self.mlp1 = nn.Sequential(
            nn.LayerNorm(shuffled),
            nn.Linear(shuffled, llm_hidden_size),
            nn.GELU(),
            nn.Linear(llm_hidden_size, llm_hidden_size),
        )
        self.img_context_token_id: int | None = None
        self.conv_template = get_conv_template(self.template)
        self.system_message = self.conv_template.system_message
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # the sub-models initialise themselves; only mlp1 is this class's own
        if isinstance(module, nn.Linear) and any(module is m for m in self.mlp1):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    # --- the seam ------------------------------------------------------------------------
    def pixel_shuffle(self, x: torch.Tensor, scale_factor: float = 0.5) -> torch.Tensor:
        n, w, h, c = x.size()
        x = x.view(n, w, int(h * scale_factor), int(c / scale_factor))
        x = x.permute(0, 2, 1, 3).contiguous()
        x = x.view(n, int(h * scale_factor), int(w * scale_factor), int(c / (scale_factor * scale_factor)))
        if self.ps_version != "v1":
            x = x.permute(0, 2, 1, 3).contiguous()
        return x

    def extract_feature(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.select_layer == -1:
            vit_embeds = self.vision_model(
                pixel_values=pixel_values, output_hidden_states=False, return_dict=True
            ).last_hidden_state
        else:
            vit_embeds = self.vision_model(
                pixel_values=pixel_values, output_hidden_states=True, return_dict=True
            ).hidden_states[self.select_layer]
        vit_embeds = vit_embeds[:, 1:, :]
        h = w = int(vit_embeds.shape[1] ** 0.5)
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], h, w, -1)
        vit_embeds = self.pixel_shuffle(vit_embeds, scale_factor=self.downsample_ratio)
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], -1, vit_embeds.shape[-1])
        return self.mlp1(vit_embeds)

    def _splice(self, input_ids: torch.Tensor, vit_embeds: torch.Tensor) -> torch.Tensor:
        input_embeds = self.language_model.get_input_embeddings()(input_ids).clone()
        b, n, c = input_embeds.shape
        input_embeds = input_embeds.reshape(b * n, c)
        selected = input_ids.reshape(b * n) == self.img_context_token_id
        if int(selected.sum()) != vit_embeds.shape[0] * vit_embeds.shape[1]:
            raise ValueError(
                f"{int(selected.sum())} image-context tokens in input_ids but {vit_embeds.shape[0]} tiles x "
                f"{vit_embeds.shape[1]} tokens of image features"
            )
        input_embeds[selected] = input_embeds[selected] * 0.0 + vit_embeds.reshape(-1, c).to(input_embeds.dtype)
        return input_embeds.reshape(b, n, c)

    def forward(
        self,
        pixel_values: torch.FloatTensor,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        image_flags: torch.LongTensor | None = None,
        past_key_values: Any = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> CausalLMOutputWithPast:
        if image_flags is None:
            image_flags = torch.ones(pixel_values.shape[0], dtype=torch.long, device=pixel_values.device)
        image_flags = image_flags.squeeze(-1)
        vit_embeds = self.extract_feature(pixel_values)
        vit_embeds = vit_embeds[image_flags == 1]
        input_embeds = self._splice(input_ids, vit_embeds)
        # transformers 5 renamed `past_key_values` to `cache`; pass it only when there is one
        cache = {} if past_key_values is None else {"past_key_values": past_key_values}
        outputs = self.language_model(
            inputs_embeds=input_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **cache,
        )
        logits = outputs.logits
        loss = None
        if labels is not None:
            shift_logits = logits[..., :-1, :].contiguous().view(-1, logits.shape[-1])
            shift_labels = labels[..., 1:].contiguous().view(-1).to(shift_logits.device)
            loss = nn.functional.cross_entropy(shift_logits.float(), shift_labels, ignore_index=-100)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        visual_features: torch.FloatTensor | None = None,
        generation_config: Any = None,
        output_hidden_states: bool | None = None,
        **generate_kwargs: Any,
    ) -> torch.LongTensor:
        if self.img_context_token_id is None:
            raise ValueError("img_context_token_id is not set: call chat()/batch_chat() or set it from the tokenizer")
        if pixel_values is not None:
            vit_embeds = visual_features if visual_features is not None else self.extract_feature(pixel_values)
            input_embeds = self._splice(input_ids, vit_embeds)
        else:
            input_embeds = self.language_model.get_input_embeddings()(input_ids)
        return self.language_model.generate(
            inputs_embeds=input_embeds,
            attention_mask=attention_mask,
            generation_config=generation_config,
            output_hidden_states=output_hidden_states,
            use_cache=True,
            **generate_kwargs,
        )

    # --- conversation ------------------------------------------------------------------------
    def _query(self, question: str, num_patches_list: list[int]) -> tuple[str, Conversation]:
        template = get_conv_template(self.template)
        template.system_message = self.system_message
        template.append_message(template.roles[0], question)
        template.append_message(template.roles[1], None)
        query = template.get_prompt()
        for num_patches in num_patches_list:
            image_tokens = IMG_START_TOKEN + IMG_CONTEXT_TOKEN * self.num_image_token * num_patches + IMG_END_TOKEN
            query = query.replace("<image>", image_tokens, 1)
        return query, template

    def chat(
        self,
        tokenizer: Any,
        pixel_values: torch.Tensor | None,
        question: str,
        generation_config: dict[str, Any],
        history: list[tuple[str, str]] | None = None,
        return_history: bool = False,
        num_patches_list: list[int] | None = None,
        IMG_START_TOKEN: str = IMG_START_TOKEN,  # noqa: N803 - the remote code's argument names
        IMG_END_TOKEN: str = IMG_END_TOKEN,  # noqa: N803
        IMG_CONTEXT_TOKEN: str = IMG_CONTEXT_TOKEN,  # noqa: N803
        verbose: bool = False,
    ) -> Any:
        if history is None and pixel_values is not None and "<image>" not in question:
            question = "<image>\n" + question
        if num_patches_list is None:
            num_patches_list = [pixel_values.shape[0]] if pixel_values is not None else []
        if pixel_values is not None and len(pixel_values) != sum(num_patches_list):
            raise ValueError(f"num_patches_list sums to {sum(num_patches_list)} but pixel_values holds {len(pixel_values)} tiles")
        self.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        query, template = self._query(question, num_patches_list)
        model_inputs = tokenizer(query, return_tensors="pt")
        generation_config = dict(generation_config, eos_token_id=tokenizer.convert_tokens_to_ids(template.sep.strip()))
        output = self.generate(
            pixel_values=pixel_values,
            input_ids=model_inputs["input_ids"].to(self.device),
            attention_mask=model_inputs["attention_mask"].to(self.device),
            **generation_config,
        )
        response = tokenizer.batch_decode(output, skip_special_tokens=True)[0].split(template.sep.strip())[0].strip()
        history = list(history or []) + [(question, response)]
        return (response, history) if return_history else response

    def batch_chat(
        self,
        tokenizer: Any,
        pixel_values: torch.Tensor | None,
        questions: list[str],
        generation_config: dict[str, Any],
        num_patches_list: list[int] | None = None,
        history: Any = None,
        return_history: bool = False,
        IMG_START_TOKEN: str = IMG_START_TOKEN,  # noqa: N803
        IMG_END_TOKEN: str = IMG_END_TOKEN,  # noqa: N803
        IMG_CONTEXT_TOKEN: str = IMG_CONTEXT_TOKEN,  # noqa: N803
        verbose: bool = False,
        image_counts: list[int] | None = None,
    ) -> list[str]:
        if history is not None or return_history:
            raise ValueError("batch_chat does not take a history")
        if image_counts is not None:
            num_patches_list = image_counts
        self.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        queries = []
        for idx, num_patches in enumerate(num_patches_list or []):
            question = questions[idx]
            if pixel_values is not None and "<image>" not in question:
                question = "<image>\n" + question
            query, template = self._query(question, [num_patches])
            queries.append(query)
        tokenizer.padding_side = "left"
        model_inputs = tokenizer(queries, return_tensors="pt", padding=True)
        generation_config = dict(generation_config, eos_token_id=tokenizer.convert_tokens_to_ids(template.sep.strip()))
        output = self.generate(
            pixel_values=pixel_values,
            input_ids=model_inputs["input_ids"].to(self.device),
            attention_mask=model_inputs["attention_mask"].to(self.device),
            **generation_config,
        )
        responses = tokenizer.batch_decode(output, skip_special_tokens=True)
        return [r.split(template.sep.strip())[0].strip() for r in responses]


def _edge(size: Any) -> int:
    return int(size[0] if isinstance(size, (list, tuple)) else size)
