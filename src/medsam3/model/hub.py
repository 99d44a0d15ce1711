"""The Hugging Face hub: downloading models and caching conversions of original-format checkpoints.

:func:`download_model` gives the local directory of a hub id for :class:`medsam3.model.MedSAM3`:
a repository in transformers' format is downloaded as it is (into the hub cache); one holding
only original-format checkpoints (``ChongCong/Medical-SAM3``) is downloaded and converted once by
:func:`convert_hub_repo` (:mod:`medsam3.model.convert`), the converted directory cached under
:func:`default_cache_dir`. ``huggingface_hub`` is imported only when the hub is used.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from medsam3.errors import ArgumentError, InputError
from medsam3.model.convert import REPORT_NAME, convert_checkpoint, sample_names
from medsam3.model.directory import is_model_directory

log = logging.getLogger(__name__)

HUB_DEFAULT_FILES = {"chongcong/medical-sam3": "checkpoint_2D.pt"}
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def download_model(repo_id: str) -> Path:
    """Fetch a hub model (cached after the first time).

    A repository in transformers' format (``facebook/sam3``: config.json + safetensors) is
    downloaded as it is. A repository holding only original-format checkpoints
    (``ChongCong/Medical-SAM3``) is converted once by :func:`convert_hub_repo`
    and the converted directory is cached; ``OWNER/NAME:FILE`` picks one of several checkpoints.
    """
    from huggingface_hub import list_repo_files, snapshot_download  # lazily: only a hub id needs it

    repo, filename = parse_hub_spec(repo_id)
    if filename is not None:
        return convert_hub_repo(repo_id)
    try:
        files = list_repo_files(repo)
    except Exception:  # noqa: BLE001 - offline or gated: fall through to the caches below
        files = None
    if files is None:
        cached = cached_conversion(repo)  # a conversion made earlier; else the transformers-format path below
        if cached is not None:
            return cached
    elif not ("config.json" in files and any(f.endswith(".safetensors") for f in files)) \
            and hub_checkpoint_files(files):
        return convert_hub_repo(repo)
    repo_id = repo
    try:
        path = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
    except Exception as exc:  # network, authentication (facebook/sam3 is gated), unknown repo
        raise InputError(
            f"could not download model {repo_id!r} from the Hugging Face hub: {exc}. "
            "Check the network, `huggingface-cli login` for gated models, or pass a local model directory."
        ) from exc
    if not is_model_directory(path):
        raise InputError(
            f"hub repository {repo_id!r} holds no transformers-format SAM3 model (config.json + model.safetensors); "
            "for original-format .pt checkpoints use `medsam3 convert`"
        )
    return Path(path)


def parse_hub_spec(spec: str) -> tuple[str, str | None]:
    """``owner/name`` or ``owner/name:file.pt`` -> (repo id, file or None)."""
    repo, _, filename = str(spec).partition(":")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ArgumentError(f"{spec!r} is not a hub repository id (owner/name[:file])")
    return repo, filename or None


def default_cache_dir() -> Path:
    """``$MEDSAM3_CACHE_DIR``, else ``$XDG_CACHE_HOME/medsam3/converted`` (``~/.cache/medsam3/converted``)."""
    if os.environ.get("MEDSAM3_CACHE_DIR"):
        return Path(os.environ["MEDSAM3_CACHE_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
    return base / "medsam3" / "converted"


# Hub access goes through these three functions (tests replace them).
def hub_list_files(repo_id: str, revision: str | None) -> list[str]:
    from huggingface_hub import list_repo_files  # lazily, as in every hub call: offline use never imports it

    return list(list_repo_files(repo_id, revision=revision))


def hub_file_id(repo_id: str, filename: str, revision: str | None) -> str:
    """The file's content id on the hub (its ETag: the LFS sha256 for large files)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    meta = get_hf_file_metadata(hf_hub_url(repo_id, filename, revision=revision))
    return str(meta.etag or meta.commit_hash).strip('"').removeprefix("W/").strip('"')


def hub_download(repo_id: str, filename: str, revision: str | None) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id, filename, revision=revision)


def hub_checkpoint_files(files: list[str]) -> list[str]:
    """The original-format checkpoints (``.pt``, ``.pth``, ``.ckpt``, ``.bin``) among a repository's files."""
    return [f for f in files if f.lower().endswith(CHECKPOINT_SUFFIXES)]


