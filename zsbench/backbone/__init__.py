"""The shared OpenCLIP backbone; importing it registers zsbench's tiny model configs."""

from zsbench.backbone.backbone import PRECISIONS, TOKEN_SOURCES, Backbone, ImageFeatures
from zsbench.backbone.loading import (
    MODEL_CONFIG_DIR,
    WeightsUnavailableError,
    file_sha256,
    load_backbone,
    read_state_dict,
    register_model_configs,
    resolve_weights,
)

register_model_configs()

__all__ = [
    "MODEL_CONFIG_DIR",
    "PRECISIONS",
    "TOKEN_SOURCES",
    "Backbone",
    "ImageFeatures",
    "WeightsUnavailableError",
    "file_sha256",
    "load_backbone",
    "read_state_dict",
    "register_model_configs",
    "resolve_weights",
]
