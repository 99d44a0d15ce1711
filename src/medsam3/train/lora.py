"""LoRA fine-tuning through ``peft``: adapters injected into the ``Sam3Model`` in place.

``peft.inject_adapter_in_model`` replaces the chosen ``nn.Linear`` layers by LoRA layers
(the frozen ``base_layer`` plus ``lora_A`` / ``lora_B``), so the model keeps its class and
forward. Everything except the adapters and the ``train_modules`` is frozen.
Checkpoints hold the *merged* weights (``W + B A * alpha / r``) as a normal model
directory, and the adapters separately for resuming.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from medsam3.errors import ArgumentError

ADAPTER_MARKERS = (".lora_A.", ".lora_B.", ".lora_embedding_A", ".lora_embedding_B", ".lora_magnitude_vector")


def apply_lora(model: nn.Module, r: int = 16, alpha: float = 32.0, dropout: float = 0.0,
               target_modules: str | list[str] = ("q_proj", "k_proj", "v_proj", "o_proj", "out_proj"),
               train_modules: list[str] = ()) -> int:
    """Inject LoRA adapters into ``model`` (in place) and freeze the rest but ``train_modules``.

    Returns the number of adapted layers.

    Raises:
        ArgumentError: ``target_modules`` matches no layer, or a ``train_modules`` prefix
            names no module.
    """
    from peft import LoraConfig, inject_adapter_in_model

    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    config = LoraConfig(r=int(r), lora_alpha=float(alpha), lora_dropout=float(dropout),
                        target_modules=targets, bias="none")
    # A model that ties nothing (``_tied_weights_keys == {}``, e.g. the video tracker built
    # without its vision encoder) has no input embeddings for peft's tied-weight check to ask
    # for: hide the empty dict during injection.
    untied = isinstance(getattr(model, "_tied_weights_keys", None), dict) and not model._tied_weights_keys
    own = vars(model).get("_tied_weights_keys")
    if untied:
        model._tied_weights_keys = None
    try:
        inject_adapter_in_model(config, model)
    except ValueError as exc:
        raise ArgumentError(f"lora.target_modules {targets!r}: {exc}") from None
    finally:
        if untied and own is not None:
            model._tied_weights_keys = own
        elif untied:
            del model._tied_weights_keys  # the class attribute shows again
    adapted = sum(1 for n, _ in model.named_modules() if n.endswith(".lora_A"))
    if not adapted:
        raise ArgumentError(f"lora.target_modules {targets!r} matches no linear layer of the model")
    names = dict(model.named_modules())
    for prefix in train_modules:
        if prefix not in names:
            raise ArgumentError(f"lora.train_modules: {prefix!r} is not a module of Sam3Model "
                                f"(e.g. mask_decoder, dot_product_scoring, detr_decoder.box_head)")
    for name, param in model.named_parameters():
        param.requires_grad = is_adapter(name) or any(
            name == p or name.startswith(p + ".") for p in train_modules)
    return adapted


def is_adapter(name: str) -> bool:
    return any(marker in name for marker in ADAPTER_MARKERS)


def has_lora(model: nn.Module) -> bool:
    return any(is_adapter(n) for n, _ in model.named_parameters())


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters and fully trained modules (names of the injected model)."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain ``Sam3Model`` state dict with every adapter merged into its base weight."""
    from peft.tuners.lora import LoraLayer

    deltas = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            for adapter in module.active_adapters:
                if adapter in getattr(module, "lora_A", {}):
                    delta = module.get_delta_weight(adapter)
                    deltas[name] = deltas[name] + delta if name in deltas else delta
    out = {}
    for key, value in model.state_dict().items():
        if is_adapter(key):
            continue
        plain = key.replace(".base_layer.", ".")
        module_name = re.sub(r"\.(weight|bias)$", "", plain)
        if key.endswith(".base_layer.weight") and module_name in deltas:
            value = value + deltas[module_name].to(value.dtype)
        out[plain] = value
    return out


def merge_lora_state(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A plain ``Sam3Model`` state dict from one with LoRA layers (``X.base_layer.weight``,
    ``X.lora_A.default.weight``, ``X.lora_B.default.weight``): ``W + B @ A * scaling``."""
    out = {}
    for key, value in state.items():
        if is_adapter(key):
            continue
        if key.endswith(".base_layer.weight"):
            module = key[: -len(".base_layer.weight")]
            a, b = state.get(f"{module}.lora_A.default.weight"), state.get(f"{module}.lora_B.default.weight")
            if a is not None and b is not None:
                value = value + (b.float() @ a.float() * scaling).to(value.dtype)
        out[key.replace(".base_layer.", ".")] = value
    return out
