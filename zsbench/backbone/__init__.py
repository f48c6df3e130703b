"""The shared OpenCLIP backbone; importing it registers zsbench's tiny model configs."""

from zsbench.backbone.backbone import (
    MLP_ACTIVATIONS,
    POS_EMBED_INTERPOLATIONS,
    PRECISIONS,
    TOKEN_SOURCES,
    Backbone,
    ImageFeatures,
)
from zsbench.backbone.hooks import BlockHooks, HookFunction, deep_prompt_hooks
from zsbench.backbone.loading import (
    MODEL_CONFIG_DIR,
    ActivationPlan,
    WeightsFileInfo,
    WeightsUnavailableError,
    file_sha256,
    load_backbone,
    plan_activation,
    quickgelu_variant,
    read_state_dict,
    read_weights_file,
    register_model_configs,
    resolve_weights,
)

register_model_configs()

__all__ = [
    "MLP_ACTIVATIONS",
    "MODEL_CONFIG_DIR",
    "POS_EMBED_INTERPOLATIONS",
    "PRECISIONS",
    "TOKEN_SOURCES",
    "ActivationPlan",
    "Backbone",
    "BlockHooks",
    "HookFunction",
    "ImageFeatures",
    "WeightsFileInfo",
    "WeightsUnavailableError",
    "deep_prompt_hooks",
    "file_sha256",
    "load_backbone",
    "plan_activation",
    "quickgelu_variant",
    "read_state_dict",
    "read_weights_file",
    "register_model_configs",
    "resolve_weights",
]
