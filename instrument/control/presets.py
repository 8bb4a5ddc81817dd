"""Presets (scenes): TOML snapshots of every slot's prompt (or blend), generation settings and mix
settings, plus the global mix. Store, recall (with a glide, now or at an output frame), arm.

User presets live in `user_data_dir("endless")/presets` (platformdirs); examples ship in the
repository's `presets/`. A user preset shadows an example of the same name. The list is sorted by
name and numbered from 1 (`/endless/preset/recall 2`, program change 1); a name of digits finds the
preset of that name first, and the list's number only when none has it. Names become a safe slug
(`Rain at Dawn` -> `rain-at-dawn.toml`); `..`, `/`, `\\` and empty names are refused. Files are
written atomically (temporary file, fsync, rename), so a crash never leaves half a preset.

Transport settings (tempo, meter, quantize) are not part of a scene. A slot's `weights` weigh the
parts of its own `prompt` (one number per part); a file where they do not fit is refused when read,
and a recall is checked whole (`Engine.check_batch`) before any of it applies.

>>> slugify("Rain at Dawn!")
'rain-at-dawn'
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from instrument.control.arming import ArmingScheduler, played_prompt
from instrument.control.tomlfile import read_text, read_versioned, toml_value, write_atomic
from instrument.errors import ParamError
from instrument.params import Param, Ref, Registry, Value, as_float, check_glide

if TYPE_CHECKING:
    from instrument.engine import Engine

log = logging.getLogger(__name__)

VERSION = 1
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "presets"
SCENE_TARGETS = ("mixer", "generator")
TOP_KEYS = ("version", "name", "description", "glide", "global", "slot")
MAX_SLUG = 64
# within a slot: generation settings first, so the new prompt's first clip is made with them;
# the weights after the prompt they weigh
_ORDER = {"slot/steps": 0, "slot/guidance": 0, "slot/seed": 0, "slot/length": 0, "slot/prompt": 1,
          "slot/weights": 2}


def user_presets_dir() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("endless")) / "presets"


def slugify(name: str) -> str:
    """A preset name as a file name: lowercase letters, digits, `-` and `_`.

    >>> slugify("  Night City_2 "), slugify("Wald & Wind")
    ('night-city_2', 'wald-wind')
    """
    text = str(name).strip()
    if not text or any(bad in text for bad in ("/", "\\", "..", "\x00")):
        raise ParamError(f"preset name {name!r}: not allowed: use letters, digits, spaces, - and _ "
                         "(no '/', '\\', '..', not empty)")
    slug = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")
    if not slug or len(slug) > MAX_SLUG:
        raise ParamError(f"preset name {name!r}: needs 1..{MAX_SLUG} letters or digits")
    return slug


def field_name(p: Param) -> str:
    """A parameter's key in a preset file: `gain` inside [[slot]], `master_gain` in [global]."""
    return p.key[5:] if p.scope == "slot" else p.key.replace("/", "_")


def scene_params(registry: Registry) -> list[Param]:
    return [p for p in registry.params if p.target in SCENE_TARGETS and p.kind != "trigger"]


@dataclass(frozen=True)
class Preset:
    name: str
    slug: str
    glide: float | None  # default glide of a recall (None: each parameter's own smoothing)
    globals: tuple[tuple[str, Value], ...]  # (registry key, value)
    slots: tuple[tuple[tuple[str, Value], ...], ...]  # per slot from 1: (registry key, value)
    description: str = ""

    def slot(self, i: int) -> dict[str, Value]:
        return dict(self.slots[i]) if i < len(self.slots) else {}


@dataclass(frozen=True)
class RecallResult:
    preset: Preset
    changes: int  # parameters that changed
    skipped: tuple[str, ...]  # what this instrument could not take (extra slots, prompts without a generator)


