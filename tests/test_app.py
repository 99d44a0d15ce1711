"""The web app (``medsam3 serve``): its pieces, and the whole app driven in a real headless Chromium.

The browser test starts its own server (``python -m medsam3.app``, the same code as
``medsam3 serve``) on a free localhost port with the tiny random model and thresholds at 0,
uploads the bundled sample, types a prompt, waits for the overlay, downloads the label map
and its sidecar, and checks them against :func:`medsam3.segment` run here on the same input
with the same settings. It needs Debian's ``chromium`` and ``chromium-driver`` and the
``selenium`` and ``gradio`` packages (``.ci/run`` installs them); it fails without them. Set
``MEDSAM3_SCREENSHOT=docs/app.png`` to also save a screenshot of the result.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

from medsam3.errors import ArgumentError, MedSAM3Error

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "medsam3" / "data" / "samples" / "colin27_t1_2mm.nii.gz"


# ---- pieces -------------------------------------------------------------------------------

def test_parse_prompts_splits_lines_and_commas():
    from medsam3.app.ui import parse_prompts

    assert parse_prompts("brain, ventricles\n  skull ;\n\n") == ["brain", "ventricles", "skull"]
    assert parse_prompts("") == [] and parse_prompts(None) == []


def test_window_value_and_safe_stem():
    from medsam3.app.ui import AUTO_WINDOW, safe_stem, window_value

    assert window_value(AUTO_WINDOW) is None
    assert window_value("lung (-600,1500)") == "lung"
    assert window_value("40,400") == "40,400"
    assert safe_stem("colin27_t1_2mm.nii.gz") == "colin27_t1_2mm"
    assert safe_stem("../../etc/pass wd.png") == "pass_wd"
    assert safe_stem("series.zip") == "series"
    assert safe_stem("...") == "image"


def test_upload_is_copied_under_a_fixed_name(tmp_path):
    from medsam3.app.uploads import SessionFiles

    files = SessionFiles(tmp_path / "root", max_upload_bytes=10**8)
    assert files.root.parent == tmp_path / "root" and files.root.name.startswith("medsam3-app-")
    got = files.accept_upload("session-1", SAMPLE, "../../evil name.nii.gz")
    assert got.path.name == "input.nii.gz" and got.path.parent.parent == files.directory("session-1")
    assert got.name == "evil name.nii.gz"  # what messages call it: the name only, no folders
    assert got.path.read_bytes() == SAMPLE.read_bytes()
    assert files.directory("session-1") != files.directory("session-2")
    assert files.directory("../..").parent == files.sessions  # a session id is hashed, never a path
    files.remove("session-1")
    assert not got.folder.exists() and not (files.sessions / got.folder.parent.name).exists()
    with pytest.raises(ArgumentError, match="session has ended"):  # a late event cannot refill it
        files.directory("session-1")
    files.remove_all()
    assert not files.root.exists() and (tmp_path / "root").exists()


def test_upload_size_limit_has_a_clear_message(tmp_path):
    from medsam3.app.uploads import SessionFiles

    files = SessionFiles(tmp_path, max_upload_bytes=1000)
    with pytest.raises(ArgumentError, match=r"accepts files up to 1 kB \(medsam3 serve --max-upload-mb\)"):
        files.accept_upload("s", SAMPLE, "colin.nii.gz")


def test_upload_refuses_files_that_need_a_second_file(tmp_path):
    from medsam3.app.uploads import SessionFiles

    files = SessionFiles(tmp_path)
    (tmp_path / "x.mhd").write_text("ObjectType = Image\n")
    with pytest.raises(ArgumentError, match=r"\.mhd files cannot be uploaded"):
        files.accept_upload("s", tmp_path / "x.mhd", "x.mhd")


def test_zipped_series_is_unpacked_under_numbered_names(tmp_path):
    from medsam3.app.uploads import SessionFiles

    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../outside.dcm", b"a" * 10)
        zf.writestr("/abs/path.dcm", b"b" * 10)
        zf.writestr("dir/", b"")
    files = SessionFiles(tmp_path / "root")
    series = files.accept_upload("s", archive, "series.zip")
    assert sorted(p.name for p in series.path.iterdir()) == ["00000.dcm", "00001.dcm"]
    assert series.members == {"00000.dcm": "../../outside.dcm", "00001.dcm": "/abs/path.dcm"}
    assert not (tmp_path / "outside.dcm").exists() and not Path("/abs/path.dcm").exists()


def test_zip_bomb_is_refused(tmp_path):
    from medsam3.app.uploads import SessionFiles

    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.dcm", b"\0" * 50_000)
    files = SessionFiles(tmp_path / "root", max_upload_bytes=10_000)
    with pytest.raises(MedSAM3Error, match="unpacks to"):
        files.accept_upload("s", archive, "bomb.zip")
    with pytest.raises(MedSAM3Error, match="not a readable zip"):
        (tmp_path / "bad.zip").write_bytes(b"not a zip")
        files.accept_upload("s", tmp_path / "bad.zip", "bad.zip")


def test_two_uploads_at_once_in_one_session_do_not_collide(tmp_path):
    """Each upload gets a fresh folder: a second upload neither fails nor removes the first one
    while the first is still being read; many at once all read."""
    from concurrent.futures import ThreadPoolExecutor

    from medsam3.app.uploads import SessionFiles, read_upload

    files = SessionFiles(tmp_path, max_upload_bytes=10**8)
    first = files.accept_upload("s", SAMPLE, "a.nii.gz")
    second = files.accept_upload("s", SAMPLE, "b.nii.gz")
    assert first.folder != second.folder and first.path.read_bytes() == SAMPLE.read_bytes()
    barrier = threading.Barrier(6)

    def upload(k):
        barrier.wait()
        return read_upload(files, "s", SAMPLE, f"scan{k}.nii.gz")

    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(upload, range(6)))
    assert [name for _, name in got] == [f"scan{k}.nii.gz" for k in range(6)]
    assert all(image.shape == (90, 108, 90) for image, _ in got)


def test_error_messages_name_the_users_file_not_server_paths(tmp_path):
    from medsam3.app.uploads import SessionFiles, Upload, strip_paths, user_message

    files = SessionFiles(tmp_path)
    folder = files.new_folder("s", "upload")
    upload = Upload(folder / "series", "CT head.zip", folder, {"00001.dcm": "dir/IM0002"})
    text = (f"cannot read {folder}/series/00001.dcm: bad (in {folder}/series); "
            "thrown in /build/ITK/Modules/IO/PNG/src/itkPNGImageIO.cxx:101: see C:\\tmp\\x\\y.dcm")
    words = upload.user_words(text)
    assert words == ("cannot read CT head.zip: dir/IM0002: bad (in CT head.zip); thrown in itkPNGImageIO.cxx:101: "
                     "see y.dcm"), words
    assert strip_paths("no paths here: 2/3 of DICOM/NIfTI, ratio 1/2") == "no paths here: 2/3 of DICOM/NIfTI, ratio 1/2"
    stored = tmp_path / "gradio" / "abc123" / "knee.png"
    assert user_message(OSError(f"[Errno 5] I/O error: '{stored}'"), None, "knee.png", stored) == \
        "[Errno 5] I/O error: 'knee.png'"
    assert user_message(ValueError(""), None, "knee.png") == "ValueError"


def test_png_bomb_is_refused_from_its_header(tmp_path):
    """An image is refused from what its header declares, before any pixel is decoded."""
    from bad_inputs.test_app_cases import _png_header_only

    from medsam3.app.uploads import SessionFiles, read_upload

    stored = tmp_path / "cache" / "h" / "x.png"
    stored.parent.mkdir(parents=True)
    stored.write_bytes(_png_header_only(2000, 1000, 0))  # 2 MB grey
    files = SessionFiles(tmp_path / "srv", max_upload_bytes=400_000)  # 1.6 MB decoded at most
    with pytest.raises(MedSAM3Error, match=r"x\.png declares 2 MB of pixel data; at most 1.6 MB \(4 x"):
        read_upload(files, "s", stored)
    files = SessionFiles(tmp_path / "srv", max_upload_bytes=600_000)  # 2.4 MB: the header passes, the
    with pytest.raises(MedSAM3Error, match=r"x\.png") as info:  # pixels are missing: the reader says so
        read_upload(files, "s", stored)
    assert "declares" not in str(info.value) and str(tmp_path) not in str(info.value)


@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
def test_clicks_map_back_to_the_input_plane(axis):
    """A click on the displayed (re-oriented, mm-scaled) slice lands on the array plane pixel whose
    voxel is the one shown under the cursor."""
    from medsam3.app.views import render_slice
    from medsam3.io import read_image
    from medsam3.preprocess import normalize_intensity

    image = read_image(SAMPLE)
    normalized = normalize_intensity(image)
    picture, frame = render_slice(image, normalized, None, {}, axis=axis, index=30)
    o = frame.orientation
    for dx, dy in ((5.5, 7.5), (picture.shape[1] - 3.2, picture.shape[0] / 2), (100.0, 60.0)):
        x, y = frame.display_to_plane(dx, dy)
        assert np.allclose(frame.plane_to_display(x, y), (dx, dy))
        plane = np.take(image.array, 30, axis=o.slice_axis)
        shown = o.stack(image.array)[30][int(dy / frame.scale[1]), int(dx / frame.scale[0])]
        assert plane[int(y), int(x)] == shown


def test_2d_slice_shows_labels_and_prompt_marks():
    from medsam3.app.views import colors_for, render_slice
    from medsam3.image import Image

    image = Image.from_array(np.zeros((40, 80), dtype=np.uint8), spacing=(1.0, 2.0))
    labels = np.zeros((40, 80), dtype=np.uint8)
    labels[:10, :10] = 1
    picture, frame = render_slice(image, np.zeros((40, 80), np.float32), labels, colors_for(1),
                                  points=[[60, 30]], point_labels=[0], box=[20, 5, 40, 15], size=160)
    assert frame.scale == (2.0, 4.0) and picture.shape == (160, 160, 3)  # 80 mm x 80 mm, 2 px/mm
    assert tuple(picture[0, 0]) == (14, 54, 81)  # label 1's colour at alpha 0.45 over black
    assert tuple(picture[30 * 4, 60 * 2]) == (230, 40, 40)  # the negative click, red
    assert tuple(picture[5 * 4, 30 * 2]) == (255, 230, 0)  # the box's top edge, yellow
    assert frame.display_to_plane(120, 120) == (60.0, 30.0)


def test_legend_says_absent_explicitly():
    from medsam3.app.ui import legend_html

    text = legend_html([{"label": 1, "name": "liver <b>", "score": 0.91, "present": True, "pixels": 12,
                         "color": (1, 2, 3)},
                        {"label": 2, "name": "spleen", "score": 0.02, "present": False, "pixels": 0,
                         "color": (4, 5, 6)}])
    assert "liver &lt;b&gt;" in text and "0.910" in text and "present" in text
    assert "absent</b>: not found in this image" in text and "rgb(4,5,6)" in text


def test_register_adds_the_serve_subcommand():
    from medsam3.app.cli import register, run

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--model", "random:tiny", "--port", "9999", "--threshold", "0"])
    assert args.func is run and args.host == "127.0.0.1" and args.port == 9999 and args.threshold == 0.0
    assert args.max_upload_mb == 512.0


# ---- the whole app in a real browser --------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``python -m medsam3.app`` process (the same code as ``medsam3 serve``) on a free localhost port.

    Attributes:
        url: where it answers.
        workdir: its ``--workdir`` (its temporary folder is made in there).
        systemp: its ``TMPDIR``: nothing of a session may land there either.
    """

    def __init__(self, tmp_path: Path, model_dir: Path):
        self.workdir, self.systemp = tmp_path / "workdir", tmp_path / "server-tmp"
        self.systemp.mkdir()
        self.log_path = tmp_path / "server.log"
        port = _free_port()
        env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1", TMPDIR=str(self.systemp))
        env.pop("GRADIO_TEMP_DIR", None)
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "medsam3.app", "--model", str(model_dir),
                                          "--device", "cpu", "--port", str(port), "--threshold", "0",
                                          "--presence-threshold", "0", "--workdir", str(self.workdir)],
                                         stdout=log, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{port}/"

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {timeout:g} s:\n{self.log_path.read_text()}")
            time.sleep(0.5)

    @property
    def root(self) -> Path:
        """The server's temporary folder (exactly one, made in ``workdir``)."""
        roots = list(self.workdir.glob("medsam3-app-*"))
        assert len(roots) == 1, roots
        return roots[0]

    def files(self, folder: Path | None = None) -> list[Path]:
        return sorted(p for p in (folder or self.root).rglob("*") if p.is_file())

    def stored(self) -> list[Path]:
        """Files in the server's folder holding anything: Gradio's File component also leaves an empty
        ``tmpXXXXXXXX`` for each upload (no content; removed when the server stops)."""
        return [p for p in self.files() if p.stat().st_size or p.parent != self.root]

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"server did not stop within {timeout:g} s of signal {signum}")
        return self.proc.returncode


