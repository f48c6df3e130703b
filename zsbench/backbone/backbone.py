"""The shared CLIP backbone: open_clip's towers run step by step with the hooks ZSAD methods need.

Unmodified calls reproduce open_clip's ``encode_image`` / ``encode_text``. Methods extend both
towers through :class:`~zsbench.backbone.hooks.BlockHooks` (functions run before and after every
block: learnable vision tokens, per-image deep text prompts, adapters), never by editing or
patching the backbone. The options add per-layer patch tokens, the V-V attention path
(AnomalyCLIP's DPAM, METHODS.md section 1), residual-stream tokens (APRIL-GAN), window
re-encoding (WinCLIP), learnable prompt embeddings, deep text prompts (AnomalyCLIP family), a
``text_projection`` override, and a positional-embedding resize in the convention of the method's
upstream code (bilinear, or open_clip's bicubic with antialias).

Precision is explicit: "fp32" computes in float32 even inside an enclosing autocast (it is
disabled for the backbone's device), "bf16"/"fp16" autocast to that dtype on the backbone's device
(CUDA or CPU; weights stay fp32).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU, TextTransformer, VisionTransformer, text_global_pool
from torch import Tensor, nn

from zsbench.backbone.hooks import BlockHooks, deep_prompt_hooks

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: how the vision positional embedding is resized to another patch grid (the CLS position is kept):
#: "bilinear": ``F.interpolate(mode="bilinear", align_corners=False)``, no antialias (upstream
#: AnomalyCLIP, FAPrompt, TPS); "bicubic-antialias": ``F.interpolate(mode="bicubic",
#: antialias=True, align_corners=False)``, open_clip's ``resize_pos_embed`` (as bundled by
#: APRIL-GAN, ``ByChelsea/VAND-APRIL-GAN`` ``open_clip/model.py``); "bicubic": the same without
#: antialias (older open_clip ``resize_pos_embed``, as bundled by MuSc, ``xrli-U/MuSc``
#: ``open_clip/model.py``).
POS_EMBED_INTERPOLATIONS = ("bilinear", "bicubic-antialias", "bicubic")
TOKEN_SOURCES = ("proj", "residual")
#: the MLP activation the blocks compute with: "native" (the model's own: QuickGELU for OpenAI
#: weights) or "gelu" (exact GELU whatever the model has: the upstream quirk of code that loads
#: OpenAI weights into a config without quick_gelu, e.g. MuSc, AdaCLIP, AA-CLIP, VCP-CLIP)
MLP_ACTIVATIONS = ("native", "gelu")
DEFAULT_WINDOW_CHUNK_TOKENS = 1 << 16


def _check_options(precision: str, pos_embed_interpolation: str,
                   mlp_activation: str = "native") -> None:
    if mlp_activation not in MLP_ACTIVATIONS:
        raise ValueError(f"mlp_activation {mlp_activation!r} is not one of "
                         f"{', '.join(MLP_ACTIVATIONS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if pos_embed_interpolation not in POS_EMBED_INTERPOLATIONS:
        raise ValueError(f"pos_embed_interpolation {pos_embed_interpolation!r} is not one of "
                         f"{', '.join(POS_EMBED_INTERPOLATIONS)}")


class ImageFeatures(NamedTuple):
    """Output of :meth:`Backbone.encode_image`."""

    global_embedding: Tensor  # [B, embed_dim], CLS of the final layer
    patch_tokens: dict[int, Tensor]  # layer (1-indexed) -> [B, N, embed_dim] or [B, N, width]


class Backbone(nn.Module):
    """A frozen open_clip CLIP with step-by-step vision and text towers.

    Args:
        model: an open_clip ``CLIP`` (or ``CustomTextCLIP``) with open_clip's VisionTransformer
            and TextTransformer.
        name: the open_clip model name that was built (selects the tokenizer); the effective
            name, e.g. ``ViT-L-14-336-quickgelu`` when OpenAI weights were asked for with
            ``ViT-L-14-336`` (see ``zsbench.backbone.loading.plan_activation``).
        pretrained: what the weights came from (tag, path or None), kept for provenance.
        image_size: default input side (a multiple of the patch size); the native size if None.
        precision: "fp32" (float32 even inside an enclosing autocast), or "bf16"/"fp16" for
            autocast to that dtype inside the encode calls (see :meth:`autocast`).
        weights_sha256: sha256 of the loaded weights file, kept for provenance.
        pos_embed_interpolation: one of ``POS_EMBED_INTERPOLATIONS``, how the positional
            embedding is resized for a patch grid other than the native one.
        mlp_activation: one of ``MLP_ACTIVATIONS``: "gelu" computes every block's MLP with exact
            GELU even when the model has QuickGELU (an upstream quirk, see the constant).
    """

    def __init__(self, model: nn.Module, *, name: str, pretrained: str | None = None,
                 image_size: int | None = None, precision: str = "fp32",
                 weights_sha256: str | None = None, pos_embed_interpolation: str = "bilinear",
                 mlp_activation: str = "native"):
        super().__init__()
        visual = getattr(model, "visual", None)
        text = getattr(model, "text", model)
        if not isinstance(visual, VisionTransformer):
            raise ValueError(f"model {name!r}: the backbone needs open_clip's VisionTransformer, "
                             f"got {type(visual).__name__}")
        if visual.attn_pool is not None or visual.pool_type != "tok":
            raise ValueError(f"model {name!r}: only class-token pooling is supported "
                             f"(pool_type={visual.pool_type!r}, attentional pool "
                             f"{visual.attn_pool is not None})")
        if text is not model and (not isinstance(text, TextTransformer)
                                  or text.cls_emb is not None or text.use_pad_mask):
            raise ValueError(f"model {name!r}: unsupported text tower {type(text).__name__}")
        _check_options(precision, pos_embed_interpolation, mlp_activation)

        self.model = model
        self.mlp_activation = mlp_activation
        self.name = name
        self.pretrained = pretrained
        self.precision = precision
        self.weights_sha256 = weights_sha256
        self.pos_embed_interpolation = pos_embed_interpolation
        self._text_pool_type = getattr(text, "pool_type", getattr(model, "text_pool_type",
                                                                  "argmax"))
        self._text_eos_id = getattr(text, "eos_id", getattr(model, "text_eos_id", None))

        self.patch_size = int(visual.patch_size[0])
        self.native_grid_size = tuple(int(g) for g in visual.grid_size)
        native_size = self.native_grid_size[0] * self.patch_size
        self.image_size = native_size if image_size is None else int(image_size)
        if self.image_size <= 0 or self.image_size % self.patch_size:
            raise ValueError(f"image_size {image_size!r} must be a positive multiple of the patch "
                             f"size {self.patch_size} of model {name!r}")
        self.grid_size = (self.image_size // self.patch_size,) * 2
        self.vision_width = int(visual.conv1.out_channels)
        self.vision_layers = len(visual.transformer.resblocks)
        self.text_width = int(text.token_embedding.weight.shape[1])
        self.text_layers = len(text.transformer.resblocks)
        self.embed_dim = int(visual.proj.shape[1])
        self.context_length = int(text.positional_embedding.shape[0])
        preprocess = open_clip.get_model_preprocess_cfg(model)
        self.mean = tuple(float(v) for v in preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.std = tuple(float(v) for v in preprocess.get("std", open_clip.OPENAI_DATASET_STD))
        self._tokenizer = open_clip.get_tokenizer(name)
        self._positional_cache: dict[tuple[Any, ...], Tensor] = {}

        self.model.requires_grad_(False)
        self.model.eval()

    # -- module state ----------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Backbone:
        """Keep the wrapped CLIP in eval mode whatever the parent module does (frozen extractor)."""
        super().train(mode)
        self.model.eval()
        return self

    @property
    def _text(self) -> nn.Module:
        """The text tower: the CLIP itself, or the ``text`` module of a ``CustomTextCLIP``."""
        return getattr(self.model, "text", self.model)

    @property
    def device(self) -> torch.device:
        return self.model.visual.proj.device

    @property
    def quick_gelu(self) -> bool:
        """Whether the vision blocks use QuickGELU (what the OpenAI weights were trained with)."""
        return any(isinstance(module, QuickGELU) for module in self.model.visual.modules())

    def with_options(self, *, precision: str | None = None,
                     pos_embed_interpolation: str | None = None,
                     mlp_activation: str | None = None) -> Backbone:
        """This backbone with other compute options, sharing the same CLIP (weights, device).

        Returns ``self`` when nothing changes; otherwise a shallow sibling (a method's config
        applied to a backbone built elsewhere, see ``zsbench.method.build_method``)."""
        precision = self.precision if precision is None else precision
        mode = (self.pos_embed_interpolation if pos_embed_interpolation is None
                else pos_embed_interpolation)
        activation = self.mlp_activation if mlp_activation is None else mlp_activation
        _check_options(precision, mode, activation)
        if (precision, mode, activation) == (self.precision, self.pos_embed_interpolation,
                                             self.mlp_activation):
            return self
        sibling = copy.copy(self)
        for key in ("_parameters", "_buffers", "_modules"):  # own registries, shared modules
            sibling.__dict__[key] = copy.copy(self.__dict__[key])
        sibling.precision = precision
        sibling.pos_embed_interpolation = mode
        sibling.mlp_activation = activation
        sibling._positional_cache = {}
        return sibling

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast state of the configured precision on the backbone's device.

        "fp32" disables autocast for the device, so that an enclosing autocast (a trainer's, a
        caller's) cannot lower the precision; "bf16"/"fp16" autocast to that dtype on CUDA and on
        CPU alike (CPU autocast), replacing an enclosing autocast's dtype. A device without
        autocast support raises a ``RuntimeError`` for "bf16"/"fp16" (fp32 needs nothing there).
        """
        device_type = self.device.type
        if self.precision == "fp32":
            try:
                return torch.autocast(device_type, enabled=False)
            except RuntimeError:  # no autocast on this device type: nothing to disable
                return contextlib.nullcontext()
        dtype = AUTOCAST_DTYPES[self.precision]
        problem = ""
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                context = torch.autocast(device_type, dtype=dtype)
            if not getattr(context, "_enabled", True):  # torch warns and disables instead
                problem = "; ".join(str(w.message) for w in caught) or "autocast disabled"
        except RuntimeError as err:
            problem = str(err)
        if problem:
            raise RuntimeError(f"precision {self.precision!r} needs {dtype} autocast on device "
                               f"{device_type!r}, which this torch does not provide ({problem}); "
                               f"use precision 'fp32' or another device")
        return context

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, pretrained={self.pretrained!r}, "
                f"image_size={self.image_size}, precision={self.precision!r}, "
                f"pos_embed_interpolation={self.pos_embed_interpolation!r}, "
                f"quick_gelu={self.quick_gelu}, mlp_activation={self.mlp_activation!r}")

    # -- shared pieces ---------------------------------------------------------------------------
    def _run_block(self, block: nn.Module, x: Tensor, batch_first: bool,
                   attn_mask: Tensor | None = None, hooks: BlockHooks | None = None,
                   layer: int = 0) -> Tensor:
        """One residual block on batch-first ``x``, whatever layout the transformer uses: the
        ``replace`` hook's output if it gives one, else the block (with exact GELU when
        ``mlp_activation`` is "gelu")."""
        if attn_mask is not None:
            attn_mask = attn_mask[:x.shape[1], :x.shape[1]]
        if hooks is not None and hooks.replace is not None:
            out = hooks.run_replace(layer, block, x, attn_mask)
            if out is not None:
                return out
        x = x if batch_first else x.transpose(0, 1)
        if self.mlp_activation == "gelu":
            x = x + block.ls_1(block.attention(q_x=block.ln_1(x), attn_mask=attn_mask))
            x = x + block.ls_2(block.mlp.c_proj(F.gelu(block.mlp.c_fc(block.ln_2(x)))))
        else:
            x = block(x, attn_mask=attn_mask)
        return x if batch_first else x.transpose(0, 1)

    def positional_embedding(self, grid_size: tuple[int, int]) -> Tensor:
        """Vision positional embedding ``[1 + gh * gw, width]`` for a patch grid.

        The grid part is resized as ``pos_embed_interpolation`` says (``POS_EMBED_INTERPOLATIONS``:
        bilinear without antialias as upstream AnomalyCLIP, or bicubic with antialias as
        open_clip's ``resize_pos_embed``, both align_corners=False); the CLS position is kept.
        The resize runs in the embedding's dtype (float32; interpolation is not an autocast
        op). Results are cached per grid size and mode."""
        positional = self.model.visual.positional_embedding
        grid_size = (int(grid_size[0]), int(grid_size[1]))
        if grid_size == self.native_grid_size:
            return positional
        mode = self.pos_embed_interpolation
        key = (grid_size, mode, positional.device, positional.dtype, positional._version)
        cached = self._positional_cache.get(key)
        if cached is not None:
            return cached
        native_h, native_w = self.native_grid_size
        grid = positional[1:].reshape(1, native_h, native_w, -1).permute(0, 3, 1, 2)
        if mode in ("bicubic-antialias", "bicubic"):
            grid = F.interpolate(grid, size=grid_size, mode="bicubic",
                                 antialias=mode == "bicubic-antialias", align_corners=False)
        else:
            grid = F.interpolate(grid, size=grid_size, mode="bilinear", align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(grid_size[0] * grid_size[1], -1)
        resized = torch.cat([positional[:1], grid], dim=0)
        if not positional.requires_grad:
            self._positional_cache = {k: v for k, v in self._positional_cache.items()
                                      if k[2:] == key[2:]}
            self._positional_cache[key] = resized
        return resized

    def patch_grid(self, images: Tensor) -> tuple[int, int]:
        """The ``(rows, columns)`` patch grid of an ``[B, 3, H, W]`` batch."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape [B, 3, H, W], got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size "
                             f"{self.patch_size} of model {self.name!r}")
        return height // self.patch_size, width // self.patch_size

    def _embed_image(self, images: Tensor) -> Tensor:
        """Patch embedding + CLS + positional embedding + ln_pre -> ``[B, 1 + N, width]``."""
        grid = self.patch_grid(images)
        visual = self.model.visual
        x = visual.conv1(images.to(visual.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + self.positional_embedding(grid).to(x.dtype)
        return visual.ln_pre(x)

    def _project_tokens(self, tokens: Tensor) -> Tensor:
        return self.model.visual.ln_post(tokens) @ self.model.visual.proj

    @staticmethod
    def _vv_attention(block: nn.Module, normed: Tensor) -> Tensor:
        """V-V self-attention output of ``block`` on its ``ln_1`` output (batch-first).

        ``out_proj(softmax(v v^T / sqrt(d_head)) v)`` per head, with the block's own value
        in-projection and its layer scale ``ls_1`` (and the custom block's extra norms)."""
        attn = block.attn
        batch, length, width = normed.shape
        heads = attn.num_heads
        value = F.linear(normed, attn.in_proj_weight[2 * width:],
                         None if attn.in_proj_bias is None else attn.in_proj_bias[2 * width:])
        value = value.reshape(batch, length, heads, width // heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(value, value, value)
        if getattr(attn, "head_scale", None) is not None:
            out = out * attn.head_scale
        out = out.transpose(1, 2).reshape(batch, length, width)
        if hasattr(attn, "ln_inner"):
            out = attn.ln_inner(out)
        out = attn.out_proj(out)
        if hasattr(block, "ln_attn"):
            out = block.ln_attn(out)
        return block.ls_1(out)

    #: public name of the V-V attention of one block (for methods' ``replace`` hooks)
    vv_attention = _vv_attention

    def ln_post(self, tokens: Tensor) -> Tensor:
        """The vision tower's final layer norm on residual-stream tokens ``[..., width]``."""
        return self.model.visual.ln_post(tokens)

    # -- vision ----------------------------------------------------------------------------------
    def check_layer(self, layer: int | None, option: str) -> int:
        """A 1-indexed vision block; ``None`` means the last. A clear error names ``option``."""
        value = self.vision_layers if layer is None else int(layer)
        if not 1 <= value <= self.vision_layers:
            raise ValueError(f"{option}={layer} out of range 1..{self.vision_layers} for model "
                             f"{self.name!r}")
        return value

    def check_layers(self, layers: Sequence[int], option: str, allow_empty: bool = False
                     ) -> tuple[int, ...]:
        """1-indexed vision blocks as a tuple of ints, each checked like :meth:`check_layer`."""
        values = tuple(int(layer) for layer in layers)
        if not values and not allow_empty:
            raise ValueError(f"{option} is empty; give at least one vision block "
                             f"(1..{self.vision_layers})")
        bad = [layer for layer in values if not 1 <= layer <= self.vision_layers]
        if bad:
            raise ValueError(f"{option} {bad} out of range 1..{self.vision_layers} for model "
                             f"{self.name!r}")
        return values

    def encode_image(self, images: Tensor, layers: Sequence[int] = (), vv_from: int | None = None,
                     global_ln_post: bool = True, token_source: str = "proj",
                     hooks: BlockHooks | None = None) -> ImageFeatures:
        """Global embedding and patch tokens of the requested (1-indexed) layers.

        Args:
            images: ``[B, 3, H, W]`` normalised images, H and W multiples of the patch size.
            layers: block outputs whose patch tokens (CLS removed) are returned.
            vv_from: first block of the V-V path (METHODS.md section 1); patch tokens of layers
                >= vv_from come from the V-V residual stream, the global embedding never does.
            global_ln_post: apply ln_post to the CLS before ``proj`` (open_clip); False as
                upstream AnomalyCLIP (``AnomalyCLIP/AnomalyCLIP_lib/AnomalyCLIP.py``).
            token_source: "proj" for ``ln_post(tokens) @ proj`` ([B, N, embed_dim]); "residual"
                for raw residual-stream tokens before ln_post ([B, N, width], APRIL-GAN).
            hooks: :class:`BlockHooks` run before/after every block on ``[B, 1 + N (+ extra),
                width]`` (tokens a hook appends after the patches never count as patches).
        """
        layers = self.check_layers(layers, "layers", allow_empty=True)
        if vv_from is not None:
            self.check_layer(vv_from, "vv_from")
        if token_source not in TOKEN_SOURCES:
            raise ValueError(f"token_source {token_source!r} is not one of "
                             f"{', '.join(TOKEN_SOURCES)}")
        visual = self.model.visual
        batch_first = getattr(visual.transformer, "batch_first", True)
        wanted = set(layers)
        with self.autocast():
            hidden = self._embed_image(images)
            n_patches = hidden.shape[1] - 1
            vv_stream: Tensor | None = None
            patch_tokens: dict[int, Tensor] = {}
            for index, block in enumerate(visual.transformer.resblocks, start=1):
                if hooks is not None:
                    hidden = hooks.run_before(index, hidden)
                if vv_from is not None and index >= vv_from:
                    vv_out = self._vv_attention(block, block.ln_1(hidden))
                    vv_stream = (hidden if index == vv_from else vv_stream) + vv_out
                hidden = self._run_block(block, hidden, batch_first, hooks=hooks, layer=index)
                if hooks is not None:
                    hidden = hooks.run_after(index, hidden)
                if index in wanted:
                    use_vv = vv_from is not None and index >= vv_from
                    tokens = (vv_stream if use_vv else hidden)[:, 1:1 + n_patches]
                    if token_source == "proj":
                        tokens = self._project_tokens(tokens)
                    patch_tokens[index] = tokens.float()
            cls = hidden[:, 0]
            if global_ln_post:
                cls = visual.ln_post(cls)
            global_embedding = (cls @ visual.proj).float()
        return ImageFeatures(global_embedding, patch_tokens)

    def encode_windows(self, images: Tensor, windows: Tensor,
                       max_tokens_per_chunk: int = DEFAULT_WINDOW_CHUNK_TOKENS) -> Tensor:
        """WinCLIP window embeddings ``[B, W, embed_dim]``.

        Each window (a row of ``windows`` [W, m], patch indices row-major in the grid) runs the
        vision transformer on CLS + only its m patch tokens with their positional embeddings;
        the result is ``ln_post(CLS) @ proj``. Windows are batched in chunks of at most
        ``max_tokens_per_chunk`` tokens."""
        windows = torch.as_tensor(windows)
        if windows.ndim != 2 or windows.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"windows must be an integer tensor [W, m], got "
                             f"{windows.dtype} {tuple(windows.shape)}")
        visual = self.model.visual
        batch_first = getattr(visual.transformer, "batch_first", True)
        with self.autocast():
            embedded = self._embed_image(images)
            batch, n_tokens, width = embedded.shape
            if windows.numel() and (windows.min() < 0 or windows.max() >= n_tokens - 1):
                raise ValueError(f"window patch indices must lie in 0..{n_tokens - 2}")
            windows = windows.to(embedded.device, torch.int64)
            n_windows, window_len = windows.shape
            cls, patches = embedded[:, :1], embedded[:, 1:]
            chunk = max(1, max_tokens_per_chunk // (batch * (window_len + 1)))
            outputs = []
            for start in range(0, n_windows, chunk):
                index = windows[start:start + chunk]
                count = index.shape[0]
                sequence = torch.cat([cls.unsqueeze(1).expand(batch, count, 1, width),
                                      patches[:, index]], dim=2)
                sequence = sequence.reshape(batch * count, window_len + 1, width)
                for block in visual.transformer.resblocks:
                    sequence = self._run_block(block, sequence, batch_first)
                embedding = visual.ln_post(sequence[:, 0]) @ visual.proj
                outputs.append(embedding.reshape(batch, count, -1).float())
        if not outputs:
            return embedded.new_zeros(batch, 0, self.embed_dim, dtype=torch.float32)
        return torch.cat(outputs, dim=1)

    # -- text ------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """Token ids ``[P, context_length]`` (the model's open_clip tokenizer) on the device."""
        if isinstance(texts, str):
            texts = [texts]
        return self._tokenizer(list(texts), context_length=self.context_length).to(self.device)

    def token_embedding(self, ids: Tensor) -> Tensor:
        """Token embeddings ``[P, L, text_width]`` of token ids ``[P, L]``."""
        return self._text.token_embedding(ids)

    def encode_text(self, ids: Tensor, prompt_embeddings: Tensor | None = None,
                    deep_prompts: Sequence[Tensor] | None = None,
                    hooks: BlockHooks | None = None,
                    text_projection: Tensor | None = None) -> Tensor:
        """Text embeddings ``[P, embed_dim]`` (unnormalised).

        Args:
            ids: token ids ``[P, L]``; the pooled position is the EOT token (argmax of ids).
            prompt_embeddings: ``[P, L, text_width]`` input embeddings replacing
                ``token_embedding(ids)`` (learnable context vectors).
            deep_prompts: tensors ``[n_i, text_width]`` shared by all prompts, or ``[P, n_i,
                text_width]`` already expanded per prompt; ``deep_prompts[i]`` replaces the
                hidden states at positions 1..n_i before text block i + 2 (1-indexed); per-image
                prompts are ``[P, n_i, text_width]`` with P = images x prompts.
            hooks: :class:`BlockHooks` run before/after every text block on ``[P, L, width]``
                (after the deep prompts' replacement).
            text_projection: ``[text_width, embed_dim]`` used instead of the tower's own
                projection (a method's trainable copy; the frozen one is never swapped).
        """
        if ids.ndim != 2:
            raise ValueError(f"ids must have shape [P, L], got {tuple(ids.shape)}")
        n_prompts, length = ids.shape
        if length > self.context_length:
            raise ValueError(f"ids have {length} positions, more than the context length "
                             f"{self.context_length}")
        deep_prompts = list(deep_prompts or [])
        if len(deep_prompts) > self.text_layers - 1:
            raise ValueError(f"{len(deep_prompts)} deep prompts but only {self.text_layers - 1} "
                             f"text blocks after the first")
        for depth, prompt in enumerate(deep_prompts):
            if prompt.ndim not in (2, 3) or prompt.shape[-1] != self.text_width or \
                    not 1 <= prompt.shape[-2] <= length - 2 or \
                    (prompt.ndim == 3 and prompt.shape[0] != n_prompts):
                raise ValueError(f"deep prompt {depth} must have shape [n, {self.text_width}] "
                                 f"or [{n_prompts}, n, {self.text_width}] with 1 <= n <= "
                                 f"{length - 2}, got {tuple(prompt.shape)}")
        text = self._text
        batch_first = getattr(text.transformer, "batch_first", True)
        with self.autocast():
            if prompt_embeddings is None:
                x = text.token_embedding(ids)
            else:
                if prompt_embeddings.shape != (n_prompts, length, self.text_width):
                    raise ValueError(f"prompt_embeddings must have shape "
                                     f"{(n_prompts, length, self.text_width)}, got "
                                     f"{tuple(prompt_embeddings.shape)}")
                x = prompt_embeddings.to(text.token_embedding.weight.dtype)
            x = x + text.positional_embedding[:length].to(x.dtype)
            mask = text.attn_mask
            all_hooks = BlockHooks.chain(deep_prompt_hooks(deep_prompts, n_prompts), hooks)
            for index, block in enumerate(text.transformer.resblocks, start=1):
                if all_hooks is not None:
                    x = all_hooks.run_before(index, x)
                x = self._run_block(block, x, batch_first, attn_mask=mask, hooks=all_hooks,
                                    layer=index)
                if all_hooks is not None:
                    x = all_hooks.run_after(index, x)
            x = text.ln_final(x)
            pooled = text_global_pool(x[:, :length], ids, self._text_pool_type,
                                      eos_token_id=self._text_eos_id)
            projection = text.text_projection if text_projection is None else text_projection
            if isinstance(projection, nn.Linear):
                pooled = projection(pooled)
            elif projection is not None:
                pooled = pooled @ projection
        return pooled.float()

    def encode_text_features(self, texts: Sequence[str]) -> Tensor:
        """Unnormalised text embeddings ``[P, embed_dim]`` of plain strings."""
        return self.encode_text(self.tokenize(texts))
