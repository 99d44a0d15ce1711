"""The Gradio interface of ``medsam3 serve``.

Layout: on the left the upload, the image (one slice of a volume, in a chosen anatomical
plane, with a slice slider), the window preset and the prompts (text, and clicks on the image
for positive/negative points or the two corners of a box); on the right the result: the
overlay, the three orthogonal views of a volume, the legend with each prompt's presence
score and an explicit "absent", per-class toggles, and the label map + JSON sidecar to download.

Every segmentation goes through :func:`medsam3.segmentation.segment` with the model loaded once
per process; events run through Gradio's queue, the model one request at a time, and each
browser session keeps its own state and its own temporary folder
(:class:`medsam3.app.uploads.SessionFiles`): the session's uploads, results and every picture it
was shown are files there, served by Gradio from there (the server's temporary folder is
Gradio's cache, ``GRADIO_TEMP_DIR``), and deleted when the session ends. Error messages shown in
the browser name the user's file, never a path on the server.
"""


import dataclasses
import html
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsam3.errors import MedSAM3Error
from medsam3.image import Image
from medsam3.predict.settings import PredictSettings, VolumeSettings
from medsam3.preprocess import CT_WINDOWS

AUTO_WINDOW = "auto (from modality)"
CLICK_MODES = ("positive point", "negative point", "box (click two corners)")
AXES = ("axial", "coronal", "sagittal")


@dataclass
class AppSettings:
    """What ``medsam3 serve`` configures.

    Attributes:
        model: model directory, hub id or ``random:NAME`` (see :func:`medsam3.segmentation.load_model`).
        device: ``auto``, ``cpu``, ``cuda``.
        predict: the prediction settings (:class:`medsam3.predict.settings.PredictSettings`): its
            thresholds are the UI's starting ones, its volume settings apply to every volume
            (its axis is the starting view plane; the plane shown is the one segmented).
        max_upload_mb: the largest upload accepted, in MB.
        workdir: where the server's temporary folder is made (the system's temporary folder when
            ``None``); the folder itself is new and removed when the server stops.
        concurrency: how many segmentations run at once (each holds the one model).
    """

    model: str | None = None
    device: str = "auto"
    predict: PredictSettings = field(default_factory=PredictSettings)
    max_upload_mb: float = 512.0
    workdir: str | None = None
    concurrency: int = 1


@dataclass
class SessionState:
    """One browser session's image, prompts and result (kept server-side by Gradio)."""

    image: Image
    name: str
    folder: Path
    normalized: np.ndarray
    window: str | None = None
    axis: str | None = None
    index: int = 0
    points: list[list[float]] = field(default_factory=list)
    point_labels: list[int] = field(default_factory=list)
    box: list[float] | None = None
    corner: list[float] | None = None
    prompt_axis: str | None = None
    prompt_index: int | None = None
    frame: Any = None
    labels: np.ndarray | None = None
    names: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    pictures: dict[str, list[Path]] = field(default_factory=dict)

    @property
    def is_volume(self) -> bool:
        return self.image.ndim == 3

    def clear_prompts(self) -> None:
        self.points, self.point_labels, self.box, self.corner = [], [], None, None
        self.prompt_axis = self.prompt_index = None

    @property
    def has_clicks(self) -> bool:
        return bool(self.points) or self.box is not None


def parse_prompts(text: str | None) -> list[str]:
    """Text prompts from the text box: one per line or separated by commas."""
    return [p.strip() for p in re.split(r"[,\n;]", text or "") if p.strip()]


def window_value(choice: str | None) -> str | None:
    """The ``window`` argument for a dropdown choice (a preset or ``LEVEL,WIDTH``), ``None`` for auto."""
    if not choice or choice == AUTO_WINDOW:
        return None
    return str(choice).split(" ")[0]


def safe_stem(name: str) -> str:
    """A file name stem for downloads made of the upload's name: letters, digits, ``-`` and ``_`` only."""
    from medsam3.io.formats import strip_image_extension

    stem = strip_image_extension(Path(str(name)).name).name
    stem = stem[:-4] if stem.lower().endswith(".zip") else stem
    return (re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "image")[:60]


