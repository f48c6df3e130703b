"""Block hooks: how a method extends the backbone's towers without editing them.

Both towers run block by block (:meth:`Backbone.encode_image`, :meth:`Backbone.encode_text`).
A :class:`BlockHooks` passed to them is called around every residual block with the
1-indexed block number and the batch-first hidden states ``[B, T, width]``:

- ``before(layer, hidden)`` runs before block ``layer``; it may return new hidden states
  (e.g. learnable tokens appended to the vision sequence, as AdaCLIP's prompts, or text
  positions replaced, as deep text prompts) or ``None`` to leave them unchanged;
- ``after(layer, hidden)`` runs after block ``layer`` with the same contract (e.g. a residual
  adapter on the patch tokens, or a method that records the CLS token of a layer);
- ``replace(layer, block, hidden, attn_mask)`` runs *instead of* block ``layer`` when it returns
  hidden states (``None``: the block runs as usual), e.g. a block recomputed with V-V attention
  from the block's own weights (AA-CLIP's surgery blocks). ``attn_mask`` is the text tower's
  causal mask cut to the sequence (``None`` in the vision tower).

Sequence layout: position 0 is the CLS (vision) or SOT (text) token; in the vision tower the
``N`` patch tokens are positions ``1..N``. Extra tokens a hook adds go after the patches; the
backbone's patch tokens are always positions ``1..N`` and its global embedding is position 0.
Attention inside a block has no positional information, so appending is equivalent to any
other placement. Deep text prompts (the AnomalyCLIP family) are built on the same mechanism
(:func:`deep_prompt_hooks`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

#: ``(layer, hidden) -> new hidden or None``; ``layer`` is 1-indexed, ``hidden`` batch-first
HookFunction = Callable[[int, Tensor], Tensor | None]
#: ``(layer, block, hidden, attn_mask) -> the block's output or None`` (run the block)
ReplaceFunction = Callable[[int, nn.Module, Tensor, Tensor | None], Tensor | None]


@dataclass(frozen=True)
class BlockHooks:
    """Functions called before and after every block of a tower (see the module docstring)."""

    before: HookFunction | None = None
    after: HookFunction | None = None
    replace: ReplaceFunction | None = None

    def run_before(self, layer: int, hidden: Tensor) -> Tensor:
        return _apply(self.before, layer, hidden)

    def run_replace(self, layer: int, block: nn.Module, hidden: Tensor,
                    attn_mask: Tensor | None) -> Tensor | None:
        """The ``replace`` hook's output for block ``layer`` (checked), or None to run it."""
        if self.replace is None:
            return None
        out = self.replace(layer, block, hidden, attn_mask)
        return None if out is None else _checked(out, layer, hidden)

    def run_after(self, layer: int, hidden: Tensor) -> Tensor:
        return _apply(self.after, layer, hidden)

    @staticmethod
    def chain(*hooks: BlockHooks | None) -> BlockHooks | None:
        """One ``BlockHooks`` running ``hooks`` in order (``None`` entries are skipped); the
        first ``replace`` hook that returns hidden states replaces the block."""
        present = [h for h in hooks if h is not None]
        if not present:
            return None
        if len(present) == 1:
            return present[0]

        def chained(kind: str) -> HookFunction | None:
            functions = [getattr(h, kind) for h in present if getattr(h, kind) is not None]
            if not functions:
                return None

            def run(layer: int, hidden: Tensor) -> Tensor:
                for function in functions:
                    hidden = _apply(function, layer, hidden)
                return hidden
            return run

        replacers = [h.replace for h in present if h.replace is not None]

        def replace(layer: int, block: nn.Module, hidden: Tensor,
                    attn_mask: Tensor | None) -> Tensor | None:
            for function in replacers:
                out = function(layer, block, hidden, attn_mask)
                if out is not None:
                    return out
            return None

        return BlockHooks(before=chained("before"), after=chained("after"),
                          replace=replace if replacers else None)


def _apply(function: HookFunction | None, layer: int, hidden: Tensor) -> Tensor:
    if function is None:
        return hidden
    out = function(layer, hidden)
    return hidden if out is None else _checked(out, layer, hidden)


def _checked(out: Tensor, layer: int, hidden: Tensor) -> Tensor:
    """A hook's hidden states ``out``, which must keep the batch and width of ``hidden``."""
    if out.ndim != 3 or out.shape[0] != hidden.shape[0] or out.shape[2] != hidden.shape[2]:
        raise ValueError(f"a block hook at layer {layer} returned hidden states of shape "
                         f"{tuple(out.shape)}; expected [{hidden.shape[0]}, T, "
                         f"{hidden.shape[2]}] (batch and width unchanged)")
    return out


def deep_prompt_hooks(deep_prompts: Sequence[Tensor], n_prompts: int) -> BlockHooks | None:
    """Deep text prompts as hooks: ``deep_prompts[i]`` (``[n, width]`` shared, or
    ``[n_prompts, n, width]`` per prompt, e.g. per image) replaces positions ``1..n`` before
    text block ``i + 2`` (1-indexed), in the hidden states' dtype."""
    prompts = list(deep_prompts)
    if not prompts:
        return None

    def replace(layer: int, hidden: Tensor) -> Tensor | None:
        if not 2 <= layer <= len(prompts) + 1:
            return None
        prompt = prompts[layer - 2].to(hidden.dtype)
        if prompt.ndim == 2:
            prompt = prompt.unsqueeze(0).expand(n_prompts, -1, -1)
        return torch.cat([hidden[:, :1], prompt, hidden[:, 1 + prompt.shape[1]:]], dim=1)

    return BlockHooks(before=replace)