@pytest.fixture
def server(tmp_path, tiny_model_dir):
    """A started :class:`Server`; always stopped."""
    srv = Server(tmp_path, tiny_model_dir)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
        print("---- server log (tail) ----\n" + srv.log_path.read_text()[-6000:])  # shown when the test fails


@pytest.fixture
def browser(tmp_path):
    """Headless Debian Chromium through chromedriver; downloads go to ``tmp_path/downloads``."""
    from selenium import webdriver

    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail(f"the browser test needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}): "
                    "apt-get install chromium chromium-driver")
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                 "--window-size=1500,1500"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        driver.downloads = downloads
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, timeout, what):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.25).until(condition)
    except TimeoutException:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


@pytest.mark.slow
def test_app_in_browser_matches_the_cli(server, browser, tmp_path, tiny_model_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    from medsam3.io import read_label_map
    from medsam3.segmentation import segment

    d = browser
    d.get(server.url)
    upload = _wait(d, ec.presence_of_element_located((By.CSS_SELECTOR, "#medsam3-upload input[type=file]")), 60,
                   "the upload field")
    upload.send_keys(str(SAMPLE))
    _wait(d, ec.presence_of_element_located((By.CSS_SELECTOR, "#medsam3-view img")), 90, "the slice view")
    _wait(d, ec.text_to_be_present_in_element((By.ID, "medsam3-info"), "volume"), 30, "the image description")
    assert "90 × 108 × 90 px, 2 × 2 × 2 mm" in d.find_element(By.ID, "medsam3-info").text
    d.find_element(By.CSS_SELECTOR, "#medsam3-prompts textarea").send_keys("brain, ventricles")
    d.find_element(By.ID, "medsam3-segment").click()
    rows = _wait(d, lambda drv: drv.find_elements(By.CSS_SELECTOR, "#medsam3-legend .medsam3-legend-row"), 300,
                 "the legend after segmenting")
    assert len(rows) == 2 and "brain" in rows[0].text and "ventricles" in rows[1].text
    _wait(d, ec.presence_of_element_located((By.CSS_SELECTOR, "#medsam3-views img")), 30, "the three views")
    links = _wait(d, lambda drv: [a for a in drv.find_elements(By.CSS_SELECTOR, "#medsam3-download a")
                                  if a.get_attribute("href")] or None, 30, "the download links")
    # a click on the slice becomes a point prompt on that slice, in the input array's plane
    view = d.find_element(By.CSS_SELECTOR, "#medsam3-view img")
    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", view)
    view.click()
    _wait(d, ec.text_to_be_present_in_element((By.ID, "medsam3-clicks"), "slice 45: points ("), 30,
          "the click to show as a point prompt")
    if os.environ.get("MEDSAM3_SCREENSHOT"):
        d.execute_script("window.scrollTo(0, 0)")
        time.sleep(1)
        d.save_screenshot(os.environ["MEDSAM3_SCREENSHOT"])
    names = [a.text.strip() for a in links]
    hrefs = [a.get_attribute("href") for a in links]
    assert any(".nii.gz" in n for n in names + hrefs) and any(".json" in n for n in names + hrefs), (names, hrefs)
    for a in links:
        d.execute_script("arguments[0].click()", a)

    def downloaded(_):
        done = [p for p in d.downloads.iterdir() if not p.name.endswith(".crdownload")]
        return done if len(done) >= 2 and not any(p.name.endswith(".crdownload") for p in d.downloads.iterdir()) \
            else None

    got = _wait(d, downloaded, 60, "the downloaded label map and sidecar")
    label_map = next(p for p in got if p.name.endswith(".nii.gz"))
    sidecar = json.loads(next(p for p in got if p.name.endswith(".json")).read_text())

    # the CLI's path on the same input with the same settings
    expected = segment(SAMPLE, tmp_path / "cli" / "labels.nii.gz", ["brain", "ventricles"], model=str(tiny_model_dir),
                       device="cpu", threshold=0.0, presence_threshold=0.0, progress=False)
    labels = read_label_map(label_map, reference=SAMPLE)
    assert labels.same_geometry(expected.labels)
    assert labels.shape == (90, 108, 90)
    np.testing.assert_array_equal(labels.array, expected.labels.array)
    assert np.count_nonzero(labels.array) > 0, "thresholds at 0 should give an overlay with labels"
    assert sidecar["labels"] == expected.sidecar["labels"] == {"1": "brain", "2": "ventricles"}
    assert sidecar["geometry"] == expected.sidecar["geometry"]
    assert sidecar["thresholds"] == expected.sidecar["thresholds"]
    assert sidecar["input"] == SAMPLE.name  # the user's file name, not a path on the server

    # privacy: while the session lives, its files are in the server's own temporary folder ...
    during = server.stored()
    assert any(p.name == SAMPLE.name for p in during), during  # Gradio's copy of the upload
    results = [p for p in during if p.is_relative_to(server.root / "sessions") and p.name.endswith("_labels.nii.gz")]
    assert len(results) == 1, during
    session_folder = results[0].parent.parent
    assert any(p.is_relative_to(session_folder) and p.suffix == ".png" for p in during)  # the pictures shown
    assert not server.files(server.systemp), "a session's file landed outside the server's folder"

    # a second session, through Gradio's API client, while this one is open
    _uploads_at_once_and_a_damaged_zip(server, tmp_path)

    # closing the tab ends the session and deletes its folder and Gradio's copy of its upload ...
    d.get("about:blank")
    _wait(d, lambda _: not (session_folder.exists() or any(p.name == SAMPLE.name for p in server.stored())) or None,
          60, "the closed session's files to be deleted")
    # ... and stopping the server (SIGTERM, as a service manager does) deletes its whole folder
    root = server.root
    assert server.stop(signal.SIGTERM) == 0, server.log_path.read_text()
    assert not root.exists() and not list(server.workdir.iterdir())
    assert not server.files(server.systemp)
    assert "Traceback" not in server.log_path.read_text()


def _uploads_at_once_and_a_damaged_zip(server: Server, tmp_path: Path) -> None:
    """Through Gradio's own API client (one session): two uploads at once both load; a damaged zip
    is refused naming the user's file and member, no server path."""
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client, handle_file
    from PIL import Image as PILImage

    png = tmp_path / "upload" / "photo.png"
    png.parent.mkdir()
    PILImage.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64), dtype=np.uint8)).save(png)
    damaged = tmp_path / "upload" / "series-1.zip"
    with zipfile.ZipFile(damaged, "w") as zf:
        zf.writestr("slice1.dcm", b"x" * 500)
    data = bytearray(damaged.read_bytes())
    data[30 + len("slice1.dcm") + 3] ^= 0xFF  # a stored byte changed: the CRC no longer matches
    damaged.write_bytes(bytes(data))

    client = Client(server.url, verbose=False, download_files=False)
    window = "auto (from modality)"
    try:
        for _ in range(2):  # the same session twice over, each pair of uploads released at once
            barrier = threading.Barrier(2)

            def upload(path, barrier=barrier):
                barrier.wait()
                return client.predict(handle_file(str(path)), window, api_name="/on_upload")

            with ThreadPoolExecutor(2) as pool:
                got = list(pool.map(upload, [SAMPLE, png]))
            assert "colin27_t1_2mm.nii.gz" in str(got[0]) and "90 × 108 × 90" in str(got[0])
            assert "photo.png" in str(got[1]) and "2D image" in str(got[1])
        with pytest.raises(Exception) as info:
            client.predict(handle_file(str(damaged)), window, api_name="/on_upload")
        message = str(info.value)
        assert "series-1.zip" in message and "slice1.dcm" in message and "damaged zip" in message, message
        assert str(server.root) not in message and str(tmp_path) not in message, message
    finally:
        client.close()