def legend_html(rows: list[dict], thresholds: dict | None = None) -> str:
    """The legend: colour, label value, name, presence score, and present/absent, per prompt."""
    if not rows:
        return "<p id='medsam3-legend'><em>No result yet.</em></p>"
    cells = []
    for row in rows:
        r, g, b = row["color"]
        state = (f"<b>present</b> ({row['pixels']} px)" if row["present"]
                 else "<b style='color:#b00'>absent</b>: not found in this image")
        cells.append(
            f"<tr class='medsam3-legend-row' data-label='{row['label']}'>"
            f"<td><span style='display:inline-block;width:1.1em;height:1.1em;background:rgb({r},{g},{b});"
            f"border:1px solid #333'></span></td><td>{row['label']}</td><td>{html.escape(row['name'])}</td>"
            f"<td>{row['score']:.3f}</td><td>{state}</td></tr>")
    note = ""
    if thresholds:
        note = (f"<p style='font-size:0.85em;color:#555'>presence threshold {thresholds['presence']:g}, "
                f"score threshold {thresholds['score']:g}, mask threshold {thresholds['mask']:g}</p>")
    return ("<table id='medsam3-legend'><thead><tr><th></th><th>label</th><th>prompt</th><th>presence</th>"
            "<th>result</th></tr></thead><tbody>" + "".join(cells) + "</tbody></table>" + note)


