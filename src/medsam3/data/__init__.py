"""Training data: the manifest, layout converters, the dataset registry, training samples.

* :func:`convert_dataset` - nnU-Net, Decathlon, 2D folders, COCO, BiomedSegFM npz or an
  atlas on disk -> a manifest (JSON Lines, :mod:`medsam3.data.manifest`);
* :data:`REGISTRY`, :func:`list_datasets`, :func:`prepare_dataset` - the paper's 33
  training and 7 external datasets, and a downloaded copy -> a manifest;
* :class:`PromptSegmentationDataset`, :func:`collate_samples`, :class:`BalancedSampler` -
  SAM3 training samples (text prompt, semantic and instance masks, boxes, presence);
* :func:`build_cache` / :class:`SampleCache` - preprocessed items in shards on disk;
* :func:`inspect_manifest`, :func:`preview_manifest` - what a manifest holds, as a table
  and as a picture.

Names are imported lazily, so ``import medsam3.data`` stays light for the CLI.
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "Manifest": "medsam3.data.manifest",
    "ManifestItem": "medsam3.data.manifest",
    "read_manifest": "medsam3.data.manifest",
    "write_manifest": "medsam3.data.manifest",
    "convert_dataset": "medsam3.data.convert",
    "LAYOUTS": "medsam3.data.convert",
    "REGISTRY": "medsam3.data.registry",
    "DatasetInfo": "medsam3.data.registry",
    "list_datasets": "medsam3.data.registry",
    "get_dataset": "medsam3.data.registry",
    "prepare_dataset": "medsam3.data.registry",
    "load_item": "medsam3.data.loading",
    "LoadedItem": "medsam3.data.loading",
    "PromptSegmentationDataset": "medsam3.data.dataset",
    "collate_samples": "medsam3.data.dataset",
    "BalancedSampler": "medsam3.data.dataset",
    "balanced_weights": "medsam3.data.dataset",
    "class_weighted": "medsam3.data.dataset",
    "build_cache": "medsam3.data.cache",
    "SampleCache": "medsam3.data.cache",
    "inspect_manifest": "medsam3.data.summary",
    "preview_manifest": "medsam3.data.preview",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medsam3.data' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