# == the file format ===============================================================================
def parse_preset(text: str, where: str, registry: Registry, slug: str = "") -> Preset:
    """Read a preset; every value is checked against the registry, so a recall never half-applies."""
    doc = read_versioned(text, where, TOP_KEYS, VERSION, ParamError)
    name = doc.get("name", slug)
    if not isinstance(name, str):
        raise ParamError(f"{where}: name = {name!r}: allowed text in quotes")
    glide = doc.get("glide")
    if glide is not None:
        glide = check_glide(glide, f"{where}: glide")
    params = scene_params(registry)
    by_global = {field_name(p): p for p in params if p.scope == "global"}
    by_slot = {field_name(p): p for p in params if p.scope == "slot"}
    g = doc.get("global", {})
    if not isinstance(g, dict):
        raise ParamError(f"{where}: global must be a table: [global]")
    globals_ = tuple(_value(registry, by_global, k, v, None, f"{where}: [global]") for k, v in g.items())
    slots_t = doc.get("slot", [])
    if not isinstance(slots_t, list) or not all(isinstance(s, dict) for s in slots_t):
        raise ParamError(f"{where}: slot must be an array of tables: write each as [[slot]]")
    if len(slots_t) > 16:
        raise ParamError(f"{where}: {len(slots_t)} [[slot]] tables: at most 16")
    slots = tuple(_slot(registry, by_slot, s, i, f"{where}: [[slot]] #{i + 1}") for i, s in enumerate(slots_t))
    desc = doc.get("description", "")
    return Preset(name, slug, glide, globals_, slots, desc if isinstance(desc, str) else "")


def _slot(registry: Registry, table: dict[str, Param], raw: dict[str, object], i: int,
          where: str) -> tuple[tuple[str, Value], ...]:
    """One [[slot]] table; its weights must fit its own prompt (a preset that could never recall is
    refused when it is read, naming the file and the slot)."""
    from instrument.scheduler import blend_parts, check_weights

    items = tuple(_value(registry, table, k, v, 0, where) for k, v in raw.items())
    d = dict(items)
    weights, prompt = d.get("slot/weights", ()), d.get("slot/prompt")
    if isinstance(prompt, str) and isinstance(weights, tuple) and weights:
        try:
            check_weights(i, weights, blend_parts(prompt))
        except ParamError as e:
            raise ParamError(f"{where}: {e}") from None
    return items


def _value(registry: Registry, table: dict[str, Param], key: str, raw: object, slot: int | None,
           where: str) -> tuple[str, Value]:
    p = table.get(key)
    if p is None:
        raise ParamError(f"{where}: unknown key {key!r}: allowed {', '.join(table)}")
    if p.kind == "text" and isinstance(raw, dict):  # a blend written as a table: { rain = 0.7, thunder = 0.3 }
        raw = blend_text(raw, f"{where}: {key}")
    args = list(raw) if p.kind == "weights" and isinstance(raw, list) else [raw]
    if p.kind == "weights" and not args:
        return p.key, ()
    try:
        return p.key, registry.coerce(Ref(p, slot, False), args)
    except ParamError as e:
        raise ParamError(f"{where}: {key}: {e}") from None


def blend_text(parts: dict[str, Any], where: str) -> str:
    """A blend table as the prompt syntax.

    >>> blend_text({"gentle rain": 0.7, "thunder": 0.3}, "x")
    'gentle rain:0.7 | thunder:0.3'
    """
    out = []
    for text, w in parts.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0 or "|" in text or not text.strip():
            raise ParamError(f"{where}: blend part {text!r} = {w!r}: give prompt = weight (a number >= 0)")
        out.append(f"{text.strip()}:{w:g}")
    if not out:
        raise ParamError(f"{where}: an empty blend: give at least one prompt = weight")
    return " | ".join(out)


