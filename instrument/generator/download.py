"""First run with a network: say what TangoFlux weighs and under what licence, then fetch it.

`endless play` (and render, fetch-model) with no weights in the cache and the hub reachable call
`fetch_weights`: one log line names the files, their total size (the hub's file metadata, less
what the cache already holds) and the licence, then huggingface_hub downloads them into its cache
with its progress bar on stderr. huggingface_hub keeps a partial file as `*.incomplete` in the
cache and resumes it on the next call, so an interrupted first run (Ctrl-C, a dropped network)
continues where it stopped: the retry uses the same cache folder and never forces a re-download.

This runs in the instrument's process, before the generator worker starts (the worker shows no
progress bars). Nothing here imports torch.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

OFFICIAL_REPO = "declare-lab/TangoFlux"
TEXT_ENCODER_REPO = "google/flan-t5-large"  # TangoFlux's config.json names it (text_encoder_name)
WEIGHT_PATTERNS = ("config.json", "*.safetensors")  # what loading.resolve_checkpoint reads
TEXT_ENCODER_PATTERNS = ("*.json", "*.model", "*.safetensors")
LICENCE = "TangoFlux is for non-commercial research use only (https://huggingface.co/declare-lab/TangoFlux)"


@dataclass(frozen=True)
class RepoPlan:
    repo: str
    patterns: tuple[str, ...]
    files: int  # files the patterns select
    missing: int  # of those, not yet in the cache
    bytes: int  # size of the missing ones (hub metadata)
    licence: str | None  # the model card's licence tag, when it has one


@dataclass(frozen=True)
class DownloadPlan:
    repos: tuple[RepoPlan, ...]

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.repos)

    @property
    def missing(self) -> int:
        return sum(r.missing for r in self.repos)

    def line(self) -> str:
        """What the first run says before it downloads anything."""
        tags = ", ".join(f"{r.repo}: {r.licence}" for r in self.repos if r.licence)
        parts = " + ".join(f"{r.repo} ({_size(r.bytes)})" for r in self.repos if r.missing)
        return (f"first run: fetching {parts}, {self.missing} files, {_size(self.bytes)} in all, into the Hugging "
                f"Face cache (an interrupted download resumes on the next start). Licence: {LICENCE}"
                + (f"; model card licence tags: {tags}" if tags else ""))


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _selected(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def plan_repo(repo: str, patterns: tuple[str, ...], cache_dir: str | Path | None = None) -> RepoPlan:
    """Sizes from the hub's file metadata; files already complete in the cache are not counted.
    Raises whatever huggingface_hub raises when the hub cannot be asked (offline, HTTP errors)."""
    from huggingface_hub import HfApi, try_to_load_from_cache

    info = HfApi().model_info(repo, files_metadata=True)
    files = [s for s in info.siblings or [] if _selected(s.rfilename, patterns)]
    missing = [s for s in files
               if not isinstance(try_to_load_from_cache(repo, s.rfilename, cache_dir=cache_dir, revision=info.sha), str)]
    card = info.card_data
    licence = card.get("license") if card is not None else None
    return RepoPlan(repo, patterns, len(files), len(missing), sum(s.size or 0 for s in missing),
                    str(licence) if licence else None)


def _text_encoder_name(snapshot: Path) -> str:
    """The hub id TangoFlux's config.json names for its text encoder (the usual one if it names none)."""
    try:
        name = json.loads((snapshot / "config.json").read_text()).get("text_encoder_name")
    except (OSError, ValueError, AttributeError):
        return TEXT_ENCODER_REPO
    return name if isinstance(name, str) and name.count("/") == 1 else TEXT_ENCODER_REPO


def fetch_weights(repo: str = OFFICIAL_REPO, cache_dir: str | Path | None = None) -> Path:
    """Say what will be fetched (size, licence), then download TangoFlux and its text encoder into the
    Hugging Face cache with a progress bar; a partial download from an earlier call is resumed.
    Returns the TangoFlux snapshot folder. Hub and network errors propagate (the caller decides)."""
    from huggingface_hub import snapshot_download

    plan = DownloadPlan((plan_repo(repo, WEIGHT_PATTERNS, cache_dir),
                         plan_repo(TEXT_ENCODER_REPO, TEXT_ENCODER_PATTERNS, cache_dir)))
    if plan.missing:
        log.warning("%s", plan.line())
    snapshot = Path(snapshot_download(repo, allow_patterns=list(WEIGHT_PATTERNS), cache_dir=cache_dir))
    text_encoder = _text_encoder_name(snapshot)
    snapshot_download(text_encoder, allow_patterns=list(TEXT_ENCODER_PATTERNS), cache_dir=cache_dir)
    log.info("TangoFlux is in the Hugging Face cache: %s", snapshot)
    return snapshot