def build_app(settings: AppSettings | None = None, model=None):
    """The Gradio ``Blocks`` app.

    Args:
        settings: :class:`AppSettings` (defaults when ``None``).
        model: an already loaded :class:`medsam3.model.loader.MedSAM3`; loaded from
            ``settings.model`` once (cached per process by :func:`medsam3.segmentation.load_model`) when ``None``.

    Returns:
        ``(blocks, files)``: the app and its :class:`medsam3.app.uploads.SessionFiles`.
    """
    import gradio as gr

    from medsam3.app.uploads import UPLOAD_EXTENSIONS, SessionFiles, read_upload, strip_paths
    from medsam3.app.views import (
        colors_for,
        num_slices,
        render_slice,
        render_three_views,
    )
    from medsam3.preprocess import normalize_intensity
    from medsam3.segmentation import load_model, segment

    settings = settings or AppSettings()
    loaded = model if model is not None else load_model(settings.model, device=settings.device)
    files = SessionFiles(settings.workdir, max_upload_bytes=int(settings.max_upload_mb * 1e6))
    # Gradio's cache (its copies of uploads, anything it serves) is the server's own temporary folder:
    # read when components are made and when the app launches, so it is set before both
    os.environ["GRADIO_TEMP_DIR"] = str(files.root)

    def fail(message: str):
        return gr.Error(message, print_exception=False)

    def picture(state: SessionState, slot: str, rgb: np.ndarray | None) -> str | None:
        """``rgb`` as a PNG in the session's folder (Gradio serves it from there, no copy elsewhere)."""
        if rgb is None:
            return None
        from PIL import Image as PILImage

        folder = state.folder / "pictures"
        folder.mkdir(exist_ok=True)  # never parents: a session that ended has no folder to refill
        path = folder / f"{slot}-{uuid.uuid4().hex}.png"
        PILImage.fromarray(rgb).save(path)
        shown = state.pictures.setdefault(slot, [])
        shown.append(path)
        while len(shown) > 2:  # the one shown and the one before (the browser may still be fetching it)
            shown.pop(0).unlink(missing_ok=True)
        return str(path)

    def visible_colors(state: SessionState, visible_names):
        n = len(state.names)
        if state.labels is None:
            return {}
        keep = [k for k, name in enumerate(state.names, start=1) if visible_names is None or name in visible_names]
        return colors_for(n, keep)

    def draw_main(state: SessionState, visible_names=None):
        marks = state.prompt_axis == state.axis and state.prompt_index == state.index
        rgb, state.frame = render_slice(
            state.image, state.normalized, state.labels, visible_colors(state, visible_names),
            axis=state.axis, index=state.index,
            points=state.points if marks else (), point_labels=state.point_labels if marks else (),
            box=state.box if marks else None, corner=state.corner if marks else None)
        return picture(state, "slice", rgb)

    def draw_views(state: SessionState, visible_names=None):
        if not state.is_volume or state.labels is None:
            return None
        return picture(state, "views", render_three_views(state.image, state.normalized, state.labels,
                                                          visible_colors(state, visible_names)))

    def describe(state: SessionState) -> str:
        img = state.image
        size = " × ".join(str(n) for n in img.size)
        spacing = " × ".join(f"{s:g}" for s in img.spacing)
        kind = "volume" if state.is_volume else "2D image"
        return f"**{html.escape(state.name)}**: {kind}, {size} px, {spacing} mm, modality {img.modality or 'unknown'}"

    def prompt_text(state: SessionState | None) -> str:
        if state is None or not state.has_clicks and state.corner is None:
            return "No box or point prompt (click the image to add one)."
        parts = []
        if state.box is not None:
            parts.append("box " + ", ".join(f"{v:.0f}" for v in state.box))
        if state.corner is not None:
            parts.append("box: first corner set, click the second")
        if state.points:
            parts.append("points " + "; ".join(f"({x:.0f}, {y:.0f}){'' if l else ' negative'}"
                                               for (x, y), l in zip(state.points, state.point_labels)))
        where = f" on {state.prompt_axis} slice {state.prompt_index}" if state.is_volume else ""
        return "Object prompt" + where + ": " + "; ".join(parts)

    # ---- event handlers -------------------------------------------------------------------

    def on_upload(path, window_choice, request: gr.Request):
        if not path:
            return (None, "Upload an image to start.", gr.Slider(visible=False), gr.Radio(visible=False), None,
                    None, legend_html([]), gr.CheckboxGroup(choices=[], value=[]), None, prompt_text(None))
        session = getattr(request, "session_hash", None) or "anonymous"
        files.remember(session, path)  # Gradio's own copy goes with the session
        try:
            # Gradio keeps the upload as CACHE/<hash>/<the user's file name>
            image, name = read_upload(files, session, path)
            window = window_value(window_choice)
            normalized = normalize_intensity(image, window=window)
            folder = files.directory(session)
        except (MedSAM3Error, ValueError) as exc:
            raise fail(strip_paths(str(exc))) from None
        state = SessionState(image=image, name=name, folder=folder, normalized=normalized, window=window)
        slider, axis_radio = gr.Slider(visible=False), gr.Radio(visible=False)
        if state.is_volume:
            from medsam3.orientation import choose_orientation

            state.axis = choose_orientation(image.direction, settings.predict.volume.axis).axis
            n = num_slices(image, state.axis)
            state.index = n // 2
            slider = gr.Slider(minimum=0, maximum=n - 1, step=1, value=state.index, visible=True,
                               label=f"{state.axis} slice (0..{n - 1})")
            axis_radio = gr.Radio(choices=list(AXES), value=state.axis, visible=True)
        return (state, describe(state), slider, axis_radio, draw_main(state), None, legend_html([]),
                gr.CheckboxGroup(choices=[], value=[]), None, prompt_text(state))

    def on_window(state, window_choice, visible):
        if state is None:
            return state, None, None
        try:
            state.window = window_value(window_choice)
            state.normalized = normalize_intensity(state.image, window=state.window)
        except MedSAM3Error as exc:
            raise fail(strip_paths(str(exc))) from None
        return state, draw_main(state, visible), draw_views(state, visible)

    def on_axis(state, axis, visible):
        if state is None or not state.is_volume:
            return state, gr.Slider(), None
        state.axis = axis
        n = num_slices(state.image, axis)
        state.index = n // 2
        return (state, gr.Slider(minimum=0, maximum=n - 1, step=1, value=state.index, label=f"{axis} slice (0..{n - 1})"),
                draw_main(state, visible))

    def on_slice(state, index, visible):
        if state is None:
            return state, None
        state.index = int(index)
        return state, draw_main(state, visible)

    def on_click(state, mode, visible, evt: gr.SelectData):
        if state is None or state.frame is None:
            return state, None, prompt_text(state)
        x, y = state.frame.display_to_plane(*evt.index[:2])
        if state.is_volume and (state.prompt_axis, state.prompt_index) != (state.axis, state.index):
            state.clear_prompts()  # an object is prompted on one slice
        state.prompt_axis, state.prompt_index = state.axis, state.index
        if mode == CLICK_MODES[2]:
            if state.corner is None:
                state.corner = [x, y]
            else:
                (x0, y0), state.corner = state.corner, None
                state.box = [min(x0, x), min(y0, y), max(x0, x), max(y0, y)]
        else:
            state.points.append([x, y])
            state.point_labels.append(0 if mode == CLICK_MODES[1] else 1)
        return state, draw_main(state, visible), prompt_text(state)

    def on_clear(state, visible):
        if state is None:
            return state, None, prompt_text(state)
        state.clear_prompts()
        return state, draw_main(state), prompt_text(state)

    def on_segment(state, text, threshold, presence, mask_threshold, request: gr.Request,
                   progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (Gradio injects it by this default)
        if state is None:
            raise gr.Error("Upload an image first.", print_exception=False)
        prompts = parse_prompts(text)
        if not prompts and not state.has_clicks:
            raise gr.Error("Type a text prompt, or click the image to give a point or box prompt.",
                           print_exception=False)
        progress(0, desc="segmenting")
        session = getattr(request, "session_hash", None) or "anonymous"
        try:
            out_dir = files.new_folder(session, "result")  # a folder per run: concurrent runs never collide
        except MedSAM3Error as exc:  # the session has ended
            raise fail(str(exc)) from None
        except OSError as exc:
            raise fail(f"the result cannot be stored on the server: {strip_paths(str(exc))}") from None
        output = out_dir / (safe_stem(state.name) + ("_labels.nii.gz" if state.is_volume else "_labels.png"))
        interactive = state.has_clicks
        try:
            # the server's settings, with the UI's thresholds and, for a volume, the plane on screen
            run_settings = PredictSettings.build(
                settings.predict if state.is_volume else dataclasses.replace(settings.predict, volume=VolumeSettings()),
                threshold=float(threshold), presence_threshold=float(presence), mask_threshold=float(mask_threshold),
                axis=state.axis if state.is_volume else None)
            seg = segment(state.image, output, prompts, box=state.box if interactive else None,
                          points=state.points or None, point_labels=state.point_labels or None,
                          slice_index=state.prompt_index if interactive and state.is_volume else None,
                          model=loaded, window=state.window, settings=run_settings, progress=True)
        except MedSAM3Error as exc:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise fail(strip_paths(str(exc))) from None
        except BaseException:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise
        from medsam3.io import sidecar_path

        previous = {Path(p).parent for p in state.outputs}
        state.labels = np.asarray(seg.labels.array)
        state.names = list(seg.prompts)
        counts = np.bincount(state.labels.ravel().astype(np.int64), minlength=len(state.names) + 1)
        colors = colors_for(len(state.names))
        state.rows = [{"label": k, "name": name, "score": float(r.presence_score), "present": bool(r.present),
                       "pixels": int(counts[k]), "color": colors[k]}
                      for k, (name, r) in enumerate(zip(state.names, seg.results), start=1)]
        state.outputs = [str(seg.output), str(sidecar_path(seg.output))]
        for old in previous - {out_dir}:
            if old.parent == state.folder:  # only result folders this session made
                shutil.rmtree(old, ignore_errors=True)
        absent = ", ".join(seg.absent)
        status = (f"Done: {len(state.names)} prompt(s)" + (f"; absent: {absent}" if absent else "") +
                  f". Label map: {Path(state.outputs[0]).name} (+ JSON sidecar).")
        return (state, draw_main(state), draw_views(state), legend_html(state.rows, seg.sidecar["thresholds"]),
                gr.CheckboxGroup(choices=state.names, value=state.names), state.outputs, status)

    def on_toggle(state, visible):
        if state is None:
            return None, None
        return draw_main(state, visible), draw_views(state, visible)

    def on_unload(request: gr.Request):
        session = getattr(request, "session_hash", None)
        if session:
            files.remove(session)

    # ---- layout ---------------------------------------------------------------------------

    windows = [AUTO_WINDOW] + [f"{name} ({level:g},{width:g})" for name, (level, width) in CT_WINDOWS.items()]
    with gr.Blocks(title="MedSAM3") as demo:
        state = gr.State(None)
        gr.Markdown("# MedSAM3: prompt-driven medical image segmentation\n"
                    "Upload a 2D image or a 3D volume, type what to segment (and/or click the image), press **Segment**.")
        with gr.Row():
            with gr.Column(scale=3):
                upload = gr.File(label=f"Image or volume (max {settings.max_upload_mb:g} MB): "
                                       "PNG, JPEG, TIFF, DICOM, NIfTI, NRRD, MHA, or a .zip of a DICOM series",
                                 file_types=list(UPLOAD_EXTENSIONS), type="filepath", elem_id="medsam3-upload")
                info = gr.Markdown("Upload an image to start.", elem_id="medsam3-info")
                prompts = gr.Textbox(label="text prompts (one per line or comma-separated)", lines=2,
                                     placeholder="e.g. brain, ventricles", elem_id="medsam3-prompts")
                run = gr.Button("Segment", variant="primary", elem_id="medsam3-segment")
                with gr.Accordion("thresholds", open=False):
                    threshold = gr.Slider(0, 1, value=settings.predict.threshold, step=0.01, label="instance score threshold",
                                          elem_id="medsam3-threshold")
                    presence = gr.Slider(0, 1, value=settings.predict.presence_threshold, step=0.01,
                                         label="presence threshold (below it a prompt is absent)",
                                         elem_id="medsam3-presence")
                    mask_threshold = gr.Slider(0, 1, value=settings.predict.mask_threshold, step=0.01,
                                               label="mask (pixel probability) threshold", elem_id="medsam3-mask")
                with gr.Row():
                    axis = gr.Radio(choices=list(AXES), label="view plane", visible=False, elem_id="medsam3-axis")
                    window = gr.Dropdown(choices=windows, value=AUTO_WINDOW, label="window / level (CT presets, "
                                         "or type LEVEL,WIDTH)", allow_custom_value=True, elem_id="medsam3-window")
                slider = gr.Slider(minimum=0, maximum=1, step=1, value=0, label="slice", visible=False,
                                   elem_id="medsam3-slice")
                view = gr.Image(label="image: click to add points or a box", interactive=False, type="numpy",
                                elem_id="medsam3-view")
                with gr.Row():
                    click_mode = gr.Radio(choices=list(CLICK_MODES), value=CLICK_MODES[0], label="click adds",
                                          elem_id="medsam3-click-mode")
                    clear = gr.Button("Clear clicks", elem_id="medsam3-clear")
                clicks = gr.Markdown(prompt_text(None), elem_id="medsam3-clicks")
            with gr.Column(scale=3):
                status = gr.Markdown("", elem_id="medsam3-status")
                legend = gr.HTML(legend_html([]), elem_id="medsam3-legend-box")
                toggles = gr.CheckboxGroup(choices=[], label="show classes", elem_id="medsam3-toggles")
                views = gr.Image(label="axial / coronal / sagittal through the labels", interactive=False,
                                 type="numpy", elem_id="medsam3-views")
                download = gr.File(label="label map (input geometry) + JSON sidecar", file_count="multiple",
                                   interactive=False, elem_id="medsam3-download")

        render = {"concurrency_limit": 4, "concurrency_id": "render"}
        upload.change(on_upload, [upload, window],
                      [state, info, slider, axis, view, views, legend, toggles, download, clicks], **render)
        window.change(on_window, [state, window, toggles], [state, view, views], **render)
        axis.input(on_axis, [state, axis, toggles], [state, slider, view], **render)
        slider.release(on_slice, [state, slider, toggles], [state, view], **render)
        view.select(on_click, [state, click_mode, toggles], [state, view, clicks], **render)
        clear.click(on_clear, [state, toggles], [state, view, clicks], **render)
        run.click(on_segment, [state, prompts, threshold, presence, mask_threshold],
                  [state, view, views, legend, toggles, download, status],
                  concurrency_limit=settings.concurrency, concurrency_id="model")
        toggles.input(on_toggle, [state, toggles], [view, views], **render)
        demo.unload(on_unload)
    return demo, files
