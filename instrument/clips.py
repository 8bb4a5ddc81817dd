"""Clips: stereo float32 audio at the device rate, tagged with where it came from.

Everything a slot plays is a `Clip`. Generated clips and clips read from files share this type, so
the mixer never knows the difference. This module is control-side code (it allocates and does
file I/O); the audio callback only reads `Clip.audio`.

>>> import numpy as np
>>> clip = Clip(np.zeros((44100, 2), np.float32), 44100, ClipInfo("generator", "rain", 7, "tiny", 0.5))
>>> clip.frames, clip.seconds
(44100, 1.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

from instrument.errors import ClipError

__all__ = [
    "MIN_CLIP_SECONDS",
    "Audio",
    "Clip",
    "ClipInfo",
    "load_clip",
    "readable_formats",
    "resample",
    "to_stereo",
]

Audio = npt.NDArray[np.float32]

# Shorter clips cannot carry a crossfade and mostly mean a broken or placeholder file.
MIN_CLIP_SECONDS = 0.5

# Named first in error messages, in this order, when libsndfile reads them.
_COMMON_FORMATS = ("WAV", "FLAC", "OGG", "MP3", "AIFF", "CAF")


@dataclass(frozen=True)
class ClipInfo:
    """Where a clip came from: a file path or "generator", and how it was made.

    One record for both kinds, so slots, logs and status never ask which kind a clip is; the
    generation settings are None on clips read from files.
    """

    source: str  # file path, or "generator"
    prompt: str  # "" for files
    seed: int | None  # None for files
    model: str  # model id, or "file"
    gen_seconds: float  # wall time of the call that generated it (shared by a batch); 0 for files
    steps: int | None = None  # denoising steps; None for files
    guidance: float | None = None  # classifier-free guidance scale; None for files


@dataclass(frozen=True, eq=False)
class Clip:
    """Stereo float32 audio, shape (frames, 2), C-contiguous, at `sample_rate`.

    Clips may be shared (a source's cache hands out the same clip again), so treat `audio` as
    read-only; `load_clip` marks its arrays read-only to catch in-place edits early.
    """

    audio: Audio  # (frames, 2) float32, C-contiguous
    sample_rate: int
    info: ClipInfo
    cut: bool = False  # play it as soon as it arrives (crossfade to it now): a new prompt's first clip

    def __post_init__(self) -> None:
        a = self.audio
        if not isinstance(a, np.ndarray) or a.ndim != 2 or a.shape[1] != 2:
            shape = getattr(a, "shape", type(a).__name__)
            raise ValueError(f"Clip.audio must be a (frames, 2) array, got {shape}: use to_stereo()")
        if a.dtype != np.float32 or not a.flags.c_contiguous:
            raise ValueError(
                f"Clip.audio must be float32 C-contiguous, got {a.dtype} "
                f"(C-contiguous: {a.flags.c_contiguous}): use to_stereo()"
            )
        if self.sample_rate <= 0:
            raise ValueError(f"Clip.sample_rate must be positive, got {self.sample_rate}")

    @property
    def frames(self) -> int:
        return int(self.audio.shape[0])

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def to_stereo(x: npt.ArrayLike) -> Audio:
    """Return float32 C-contiguous (frames, 2) audio from mono, stereo or multichannel float audio.

    Mono, as (frames,) or (frames, 1), is duplicated to both channels. Two channels pass as they
    are (no copy when already float32 C-contiguous). With more than two channels the first two
    are kept: WAV, FLAC, CAF and Ogg all put front-left and front-right first, so they carry the
    main stereo image, whereas a downmix would need a channel layout soundfile does not report
    and would comb-filter correlated channels.

    >>> to_stereo(np.array([0.5, -0.5])).tolist()
    [[0.5, 0.5], [-0.5, -0.5]]
    """
    a = np.asarray(x)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"audio must be (frames,) or (frames, channels), got shape {a.shape}")
    if a.shape[1] == 1:
        a = np.repeat(a, 2, axis=1)
    elif a.shape[1] > 2:
        a = a[:, :2]
    return np.ascontiguousarray(a, dtype=np.float32)


def resample(audio: npt.ArrayLike, src_rate: int, dst_rate: int) -> Audio:
    """Resample (frames, channels) audio from `src_rate` to `dst_rate` with soxr (quality 'HQ').

    The result has round(frames * dst_rate / src_rate) frames (soxr may differ by one) and the
    same channels, float32 C-contiguous. Equal rates return the input, as float32 C-contiguous
    (a copy only when a conversion is needed).
    """
    if src_rate <= 0 or dst_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {src_rate} -> {dst_rate}")
    a = np.ascontiguousarray(audio, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"audio must be (frames, channels), got shape {a.shape}: use to_stereo()")
    if src_rate == dst_rate:
        return a
    if a.shape[0] == 0:
        return np.zeros((0, a.shape[1]), np.float32)
    out = soxr.resample(a, src_rate, dst_rate, quality="HQ")
    return np.ascontiguousarray(out, dtype=np.float32)


def readable_formats() -> str:
    """The formats this libsndfile reads, common ones first, for error messages."""
    available = sf.available_formats()
    common = [f for f in _COMMON_FORMATS if f in available]
    return f"libsndfile {sf.__libsndfile_version__} reads {', '.join(common)} and {len(available) - len(common)} more"


def load_clip(path: str | Path, sample_rate: int) -> Clip:
    """Read an audio file (any format soundfile reads) as a stereo float32 clip at `sample_rate`.

    Raises ClipError, with a one-line message naming the file, the problem and the fix, when the
    file is missing, unreadable, shorter than MIN_CLIP_SECONDS, or holds NaN or infinite samples.
    The returned audio is read-only (clips are shared between slots and caches).
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    p = Path(path)
    if not p.exists():
        raise ClipError(f"{p}: no such file: check the path")
    if p.is_dir():
        raise ClipError(
            f"{p}: is a folder, not an audio file: pass a file, or use the folder as a clip source"
        )
    try:
        data, file_rate = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, OSError, ValueError) as e:
        # libsndfile's own words ("Format not recognised") without its quoted path prefix
        text = e.error_string if isinstance(e, sf.LibsndfileError) else str(e)
        detail = " ".join(str(text).split()).rstrip(".")
        raise ClipError(
            f"{p}: soundfile cannot read this file ({detail}; {readable_formats()}): convert it to WAV or FLAC"
        ) from None
    file_rate = int(file_rate)
    seconds = data.shape[0] / file_rate if file_rate > 0 else 0.0
    if seconds < MIN_CLIP_SECONDS:
        raise ClipError(
            f"{p}: {seconds:.3f} s long, shorter than the {MIN_CLIP_SECONDS} s minimum: use a longer clip"
        )
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        raise ClipError(
            f"{p}: {bad} of {finite.size} samples are NaN or infinite: re-export the file "
            "(as 16- or 24-bit PCM to be safe)"
        )
    audio = resample(to_stereo(data), file_rate, sample_rate)
    audio.flags.writeable = False
    info = ClipInfo(source=str(p), prompt="", seed=None, model="file", gen_seconds=0.0)
    return Clip(audio=audio, sample_rate=sample_rate, info=info)
