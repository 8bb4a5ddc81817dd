"""`endless doctor`: what is installed and usable here, one line per check.

Each check imports what it looks at inside a guard, so one broken package (a missing shared
library, a half-installed wheel) turns into a `fail` line with the fix instead of a traceback.
Nothing here prints or touches the network: the CLI prints `check.line()` for each check.

    >>> Check("numpy", "ok", "numpy 2.4.6").line()
    '  ok  numpy 2.4.6'
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from instrument.generator.download import OFFICIAL_REPO as TANGOFLUX_REPO
from instrument.generator.download import TEXT_ENCODER_REPO

Status = Literal["ok", "warn", "fail", "info"]

MIN_PYTHON = (3, 10)
# The files instrument.generator.loading needs in a checkpoint (not imported from there: loading
# imports torch, diffusers and transformers at the top, which doctor must survive without).
TANGOFLUX_FILES = ("config.json", "tangoflux.safetensors", "vae.safetensors")
_TRUE = ("1", "ON", "YES", "TRUE")


@dataclass(frozen=True)
class Check:
    name: str  # stable key: "python", "numpy", "portaudio", "torch", "model cache", ...
    status: Status
    detail: str  # one line for people, with the fix when status is warn or fail

    def line(self) -> str:
        return f"{self.status:>4}  {self.detail}"


def _import(name: str) -> tuple[ModuleType | None, str]:
    """The module, or None and why it cannot be imported (any exception: a broken install raises
    OSError, RuntimeError, AttributeError... as often as ImportError)."""
    try:
        return importlib.import_module(name), ""
    except Exception as e:
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no message'}"


def _version(mod: ModuleType, dist: str | None = None) -> str:
    v = getattr(mod, "__version__", None)
    if isinstance(v, str):
        return v
    try:
        return importlib.metadata.version(dist or mod.__name__)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def _missing(name: str, why: str, fix: str, status: Status = "fail") -> Check:
    return Check(name, status, f"{name} cannot be imported ({why}): {fix}")


# -- the checks ---------------------------------------------------------------------------------
def _python() -> list[Check]:
    v = sys.version_info
    text = f"Python {platform.python_version()} ({platform.python_implementation()}, {sys.executable})"
    if v[:2] < MIN_PYTHON:
        need = ".".join(map(str, MIN_PYTHON))
        return [Check("python", "fail", f"{text}: endless needs Python >= {need}")]
    return [Check("python", "ok", text)]


def _package(name: str, fix: str) -> Callable[[], list[Check]]:
    def check() -> list[Check]:
        mod, why = _import(name)
        if mod is None:
            return [_missing(name, why, fix)]
        return [Check(name, "ok", f"{name} {_version(mod)}")]

    return check


def _installed(name: str, minimum: tuple[int, ...], fix: str) -> Callable[[], list[Check]]:
    """Found and recent enough, without importing it: diffusers alone takes ~2 s to import."""

    def check() -> list[Check]:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError) as e:
            return [_missing(name, f"{type(e).__name__}: {e}", fix)]
        if not found:
            return [Check(name, "fail", f"{name} is not installed: {fix}")]
        try:
            v = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return [Check(name, "warn", f"{name} is importable but has no package metadata (a stray folder "
                          f"on sys.path?): {fix}")]
        need = ".".join(map(str, minimum))
        if _release(v) < minimum:
            return [Check(name, "fail", f"{name} {v} is older than the {need} endless needs: {fix}")]
        return [Check(name, "ok", f"{name} {v}")]

    return check


def _release(version: str) -> tuple[int, ...]:
    """The leading numbers of a version string: '4.44.0.dev0' -> (4, 44, 0)."""
    out = []
    for part in version.split("+")[0].split("."):
        m = re.match(r"\d+", part)
        if m is None:
            break
        out.append(int(m.group()))
        if m.end() < len(part):  # '0rc1': a pre-release of 0; what follows is not a release number
            break
    return tuple(out)


def _soundfile() -> list[Check]:
    mod, why = _import("soundfile")
    if mod is None:
        return [_missing("soundfile", why, "`pip install soundfile` (it bundles libsndfile on macOS and "
                         "Windows; on Linux also `sudo apt-get install libsndfile1`)")]
    lib = getattr(mod, "__libsndfile_version__", "libsndfile (version unknown)")
    return [Check("soundfile", "ok", f"soundfile {_version(mod)}: libsndfile {lib}")]


def _portaudio_version(sd: Any) -> str:
    number, text = sd.get_portaudio_version()
    if isinstance(number, int) and number > 0:
        return f"{number >> 16}.{(number >> 8) & 0xFF}.{number & 0xFF}"
    return str(text)


def _audio() -> list[Check]:
    """PortAudio, its output devices and JACK: one function, since JACK's line needs the host APIs."""
    checks: list[Check] = []
    sd, why = _import("sounddevice")
    apis: list[str] | None = None
    if sd is None:
        if "OSError" in why or "PortAudio" in why:
            fix = ("the PortAudio library is missing: `sudo apt-get install libportaudio2` (Debian/Ubuntu) "
                   "or `brew install portaudio` (macOS)")
        else:
            fix = ("`pip install sounddevice`, and PortAudio: `sudo apt-get install libportaudio2` "
                   "or `brew install portaudio`")
        checks.append(Check("portaudio", "fail", f"PortAudio cannot be loaded ({why}): {fix}"))
    else:
        apis = [str(a["name"]) for a in sd.query_hostapis()]
        outputs = [d for d in sd.query_devices() if d["max_output_channels"] > 0]
        checks.append(Check("portaudio", "ok", f"PortAudio {_portaudio_version(sd)} (sounddevice "
                            f"{_version(sd)}): host APIs {', '.join(apis) or 'none'}"))
        if outputs:
            try:
                default = str(sd.query_devices(kind="output")["name"])
            except Exception:
                default = "none"
            plural = "s" if len(outputs) != 1 else ""
            checks.append(Check("output devices", "ok", f"{len(outputs)} audio output device{plural} "
                                f"(default: {default}); see `endless devices`"))
        else:
            checks.append(Check("output devices", "warn", "no audio output devices: `endless play` needs one "
                                "(connect one or start JACK); `endless render` still works"))
    checks.append(_jack(apis))
    return checks


