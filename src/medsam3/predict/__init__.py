"""Prediction: the 2D predictor (encode once, many prompts) and volumes."""

from medsam3.predict.image import ImagePredictor, TextPrompt
from medsam3.predict.results import PromptResult, combine_label_map

__all__ = ["ImagePredictor", "TextPrompt", "PromptResult", "combine_label_map"]