def choose_checkpoint_file(repo_id: str, files: list[str]) -> str:
    """The checkpoint of a repository to convert: its known default, else its only one."""
    candidates = hub_checkpoint_files(files)
    default = HUB_DEFAULT_FILES.get(repo_id.lower())
    if default in candidates:
        return default
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise InputError(f"hub repository {repo_id!r} holds no original-format checkpoint "
                         f"({', '.join(CHECKPOINT_SUFFIXES)}); files: {sample_names(files, 10)}")
    raise ArgumentError(f"hub repository {repo_id!r} holds several checkpoints ({', '.join(candidates)}); "
                        f"choose one as {repo_id}:FILE")


def _cache_entry(cache_dir: Path, repo_id: str, filename: str) -> Path:
    owner, name = repo_id.split("/")
    return cache_dir / f"{owner}--{name}" / re.sub(r"[^\w.-]", "_", filename)


def _valid_cache(path: Path) -> bool:
    return is_model_directory(path) and (path / REPORT_NAME).is_file()


def convert_hub_repo(repo_id: str, cache_dir=None, *, filename: str | None = None, revision: str | None = None,
                     kind: str = "auto", config=None, nan_fallback=None) -> Path:
    """Download an original-format checkpoint from the hub, convert it once, return the cached directory.

    Args:
        repo_id: ``owner/name`` or ``owner/name:FILE``. For ``ChongCong/Medical-SAM3`` the default
            file is ``checkpoint_2D.pt`` (the paper's 2D model); ``ChongCong/Medical-SAM3:checkpoint_3D.pt``
            selects the 3D one. A repository with a single checkpoint needs no file name.
        cache_dir: where converted directories live (:func:`default_cache_dir`), one per repository,
            file and file content: ``owner--name/FILE/ID``, ID being the start of the file's hub
            ETag (the sha256 of its content), so a new commit that leaves the file unchanged
            reuses the conversion.
        revision: branch, tag or commit (default: the main branch).

    Later calls return the cached directory after one metadata request (which file, which
    content); without network they use the newest cached conversion of that repository and file.
    The downloaded ``.pt`` stays in the Hugging Face cache (``hf cache`` can delete it).
    """
    repo, spec_file = parse_hub_spec(repo_id)
    filename = filename or spec_file
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    try:
        if filename is None:
            filename = choose_checkpoint_file(repo, hub_list_files(repo, revision))
        file_id = hub_file_id(repo, filename, revision)
    except (ArgumentError, InputError):
        raise
    except Exception as exc:  # noqa: BLE001 - offline, unknown repository, gated
        offline = _newest_cached(cache_dir, repo, filename)
        if offline is not None:
            log.warning("hub not reachable (%s); using the cached conversion %s", exc, offline)
            return offline
        raise InputError(f"could not reach hub repository {repo!r} ({exc}) and no converted copy is cached in "
                         f"{cache_dir}") from exc
    target = _cache_entry(cache_dir, repo, filename) / re.sub(r"[^\w.-]", "_", file_id)[:16]
    if _valid_cache(target):
        return target
    try:
        local = hub_download(repo, filename, revision)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"could not download {filename} from hub repository {repo!r}: {exc}") from exc
    log.warning("converting %s:%s once (cached in %s)", repo, filename, target)
    report = convert_checkpoint(local, target, kind=kind, config=config, nan_fallback=nan_fallback)
    log.warning("%s", report.summary_line())
    return target


def cached_conversion(repo_id: str, cache_dir=None) -> Path | None:
    """The newest cached conversion of ``OWNER/NAME[:FILE]`` (no network), or None."""
    repo, filename = parse_hub_spec(repo_id)
    return _newest_cached(Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(),
                          repo, filename)


def _newest_cached(cache_dir: Path, repo: str, filename: str | None) -> Path | None:
    owner, name = repo.split("/")
    base = cache_dir / f"{owner}--{name}"
    if not base.is_dir():
        return None
    filename = filename or HUB_DEFAULT_FILES.get(repo.lower())
    files = [base / re.sub(r"[^\w.-]", "_", filename)] if filename else [p for p in base.iterdir() if p.is_dir()]
    found = [d for f in files if f.is_dir() for d in f.iterdir() if _valid_cache(d)]
    if filename is None and len({d.parent for d in found}) > 1:
        return None  # several files converted and none named: ambiguous
    return max(found, key=lambda d: d.stat().st_mtime) if found else None