def _jack(apis: list[str] | None) -> Check:
    jackd = shutil.which("jackd")
    server = os.environ.get("JACK_DEFAULT_SERVER")
    visible = apis is not None and any("JACK" in a for a in apis)
    named = f"server {server!r}" if server else "the default server"
    if visible:
        return Check("jack", "info", f"JACK: {named} is reachable (PortAudio's JACK host API is up)")
    if apis is None:
        return Check("jack", "info", f"JACK: jackd {'at ' + jackd if jackd else 'not installed'}; "
                     "PortAudio is missing, so no host API can be checked")
    if server:
        return Check("jack", "warn", f"JACK_DEFAULT_SERVER={server} but PortAudio sees no JACK host API: "
                     f"is `jackd -n {server} ...` running?" + ("" if jackd else " (jackd is not installed)"))
    if jackd:
        return Check("jack", "info", f"JACK: jackd at {jackd}, no server reachable (optional: export "
                     "JACK_DEFAULT_SERVER=NAME and start `jackd -n NAME -d ...`; PortAudio reads it at "
                     "start)")
    return Check("jack", "info", "JACK: not installed (optional; `sudo apt-get install jackd2` on "
                 "Debian/Ubuntu)")


def _torch() -> list[Check]:
    torch, why = _import("torch")
    if torch is None:
        return [_missing("torch", why, "the generator needs it: `pip install torch` "
                         "(clip folders play without it)")]
    devices: list[str] = []
    cuda = False
    try:
        if torch.cuda.is_available():
            cuda = True
            names = sorted({str(torch.cuda.get_device_name(i)) for i in range(torch.cuda.device_count())})
            count = torch.cuda.device_count()
            devices.append(f"cuda x{count} ({', '.join(names)}; CUDA {torch.version.cuda})")
    except Exception as e:  # a driver mismatch raises here, not at import
        devices.append(f"cuda unusable ({type(e).__name__}: {e})")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        cuda = True
        devices.append("mps")
    devices.append(f"cpu ({os.cpu_count()} cores)")
    text = f"torch {_version(torch)}: devices {', '.join(devices)}"
    if not cuda:
        return [Check("torch", "warn", f"{text}; no CUDA or MPS: generation runs on the CPU (slow)")]
    return [Check("torch", "ok", text)]


def _coremltools() -> list[Check]:
    # find_spec, not import: coremltools is slow to import and warns about untested torch versions
    try:
        found = importlib.util.find_spec("coremltools") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return [Check("coremltools", "info", "coremltools not installed (only useful on macOS, "
                      "for Core ML export)")]
    try:
        v = importlib.metadata.version("coremltools")
    except importlib.metadata.PackageNotFoundError:
        v = "(version unknown)"
    where = "" if sys.platform == "darwin" else "; converts here, but Core ML models only run on macOS"
    return [Check("coremltools", "info", f"coremltools {v} installed{where}")]


def _hub_cache() -> Path:
    hub, _ = _import("huggingface_hub.constants")
    if hub is not None and isinstance(getattr(hub, "HF_HUB_CACHE", None), str):
        return Path(hub.HF_HUB_CACHE)
    # huggingface_hub's own defaults, for when it is missing or broken
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                     os.path.join(Path.home(), ".cache"), "huggingface")
    return Path(home) / "hub"