def preset_to_toml(p: Preset, registry: Registry) -> str:
    fields = {q.key: field_name(q) for q in registry.params}
    out = ["# Endless preset (a scene): prompts, generation and mix settings. Written by /endless/preset/store.",
           f"version = {VERSION}", f"name = {toml_value(p.name)}"]
    if p.description:
        out.append(f"description = {toml_value(p.description)}")
    if p.glide is not None:
        out.append(f"glide = {toml_value(p.glide)}")
    out += ["", "[global]"] + [f"{fields[k]} = {toml_value(v)}" for k, v in p.globals]
    for items in p.slots:
        out += ["", "[[slot]]"] + [f"{fields[k]} = {toml_value(v)}" for k, v in items
                                   if not (k == "slot/weights" and v == ())]
    return "\n".join(out) + "\n"


def snapshot(engine: Engine, name: str, glide: float | None = None) -> Preset:
    """The engine's current scene as a preset."""
    reg = engine.registry
    params = scene_params(reg)
    g = tuple((p.key, engine.values[(p.key, None)]) for p in params if p.scope == "global")
    slots = tuple(tuple((p.key, engine.values[(p.key, s)]) for p in params if p.scope == "slot")
                  for s in range(reg.slots))
    return Preset(name, slugify(name), glide, g, slots)


