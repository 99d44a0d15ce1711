"""``medsam3 train``: fine-tune SAM3 from a YAML configuration.

    medsam3 train --config configs/train-tiny-cpu.yaml
    medsam3 train --config run.yaml --resume                 # continue from the newest checkpoint
    medsam3 train --config run.yaml --set train.max_steps=50 --set data.batch_size=2
    medsam3 train --config configs/train-paper-gpu.yaml --dry-run --processes 4   # mix, steps, memory
    accelerate launch --config_file configs/accelerate/ddp-4gpu.yaml $(which medsam3) train --config run.yaml
    torchrun --nproc_per_node 2 -m medsam3.train.cli --config run.yaml

The lead's CLI wires :func:`register` into ``medsam3``; ``python -m medsam3.train.cli``
is the same command without the other subcommands.
"""

from __future__ import annotations

import argparse
import sys

from medsam3.errors import MedSAM3Error


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, help="training YAML (see configs/ and medsam3.train.config)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue the run in output_dir from its newest checkpoint (or from CHECKPOINT); "
                        "starts from the beginning when there is none yet")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="override one config key, e.g. --set train.max_steps=100 (repeatable; VALUE is YAML)")
    p.add_argument("-o", "--output-dir", default=None, help="override output_dir")
    p.add_argument("--dry-run", action="store_true",
                   help="print the data mix, the step budget and a memory estimate, then stop (no data "
                        "or model is loaded, nothing is written; any machine)")
    p.add_argument("--processes", type=int, default=None, metavar="N",
                   help="with --dry-run: processes (GPUs) the run will use (default: $WORLD_SIZE or 1)")


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train", help="fine-tune SAM3 (full or LoRA) on a manifest, on CPU, one GPU or many",
        description="Fine-tune every SAM3 parameter (or LoRA adapters) with SAM3's set-prediction losses on a "
                    "medsam3 manifest. Run it plainly, or under `accelerate launch` / `torchrun` for several "
                    "processes. Checkpoints are model directories plus training state; --resume continues exactly.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from medsam3.train.config import load_config
    from medsam3.train.loop import train

    overrides = list(args.overrides or [])
    if getattr(args, "output_dir", None):
        overrides.append(f"output_dir={args.output_dir}")
    config = load_config(args.config, overrides)
    if getattr(args, "dry_run", False):
        from medsam3.train.dryrun import dry_run

        if args.processes is not None and args.processes < 1:
            from medsam3.errors import ArgumentError

            raise ArgumentError(f"--processes must be at least 1, got {args.processes}")
        print(dry_run(config, args.processes))
        return 0
    result = train(config, resume=args.resume)
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(f"trained {result.steps} steps ({result.skipped_steps} skipped)")
        if result.validation:
            last = result.validation[-1]
            print(f"validation Dice at step {last['step']}: {last['dice']}")
        print(f"final model: {result.final_model}")
        if result.best_model:
            print(f"best model:  {result.best_model}")
    return 0


def main(argv: list[str] | None = None) -> int:
    import logging

    parser = argparse.ArgumentParser(prog="medsam3 train", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="medsam3: %(message)s")
    try:
        return run(args)
    except MedSAM3Error as exc:
        print(f"medsam3: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
