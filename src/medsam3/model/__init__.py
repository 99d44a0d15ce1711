"""SAM3 through transformers: named configurations, model directories, loading."""

from medsam3.model.configs import build_config, config_names
from medsam3.model.directory import build_processor, create_random_model, save_model_directory
from medsam3.model.loader import MedSAM3, resolve_device

__all__ = ["MedSAM3", "build_config", "config_names", "build_processor", "create_random_model",
           "save_model_directory", "resolve_device"]