def test_stopping_the_server_removes_its_folder(tmp_path, monkeypatch):
    """``medsam3 serve`` deletes its temporary folder however it stops: a normal return, Ctrl-C, or
    SIGTERM / SIGHUP (turned into Ctrl-C while it serves, so Gradio closes and the folder goes)."""
    from medsam3.app import cli, ui
    from medsam3.app.uploads import SessionFiles

    made = []

    class FakeDemo:
        def __init__(self, how):
            self.how = how

        def queue(self, **kwargs):
            return self

        def launch(self, **kwargs):
            (made[-1].sessions / "abc" / "upload-1").mkdir(parents=True)
            (made[-1].sessions / "abc" / "upload-1" / "input.png").write_bytes(b"patient")
            if self.how == "ctrl-c":
                raise KeyboardInterrupt
            if self.how in ("SIGTERM", "SIGHUP"):
                os.kill(os.getpid(), getattr(signal, self.how))
                time.sleep(5)  # the handler interrupts this
                raise AssertionError(f"{self.how} did not interrupt the server")

    for how in ("return", "ctrl-c", "SIGTERM", "SIGHUP"):
        def fake_build(settings, model=None, how=how):
            made.append(SessionFiles(settings.workdir))
            return FakeDemo(how), made[-1]

        monkeypatch.setattr(ui, "build_app", fake_build)
        before = signal.getsignal(signal.SIGTERM)
        code = cli.main(["--model", "random:tiny", "--workdir", str(tmp_path / how)])
        assert code == (0 if how == "return" else 130), how
        assert not made[-1].root.exists() and not list((tmp_path / how).iterdir()), how
        assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