def _snapshots(cache: Path, repo_id: str) -> list[Path]:
    snaps = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    if not snaps.is_dir():
        return []
    return sorted((p for p in snaps.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)


def _cached_model(cache: Path, repo_id: str, complete: Callable[[Path], list[str]], fix: str) -> Check:
    """ok when a snapshot holds what the loader needs; `complete` lists what a snapshot lacks."""
    snaps = _snapshots(cache, repo_id)
    if not snaps:
        return Check(repo_id, "warn", f"{repo_id}: not in the Hugging Face cache; {fix}")
    lacking = {s: complete(s) for s in snaps}
    good = [s for s, miss in lacking.items() if not miss]
    if good:
        return Check(repo_id, "ok", f"{repo_id}: snapshot {good[0].name[:12]} in the cache")
    s = snaps[0]
    return Check(repo_id, "warn", f"{repo_id}: snapshot {s.name[:12]} lacks {', '.join(lacking[s])} "
                 f"(an interrupted or partial download); {fix}")


def _tangoflux_lacks(snap: Path) -> list[str]:
    return [f for f in TANGOFLUX_FILES if not (snap / f).is_file()]


def _t5_lacks(snap: Path) -> list[str]:
    miss = [] if (snap / "config.json").is_file() else ["config.json"]
    if not any(p.is_file() for p in snap.glob("*.safetensors")):
        miss.append("*.safetensors")
    return miss


def _models() -> list[Check]:
    cache = _hub_cache()
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE
    if cache.is_dir():
        n = sum(1 for p in cache.iterdir() if p.name.startswith("models--"))
        plural = "s" if n != 1 else ""
        checks = [Check("model cache", "info", f"Hugging Face cache {cache} ({n} model{plural})")]
    else:
        checks = [Check("model cache", "info", f"Hugging Face cache {cache} (does not exist yet)")]
    for repo, lacks in ((TANGOFLUX_REPO, _tangoflux_lacks), (TEXT_ENCODER_REPO, _t5_lacks)):
        fix = ("`endless play` fetches it when the hub is reachable (or `endless fetch-model`), or pass --model-dir DIR, "
               "or --model tiny to try the instrument offline")
        checks.append(_cached_model(cache, repo, lacks, fix))
    if offline:
        checks.append(Check("hf offline", "info", "HF_HUB_OFFLINE is set: models load from the cache only"))
    else:
        checks.append(Check("hf offline", "info", "HF_HUB_OFFLINE is not set (HF_HUB_OFFLINE=1 keeps "
                            "huggingface_hub from contacting the hub at all)"))
    return checks


def _compile_cache() -> list[Check]:
    """torch.compile's on-disk caches (CUDA starts fill them; a warm start reuses them)."""
    from instrument.generator.compile_cache import summarize  # files only: no torch import

    s = summarize()
    if not s.exists:
        return [Check("compile cache", "info", f"compile cache {s.root} (empty: the first CUDA start fills it, "
                      "later starts of the same model and settings reuse it)")]
    mb = s.bytes / 1e6
    plural = "" if len(s.entries) == 1 else "s"
    text = f"compile cache {s.root}: {mb:.1f} MB in {s.files} files, {len(s.entries)} saved compile{plural}"
    if s.entries:
        text += ": " + "; ".join(_compile_entry(e) for e in s.entries[:4])
        text += f"; {len(s.entries) - 4} more" if len(s.entries) > 4 else ""
    return [Check("compile cache", "info", text)]


def _compile_entry(e: dict[str, object]) -> str:
    sizes = e.get("batch_sizes")
    batch = ",".join(map(str, sizes)) if isinstance(sizes, list) else "?"
    return f"{e.get('model', '?')} {e.get('dtype', '?')} batch {batch} torch {e.get('torch', '?')} {e.get('device', '')}".rstrip()


# -- running them -------------------------------------------------------------------------------
def _coreml() -> list[Check]:
    from instrument.coreml import coreml_status  # reads files only: no torch, no coremltools import

    return [Check("coreml", "info", coreml_status())]


CHECKS: tuple[tuple[str, Callable[[], list[Check]]], ...] = (
    ("python", _python),
    ("numpy", _package("numpy", "`pip install numpy`")),
    ("soundfile", _soundfile),
    ("soxr", _package("soxr", "`pip install soxr` (resampling clips to the device rate)")),
    ("portaudio", _audio),
    ("torch", _torch),
    ("diffusers", _installed("diffusers", (0, 32), "the generator needs it: `pip install -U diffusers`")),
    ("transformers", _installed("transformers", (4, 44),
                                "the generator needs it: `pip install -U transformers`")),
    ("coremltools", _coremltools),
    ("coreml", _coreml),
    ("model cache", _models),
    ("compile cache", _compile_cache),
)


def run_checks() -> list[Check]:
    """Every check, in order; a check that raises becomes a `fail` line naming the error."""
    out: list[Check] = []
    for name, fn in CHECKS:
        try:
            out.extend(fn())
        except Exception as e:
            out.append(Check(name, "fail", f"{name}: the check itself failed ({type(e).__name__}: {e})"))
    return out
