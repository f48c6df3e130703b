"""CoCoOp for zero-shot anomaly detection (Zhou et al., CVPR 2022), zsbench's own pinned version.

CoOp (:mod:`zsbench.methods.coop`) plus CoCoOp's meta-net: ``Linear(D, D // 16) -> ReLU ->
Linear(D // 16, text width)`` maps the L2-normalised global image embedding to a bias added to
every context vector, so each image gets its own prompts. Upstream ZSAD work released no code
for it; training, features and scores are CoOp's (METHODS.md section 4).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from zsbench.anomaly_maps import l2_normalize
from zsbench.method import MethodInfo, option
from zsbench.methods.coop import CoOp, CoOpConfig
from zsbench.registry import register_method

logger = logging.getLogger(__name__)


# -- config ----------------------------------------------------------------------------------------

@dataclass
class CoCoOpConfig(CoOpConfig):
    meta_net_reduction: int = option(
        16, "hidden width of the meta-net = embed_dim // reduction (CoCoOp uses 16)")
    meta_net_zero_init: bool = option(
        True, "zero-initialise the meta-net's last layer so training starts from CoOp; CoCoOp "
              "upstream uses PyTorch's default init, whose bias alone can dwarf the 0.02-scale "
              "context vectors on narrow backbones")


# -- method ----------------------------------------------------------------------------------------

@register_method
class CoCoOp(CoOp):
    """CoOp whose context is shifted per image by a meta-net on the image embedding."""

    config_class = CoCoOpConfig
    presets = {
        # CoCoOp's own code (KaiyangZhou/CoOp trainers/cocoop.py): the meta-net's Linear layers
        # keep PyTorch's default initialisation
        "upstream-init": {
            "meta_net_zero_init": False,
        },
    }
    info = MethodInfo(
        name="cocoop", title="CoCoOp",
        paper="Zhou et al., Conditional Prompt Learning for Vision-Language Models, CVPR 2022 "
              "(ZSAD version pinned by zsbench)",
        trainable=True, transductive=False, code="https://github.com/KaiyangZhou/CoOp",
        license="MIT", class_aware=True)

    def __init__(self, config: CoCoOpConfig, backbone: torch.nn.Module):
        super().__init__(config, backbone)
        if config.meta_net_reduction < 1:
            raise ValueError(f"meta_net_reduction must be >= 1, got {config.meta_net_reduction}")
        hidden = max(1, backbone.embed_dim // config.meta_net_reduction)
        self.meta_net = nn.Sequential(nn.Linear(backbone.embed_dim, hidden), nn.ReLU(),
                                      nn.Linear(hidden, backbone.text_width)).to(backbone.device)
        if config.meta_net_zero_init:
            nn.init.zeros_(self.meta_net[-1].weight)
            nn.init.zeros_(self.meta_net[-1].bias)

    @classmethod
    def describe_prompts(cls, config: CoCoOpConfig) -> dict[str, Any]:
        prompts = super().describe_prompts(config)
        prompts["meta_net"] = (f"Linear(embed_dim, embed_dim // {config.meta_net_reduction}) -> "
                               f"ReLU -> Linear(-> text width) on the normalised image embedding; "
                               f"its output is added to every context vector")
        return prompts

    def text_embeddings(self, class_names: Sequence[str], global_embedding: Tensor) -> Tensor:
        """``[B, 2, D]``: each image's prompts with its meta-net bias, grouped by class."""
        bias = self.meta_net(l2_normalize(global_embedding.float()))  # [B, W]
        text: Tensor | None = None
        for name in dict.fromkeys(class_names):
            rows = torch.tensor([i for i, n in enumerate(class_names) if n == name],
                                device=bias.device)
            encoded = self.prompt_learner([name], ctx_bias=bias[rows])[:, 0]  # [b, 2, D]
            if text is None:
                text = encoded.new_empty(len(class_names), *encoded.shape[1:])
            text = text.index_copy(0, rows, encoded)
        return text

    def parameter_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self.prompt_learner.parameters())
                 + list(self.meta_net.parameters())}]
