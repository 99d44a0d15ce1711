"""``medsam3 convert``: Meta-format SAM3 / Medical SAM3 checkpoints -> verified model directory."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from medsam3.errors import ArgumentError, InputError
from medsam3.model.configs import config_names

EPILOG = """\
examples:
  medsam3 convert -i sam3.pt -o models/sam3
  medsam3 convert -i checkpoint_2D.pt -o models/medsam3-2d
  medsam3 convert -i checkpoint_3D.pt -o models/medsam3-3d --kind video
  medsam3 convert -i ChongCong/Medical-SAM3:checkpoint_3D.pt -o models/medsam3-3d
  medsam3 convert -i checkpoint_2D.pt --check        # verify only, write nothing
  medsam3 convert -i checkpoint_2D.pt -o models/medsam3-2d --vocabulary medical-sam3

Accepted: Meta's sam3.pt ('detector.' / 'tracker.' keys), image-model checkpoints without the
'detector.' prefix, trainer checkpoints {"model": ..., "optimizer": ...} (the optimizer state is
never read), DDP 'module.' prefixes. Every tensor is accounted for; any missing, unexpected or
wrongly shaped tensor is an error that lists the keys.
"""


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``convert`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "convert", help="convert an original SAM3 / Medical SAM3 checkpoint (.pt) into a model directory",
        description="Convert a Meta-format SAM3 checkpoint (sam3.pt, Medical SAM3's checkpoint_2D.pt / "
                    "checkpoint_3D.pt) into a transformers-format model directory (config, safetensors, "
                    "tokenizer, processor), verified tensor by tensor.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--input", required=True, metavar="CHECKPOINT",
                   help="the .pt file, or a hub repository OWNER/NAME[:FILE] holding one")
    p.add_argument("-o", "--output", metavar="DIR",
                   help="the model directory to write (an existing model directory is replaced)")
    p.add_argument("--kind", choices=["auto", "image", "video"], default="auto",
                   help="image: detector only; video: detector + tracker (error if the file has no tracker); "
                        "auto (default): the tracker too when the file has it")
    p.add_argument("--config", metavar="NAME", default=None,
                   help=f"model configuration: {', '.join(config_names())}, or a config.json / model directory "
                        "(default: inferred from the tensor shapes; the published checkpoints are 'default')")
    p.add_argument("--nan-fallback", metavar="MODEL", default=None,
                   help="model directory or checkpoint supplying tensors that hold NaN/Inf in the input "
                        "(default: such tensors are an error)")
    p.add_argument("--vocabulary", metavar="NAME", default=None,
                   help="the prompts the model was trained on, written to medsam3.json so that typed text reaches "
                        "it in its own words (docs/prompts.md): medical-sam3, or none; default: medical-sam3 for "
                        "the ChongCong/Medical-SAM3 hub repository, else none")
    p.add_argument("--check", action="store_true", help="verify the checkpoint and print the report; write nothing")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(func=run)
    return p


def _local_input(spec: str) -> str:
    """A local path, or the downloaded file of an OWNER/NAME[:FILE] hub spec."""
    from medsam3.model import hub

    if (os.path.exists(spec) or spec.count("/") != 1 or spec.startswith((".", "/", "~"))
            or (":" not in spec and spec.lower().endswith(hub.CHECKPOINT_SUFFIXES))):
        return spec
    repo, filename = hub.parse_hub_spec(spec)
    try:
        if filename is None:
            filename = hub.choose_checkpoint_file(repo, hub.hub_list_files(repo, None))
        return hub.hub_download(repo, filename, None)
    except (InputError, ArgumentError):
        raise
    except Exception as exc:  # noqa: BLE001 - network, gated repository, unknown repository
        raise InputError(f"{spec} is neither a local file nor a downloadable hub checkpoint: {exc}") from exc


def run(args) -> int:
    from medsam3.model.convert import check_checkpoint, convert_checkpoint

    if not args.check and not args.output:
        raise ArgumentError("give -o DIR (the model directory to write), or --check to verify only")
    vocabulary = _vocabulary(args.vocabulary, args.input)
    source = _local_input(args.input)
    if args.check:
        report = check_checkpoint(source, kind=args.kind, config=args.config, nan_fallback=args.nan_fallback)
    else:
        report = convert_checkpoint(source, Path(args.output), kind=args.kind, config=args.config,
                                    nan_fallback=args.nan_fallback,
                                    info={"vocabulary": vocabulary} if vocabulary else None)
    print(report.detection_line())
    print(report.summary_line())
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    if report.output:
        print(f"wrote {report.output}" + (f" (medsam3.json: prompt vocabulary {vocabulary})" if vocabulary else ""))
    return 0


def _vocabulary(name: str | None, spec: str) -> str | None:
    """The ``--vocabulary`` preset (checked before anything is read), ``None`` for none."""
    from medsam3.prompt_mapping import model_presets

    if name is None:  # Medical SAM3's own hub repository: its published prompts
        return "medical-sam3" if str(spec).split(":")[0].strip().lower() == "chongcong/medical-sam3" else None
    if name == "none":
        return None
    if name not in model_presets():
        raise ArgumentError(f"--vocabulary {name!r} is not a known vocabulary; accepted: "
                            f"{', '.join(sorted(model_presets()))}, none")
    return name