# == the store =====================================================================================
class PresetStore:
    """User presets (written here) over example presets (read-only)."""

    def __init__(self, user_dir: Path | None = None, example_dirs: Sequence[Path] = (EXAMPLES_DIR,)) -> None:
        self.user_dir = user_dir if user_dir is not None else user_presets_dir()
        self.example_dirs = tuple(example_dirs)

    def _files(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for d in (*reversed(self.example_dirs), self.user_dir):  # later folders shadow earlier ones
            if d.is_dir():
                for f in d.glob("*.toml"):
                    if re.fullmatch(r"[a-z0-9_-]+", f.stem):
                        found[f.stem] = f
        return found

    def names(self) -> list[str]:
        """Every preset's slug, in list order (numbered from 1)."""
        return sorted(self._files())

    def find(self, name_or_index: str | int | float) -> tuple[str, Path]:
        """A preset by name, or by number in the list (1-based; Pd sends numbers as floats)."""
        files = self._files()
        order = sorted(files)
        key: object = name_or_index
        if isinstance(key, float) and key.is_integer():
            key = int(key)
        if isinstance(key, str) and key.strip().isdigit() and key.strip() not in files:
            key = int(key)  # digits name a preset first; else its number in the list
        if isinstance(key, int) and not isinstance(key, bool):
            if not 1 <= key <= len(order):
                raise ParamError(f"preset {key}: out of range: there {'is' if len(order) == 1 else 'are'} "
                                 f"{len(order)} preset(s) (1..{len(order)}): {', '.join(order) or 'none stored yet'}")
            return order[key - 1], files[order[key - 1]]
        if not isinstance(key, str):
            raise ParamError(f"preset {name_or_index!r}: give a name or a whole number")
        slug = slugify(key)
        if slug not in files:
            raise ParamError(f"preset {key!r}: not found (presets: {', '.join(order) or 'none'}; "
                             f"store one with /endless/preset/store NAME)")
        return slug, files[slug]

    def load(self, name_or_index: str | int | float, registry: Registry) -> Preset:
        slug, path = self.find(name_or_index)
        text = read_text(path, "preset", ParamError)
        return parse_preset(text, str(path), registry, slug)

    def store(self, engine: Engine, name: str, glide: float | None = None) -> Path:
        """Save the current scene as a user preset (replacing one of the same name)."""
        p = snapshot(engine, name, glide)
        path = self.user_dir / f"{p.slug}.toml"
        write_atomic(path, preset_to_toml(p, engine.registry))
        log.info("preset %r stored in %s", name, path)
        return path

    def recall(self, engine: Engine, name_or_index: str | int | float, glide: float | None = None,
               frame: int = -1) -> RecallResult:
        """Apply a preset. Mixer settings glide over `glide` seconds (None: the preset's own glide,
        else each parameter's smoothing); prompts and generation settings go to the generator at
        once. With `frame` >= 0 the mixer settings land at that output frame and each new prompt's
        first clip cuts in there too, or on the first grid boundary after it arrives when later
        (quantized recall)."""
        asked = None if glide is None else check_glide(glide, "preset recall: glide")
        preset = self.load(name_or_index, engine.registry)
        g = preset.glide if asked is None else asked
        plan, skipped = self._plan(engine, preset)
        refused = engine.check_batch(plan)  # a bad blend or weights must not half-apply the preset
        if refused:
            raise ParamError(f"preset {preset.slug}: {refused[min(refused)]}")
        for ref, value in plan:
            engine.set(ref, value, frame, glide=g if ref.param.target == "mixer" else None)
        log.info("preset %s recalled (%d changes%s)", preset.slug, len(plan),
                 f"; skipped {', '.join(skipped)}" if skipped else "")
        return RecallResult(preset, len(plan), tuple(skipped))

    def _plan(self, engine: Engine, preset: Preset) -> tuple[list[tuple[Ref, Value]], list[str]]:
        """What a recall changes, in order; unchanged values are left alone."""
        reg, values = engine.registry, engine.values
        plan: list[tuple[Ref, Value]] = []
        skipped: list[str] = []
        for key, value in preset.globals:
            if values.get((key, None)) != value:
                plan.append((Ref(reg[key], None, False), value))
        for s, items in enumerate(preset.slots):
            if s >= reg.slots:
                skipped.append(f"slot {s + 1} (this instrument has {reg.slots})")
                continue
            d = dict(items)
            # the prompt goes out again when it is the same but plays with weights the preset has not
            # (a prompt change drops them); after a prompt its weights always go out
            unweighted = d.get("slot/weights", ()) == () and values.get(("slot/weights", s), ()) != ()
            new_prompt = "slot/prompt" in d and (values.get(("slot/prompt", s)) != d["slot/prompt"] or unweighted)
            for key in sorted(d, key=lambda k: _ORDER.get(k, -1)):
                value = d[key]
                p = reg[key]
                if p.target == "generator" and engine.generator is None:
                    if key == "slot/prompt" and value:
                        skipped.append(f"slot {s + 1} prompt (no generator)")
                    continue
                if key == "slot/weights" and (value == () or not new_prompt and values.get((key, s)) == value):
                    continue
                if key == "slot/prompt" and not new_prompt:
                    continue
                if key not in ("slot/prompt", "slot/weights") and values.get((key, s)) == value:
                    continue
                plan.append((Ref(p, s, False), value))
        return plan, skipped

    def arm(self, engine: Engine, name_or_index: str | int | float) -> int:
        """Pre-generate a clip for every slot whose prompt (or its weights) the preset changes, of the blend
        the recall will play; returns how many."""
        preset = self.load(name_or_index, engine.registry)
        gen = engine.generator
        if not isinstance(gen, ArmingScheduler):
            raise ParamError(f"preset arm {preset.slug}: arming needs the generator (this instrument plays "
                             "clips from a folder)")
        n = 0
        for s in range(min(len(preset.slots), engine.registry.slots)):
            d = preset.slot(s)
            prompt, weights = d.get("slot/prompt"), d.get("slot/weights", ())
            if not isinstance(prompt, str) or not prompt.strip() or not isinstance(weights, tuple):
                continue
            now, now_weights = engine.values.get(("slot/prompt", s), ""), engine.values.get(("slot/weights", s), ())
            assert isinstance(now, str) and isinstance(now_weights, tuple)
            if played_prompt(s, prompt, weights) == played_prompt(s, now, now_weights):
                continue  # the slot plays it already
            n += bool(gen.arm(s, prompt, steps=_opt_int(d.get("slot/steps")), guidance=_opt_float(d.get("slot/guidance")),
                              seconds=_opt_float(d.get("slot/length")), seed=_opt_int(d.get("slot/seed")),
                              weights=weights))
        return n


def _opt_float(v: Value | None) -> float | None:
    """A checked preset number, or None where the preset leaves the slot's own."""
    return None if v is None else as_float(v)


def _opt_int(v: Value | None) -> int | None:
    return None if v is None else int(as_float(v))
