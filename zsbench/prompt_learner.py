"""Learnable text prompts: context vectors and deep text prompts (AnomalyCLIP family, CoOp, CoCoOp).

A prompt is ``[SOT] ctx_1 .. ctx_n <template words> [EOT]``: the template is tokenized after n
placeholder words ``X`` whose token embeddings are replaced by learnable context vectors. Deep
prompts replace the hidden states at positions 1..length before text blocks 2..depth (1-indexed),
shared by all prompts (METHODS.md section 0).

Context vectors come in three layouts:

- one tensor per prompt: ``ctx`` ``[n_prompts, n_ctx, W]`` (default);
- one tensor shared by every prompt: ``ctx`` ``[n_ctx, W]`` (``shared_ctx=True``);
- named groups concatenated per prompt (``ctx_groups``), e.g. FAPrompt's compound prompts, where
  every abnormal prompt is ``[5 shared normal ctx] + [2 own ctx]``::

      groups = [[("normal", 5)]] + [[("normal", 5), (f"abnormal{i}", 2)] for i in range(10)]
      PromptLearner(bb, ["object."] + ["damaged object."] * 10, ctx_groups=groups)

  The groups are parameters ``ctx_group.<name>`` ``[length, W]``.

Upstream AnomalyCLIP checkpoints (``{"prompt_learner": state}``) map as ``ctx_pos`` [1, 1, 12, W]
-> ``ctx[0]`` (template "object."), ``ctx_neg`` -> ``ctx[1]`` ("damaged object."),
``compound_prompts_text.{i}`` [4, W] -> ``deep_prompts.{i}``; the unused
``compound_prompt_projections.*`` and token buffers are ignored
(:meth:`PromptLearner.load_anomalyclip_state_dict`).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence

import torch
from torch import Tensor, nn

from zsbench.backbone import Backbone

logger = logging.getLogger(__name__)

PLACEHOLDER_WORD = "X"
CtxGroups = Sequence[Sequence[tuple[str, int]]]


class PromptLearner(nn.Module):
    """Learnable context vectors and deep text prompts over the shared (frozen) backbone.

    Args:
        backbone: the shared backbone (not registered as a submodule: its weights stay out of
            this module's parameters and state dict).
        templates: one text per prompt, e.g. ``["object.", "damaged object."]``; a ``{}`` is
            filled with the class name given to :meth:`forward`.
        n_ctx: context vectors per prompt (ignored with ``ctx_groups``).
        shared_ctx: one context tensor for all prompts.
        deep_prompt_depth: deep prompts act before text blocks 2..depth; depth <= 1 means none.
        deep_prompt_length: positions 1..length replaced by each deep prompt.
        init_std: standard deviation of the normal initialisation of all parameters.
        deep_prompt_fp16_cast: round deep prompts through fp16 as upstream AnomalyCLIP does (a
            quirk): each is expanded to one copy per encoded prompt and *then* cast
            (``AnomalyCLIP_lib/AnomalyCLIP.py``: ``.expand(...).permute(1, 0, 2).half()``), so the
            gradient of every copy is rounded to fp16 before the copies are summed.
        ctx_groups: per prompt, the ordered ``(group name, length)`` pieces of its context; a name
            used by several prompts is one shared parameter.
    """

    def __init__(self, backbone: Backbone, templates: Sequence[str], n_ctx: int = 12,
                 shared_ctx: bool = False, deep_prompt_depth: int = 9, deep_prompt_length: int = 4,
                 init_std: float = 0.02, deep_prompt_fp16_cast: bool = False,
                 ctx_groups: CtxGroups | None = None):
        super().__init__()
        if isinstance(templates, str) or not templates:
            raise ValueError(f"templates must be a non-empty list of strings, got {templates!r}")
        self.__dict__["backbone"] = backbone  # plain attribute: not a submodule
        self.templates = list(templates)
        self.shared_ctx = shared_ctx
        self.deep_prompt_fp16_cast = deep_prompt_fp16_cast
        width, device = backbone.text_width, backbone.device

        def normal(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, device=device) * init_std)

        self.ctx: nn.Parameter | None = None
        self.ctx_group = nn.ParameterDict()
        self.group_layout: list[list[str]] | None = None
        if ctx_groups is not None:
            if shared_ctx:
                raise ValueError("shared_ctx and ctx_groups are exclusive")
            if len(ctx_groups) != len(self.templates):
                raise ValueError(f"ctx_groups has {len(ctx_groups)} entries for "
                                 f"{len(self.templates)} templates")
            lengths: dict[str, int] = {}
            for pieces in ctx_groups:
                for group, length in pieces:
                    if lengths.setdefault(group, length) != length or length < 1:
                        raise ValueError(f"ctx group {group!r} has inconsistent or non-positive "
                                         f"lengths ({lengths[group]} and {length})")
            for group, length in lengths.items():
                self.ctx_group[group] = normal(length, width)
            self.group_layout = [[group for group, _ in pieces] for pieces in ctx_groups]
            self.n_ctx = [sum(length for _, length in pieces) for pieces in ctx_groups]
        else:
            if n_ctx < 1:
                raise ValueError(f"n_ctx must be >= 1, got {n_ctx}")
            self.ctx = normal(n_ctx, width) if shared_ctx else normal(len(self.templates), n_ctx,
                                                                     width)
            self.n_ctx = [n_ctx] * len(self.templates)

        if deep_prompt_depth > backbone.text_layers:
            raise ValueError(f"deep_prompt_depth {deep_prompt_depth} exceeds the "
                             f"{backbone.text_layers} text layers of {backbone.name!r}")
        if deep_prompt_depth > 1 and deep_prompt_length < 1:
            raise ValueError(f"deep_prompt_length must be >= 1, got {deep_prompt_length}")
        self.deep_prompts = nn.ParameterList(
            [normal(deep_prompt_length, width) for _ in range(max(deep_prompt_depth - 1, 0))])
        self._placeholder_id = int(backbone.tokenize([PLACEHOLDER_WORD])[0, 1])
        self._ids_cache: dict[tuple[str, int], Tensor] = {}

    @property
    def n_prompts(self) -> int:
        return len(self.templates)

    def prompt_texts(self, class_name: str | None = None) -> list[str]:
        """The tokenized strings, placeholders included (for ``methods info`` and logs)."""
        return [self._full_text(template, n, class_name)
                for template, n in zip(self.templates, self.n_ctx, strict=True)]

    @staticmethod
    def _full_text(template: str, n_ctx: int, class_name: str | None) -> str:
        if "{}" in template:
            if class_name is None:
                raise ValueError(f"template {template!r} needs a class name: pass class_names")
            template = template.format(class_name)
        return " ".join([PLACEHOLDER_WORD] * n_ctx + [template])

    def _token_ids(self, text: str, n_ctx: int) -> Tensor:
        key = (text, n_ctx)
        if key not in self._ids_cache:
            ids = self.backbone.tokenize([text])[0].cpu()
            if ids[-1] != 0:  # no padding left: the tokenizer may have truncated the text
                raise ValueError(f"prompt {text!r} fills or exceeds the context length "
                                 f"{ids.shape[0]}")
            if not torch.all(ids[1:1 + n_ctx] == self._placeholder_id):
                raise ValueError(f"prompt {text!r} does not start with {n_ctx} placeholder "
                                 f"tokens: choose a template that does not merge with "
                                 f"{PLACEHOLDER_WORD!r}")
            self._ids_cache[key] = ids
        return self._ids_cache[key]

    def context_vectors(self) -> list[Tensor]:
        """Context vectors ``[n_ctx_i, W]`` of each prompt (groups concatenated)."""
        if self.group_layout is not None:
            return [torch.cat([self.ctx_group[g] for g in groups], dim=0)
                    for groups in self.group_layout]
        if self.shared_ctx:
            return [self.ctx] * self.n_prompts
        return list(self.ctx.unbind(0))

    def deep_prompt_values(self) -> list[Tensor]:
        """The values of the deep prompts as used, ``[n, W]`` each (rounded through fp16 with
        ``deep_prompt_fp16_cast``); for inspection: :meth:`forward` feeds the backbone
        :meth:`deep_prompt_inputs`, which have these values."""
        if self.deep_prompt_fp16_cast:
            return [p.half().to(p.dtype) for p in self.deep_prompts]
        return list(self.deep_prompts)

    def deep_prompt_inputs(self, n_prompts: int) -> list[Tensor]:
        """The deep prompts as :meth:`Backbone.encode_text` receives them for ``n_prompts``
        encoded prompts.

        Without ``deep_prompt_fp16_cast``: the ``[n, W]`` parameters (the backbone shares them
        across prompts). With it: upstream's order, expanded to ``[n_prompts, n, W]`` first and
        then cast to fp16 (``AnomalyCLIP_lib/AnomalyCLIP.py``: ``textual_context.expand(
        x.shape[1], -1, -1).permute(1, 0, 2).half()``); the backbone casts back to its
        activation dtype. The forward values equal :meth:`deep_prompt_values`, but the backward
        rounds each prompt's gradient to fp16 before the expansion sums them, as upstream
        (casting before the expansion would round the sum instead)."""
        if not self.deep_prompt_fp16_cast:
            return list(self.deep_prompts)
        return [p.unsqueeze(0).expand(n_prompts, -1, -1).half() for p in self.deep_prompts]

    def forward(self, class_names: Sequence[str] | None = None, ctx_bias: Tensor | None = None,
                prompts: Sequence[int] | None = None,
                ctx_bias_groups: Collection[str] | None = None,
                text_projection: Tensor | None = None) -> Tensor:
        """Unnormalised text embeddings of the prompts.

        Args:
            class_names: C words filling the ``{}`` of the templates (adds a class dimension).
            ctx_bias: ``[W]`` or per-image ``[B, W]``, added to every context vector (CoCoOp
                meta-net, FAPrompt prior); ``[B, W]`` adds a leading batch dimension.
            prompts: indices of the prompts to encode (default: all, in order).
            ctx_bias_groups: with ``ctx_groups``, add ``ctx_bias`` only to the context pieces of
                these groups (FAPrompt biases each abnormal prompt's own ctx, not the shared
                normal ctx); default: every context vector.
            text_projection: a projection used instead of the text tower's own (see
                :meth:`Backbone.encode_text`).

        Returns:
            ``[([B,] [C,] P, embed_dim)]``: ``[P, D]``, ``[C, P, D]``, ``[B, P, D]`` or
            ``[B, C, P, D]``.
        """
        selected, batch_shape, names = self._forward_arguments(class_names, ctx_bias, prompts,
                                                               ctx_bias_groups)
        contexts = self.context_vectors()
        device = contexts[0].device
        all_ids, all_embeddings = [], []
        for index in selected:
            n_ctx = self.n_ctx[index]
            ids = torch.stack([self._token_ids(self._full_text(self.templates[index], n_ctx, name),
                                               n_ctx) for name in names]).to(device)
            ctx = self._biased_context(index, contexts[index], ctx_bias, ctx_bias_groups)
            all_ids.append(ids)
            all_embeddings.append(self._splice_context(ids, ctx, (*batch_shape, len(names))))
        encoded = self._encode(torch.stack(all_ids, dim=1),  # [C, P, L]
                               torch.stack(all_embeddings, dim=-3),  # [*batch, C, P, L, W]
                               batch_shape, text_projection)
        return encoded if class_names is not None else encoded.squeeze(-3)

    def _forward_arguments(self, class_names: Sequence[str] | None, ctx_bias: Tensor | None,
                           prompts: Sequence[int] | None,
                           ctx_bias_groups: Collection[str] | None
                           ) -> tuple[list[int], tuple[int, ...], list[str | None]]:
        """The checked arguments of :meth:`forward`: the selected prompt indices, the batch
        shape of ``ctx_bias`` (``()`` or ``(B,)``) and the class names (``[None]`` without)."""
        selected = list(range(self.n_prompts)) if prompts is None else [int(i) for i in prompts]
        if not selected or any(not 0 <= i < self.n_prompts for i in selected):
            raise ValueError(f"prompts {prompts!r} must be indices in 0..{self.n_prompts - 1}")
        width = self.backbone.text_width
        batch_shape: tuple[int, ...] = ()
        if ctx_bias is not None:
            if ctx_bias.ndim not in (1, 2) or ctx_bias.shape[-1] != width:
                raise ValueError(f"ctx_bias must have shape [{width}] or [B, {width}], got "
                                 f"{tuple(ctx_bias.shape)}")
            batch_shape = tuple(ctx_bias.shape[:-1])
        if ctx_bias_groups is not None:
            unknown = sorted(set(ctx_bias_groups) - set(self.ctx_group))
            if self.group_layout is None or unknown:
                raise ValueError(f"ctx_bias_groups {sorted(ctx_bias_groups)!r} needs a learner "
                                 f"with these ctx groups (unknown: {unknown})")
        names: list[str | None] = [None] if class_names is None else list(class_names)
        if class_names is not None and (isinstance(class_names, str) or not names):
            raise ValueError(f"class_names must be a non-empty list of words, got {class_names!r}")
        return selected, batch_shape, names

    def _biased_context(self, index: int, ctx: Tensor, ctx_bias: Tensor | None,
                        groups: Collection[str] | None) -> Tensor:
        """Prompt ``index``'s context ``[n, W]`` plus ``ctx_bias`` (on the positions of
        ``groups`` only, when given): ``[*batch, n, W]``."""
        if ctx_bias is None:
            return ctx
        bias = ctx_bias.unsqueeze(-2).to(ctx.dtype)  # [*batch, 1, W]
        if groups is not None:
            bias = bias * self._group_mask(index, groups).to(ctx)  # [*batch, n, W]
        return ctx + bias  # [*batch, n, W]

    def _splice_context(self, ids: Tensor, ctx: Tensor, full_shape: tuple[int, ...]) -> Tensor:
        """Token embeddings ``[*full_shape, L, W]`` of ``ids`` ``[C, L]`` with the placeholder
        positions ``1..n`` replaced by the context ``ctx`` (``[*batch, n, W]``)."""
        width, n_ctx = self.backbone.text_width, ctx.shape[-2]
        tokens = self.backbone.token_embedding(ids)  # [C, L, W]
        ctx = ctx.unsqueeze(-3).expand(*full_shape, n_ctx, width)
        return torch.cat([tokens[:, :1].expand(*full_shape, 1, width), ctx,
                          tokens[:, 1 + n_ctx:].expand(*full_shape, -1, width)], dim=-2)

    def _encode(self, ids: Tensor, embeddings: Tensor, batch_shape: tuple[int, ...],
                text_projection: Tensor | None = None) -> Tensor:
        """Encode ``[*batch, C, P, L, W]`` embeddings of ``[C, P, L]`` ids (with the deep
        prompts): ``[*batch, C, P, embed_dim]``."""
        length, width = ids.shape[-1], embeddings.shape[-1]
        flat_ids = ids.expand(*batch_shape, *ids.shape).reshape(-1, length)
        encoded = self.backbone.encode_text(flat_ids, embeddings.reshape(-1, length, width),
                                            self.deep_prompt_inputs(flat_ids.shape[0]),
                                            text_projection=text_projection)
        return encoded.reshape(*batch_shape, *ids.shape[:2], -1)

    def _group_mask(self, index: int, groups: Collection[str]) -> Tensor:
        """``[n_ctx_i, 1]``: 1 at the context positions of prompt ``index`` from ``groups``."""
        assert self.group_layout is not None
        mask = torch.cat([torch.full((self.ctx_group[g].shape[0], 1), float(g in groups))
                          for g in self.group_layout[index]])
        return mask

    def load_anomalyclip_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Load an upstream AnomalyCLIP prompt-learner state (``ctx_pos``, ``ctx_neg``,
        ``compound_prompts_text.{i}``); the unused projections and token buffers are ignored."""
        if "prompt_learner" in state and isinstance(state["prompt_learner"], Mapping):
            state = state["prompt_learner"]
        if self.ctx is None or self.shared_ctx or self.n_prompts != 2:
            raise ValueError("an AnomalyCLIP state needs a learner with 2 prompts "
                             "(normal, abnormal) and per-prompt ctx")
        missing = [k for k in ("ctx_pos", "ctx_neg") if k not in state]
        deep_keys = sorted((k for k in state if k.startswith("compound_prompts_text.")),
                           key=lambda k: int(k.rsplit(".", 1)[1]))
        if missing or len(deep_keys) != len(self.deep_prompts):
            raise ValueError(f"AnomalyCLIP state does not fit: missing {missing}, "
                             f"{len(deep_keys)} deep prompts for {len(self.deep_prompts)}")
        ctx = torch.cat([state["ctx_pos"].reshape(1, *self.ctx.shape[1:]),
                         state["ctx_neg"].reshape(1, *self.ctx.shape[1:])])
        with torch.no_grad():
            self.ctx.copy_(ctx)
            for parameter, key in zip(self.deep_prompts, deep_keys, strict=True):
                if state[key].shape != parameter.shape:
                    raise ValueError(f"{key} has shape {tuple(state[key].shape)}, expected "
                                     f"{tuple(parameter.shape)}")
                parameter.copy_(state[key])
