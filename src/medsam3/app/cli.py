"""``medsam3 serve``: start the web app (:mod:`medsam3.app.ui`) on this machine."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from medsam3.errors import ArgumentError, MedSAM3Error
from medsam3.precision_options import add_precision_arguments, resolve_precision


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model directory, Hugging Face hub id, or random:NAME; "
                   "default: facebook/sam3 (loaded once, when the server starts)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    add_precision_arguments(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; the default serves only this machine (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--max-upload-mb", type=float, default=512.0, help="largest upload accepted, in MB")
    from medsam3.predict.settings import add_arguments as add_predict_arguments

    v = p.add_argument_group("volumes", "how uploaded volumes are segmented (as `medsam3 segment`; the view plane "
                             "shown is the one segmented)")
    add_predict_arguments(p, volumes=v, exclude=("instances",), threshold_help=" (the UI's starting value)")
    p.add_argument("--concurrency", type=int, default=1,
                   help="segmentations run at once; further requests wait in the queue")
    p.add_argument("--workdir", default=None,
                   help="where the server makes its temporary folder (default: the system's temporary folder); "
                        "uploads, results and Gradio's cache live there, each session's files are deleted "
                        "when its browser tab closes, the whole folder when the server stops")


def register(subparsers) -> None:
    """Add the ``serve`` subcommand to the ``medsam3`` command line."""
    p = subparsers.add_parser(
        "serve", help="start the web app: interactive text, box and point segmentation in the browser",
        description="Start a Gradio web app on HOST:PORT. Upload a 2D image or 3D volume, type prompts or "
                    "click points/boxes, see the overlay and download the label map with its JSON sidecar.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    """Load the model, build the app and serve it until interrupted."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a clinical workstation
    from medsam3.app.ui import AppSettings, build_app
    from medsam3.segmentation import load_model
    if args.max_upload_mb <= 0:
        raise ArgumentError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    if args.concurrency < 1:
        raise ArgumentError(f"--concurrency must be >= 1, got {args.concurrency}")
    from medsam3.predict.settings import from_args as settings_from_args

    settings = AppSettings(model=args.model, device=args.device, predict=settings_from_args(args),
                           max_upload_mb=args.max_upload_mb, workdir=args.workdir, concurrency=args.concurrency)
    print(f"medsam3 serve: loading model {args.model or 'facebook/sam3'} ...", flush=True)
    demo, files = build_app(settings, model=load_model(args.model, device=args.device,
                                                       precision=resolve_precision(args, args.device)))
    previous = _stop_on_termination()
    try:
        demo.queue(default_concurrency_limit=args.concurrency)
        print(f"medsam3 serve: http://{args.host}:{args.port}", flush=True)
        demo.launch(server_name=args.host, server_port=args.port, max_file_size=int(args.max_upload_mb * 1e6),
                    show_error=True, inbrowser=False, share=False, quiet=True)
    finally:
        # a clinic's images must not outlive the server: every upload, result and cached picture goes
        files.remove_all()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def _stop_on_termination() -> dict:
    """Make SIGTERM and SIGHUP stop the server like Ctrl-C (Gradio then closes it and ``run`` cleans up),
    instead of ending the process on the spot with its temporary folder left behind."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is not None:
            try:
                previous[signum] = signal.signal(signum, interrupt)
            except ValueError:  # not the main thread: signals stay as they are
                pass
    return previous


def main(argv: list[str] | None = None) -> int:
    """``python -m medsam3.app``: the same as ``medsam3 serve``."""
    parser = argparse.ArgumentParser(prog="medsam3 serve", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except MedSAM3Error as exc:
        print(f"medsam3: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
