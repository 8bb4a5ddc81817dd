"""Converter patches we must carry, applied in memory while converting; site-packages stay untouched.

Each patch is a unified diff in the repository's `patches/` folder (see its README for why each one
exists and when it can go), with a few header lines before the diff:

    Patch: coremltools-2633-numpy24-cast
    Package: coremltools                         the distribution it patches
    Versions: 9.0                                versions it was written and tested against
    Module: coremltools.converters.mil.frontend.torch.ops

Applying one: read the installed module's source, apply the hunks (their context must match the
installed text exactly, as `patch` would require), then recompile only the module-level functions
the diff changed, in the module's own namespace, and swap them in for the duration of a `with
converter_patches():` block. Callers look such functions up in the module's globals at call time,
so e.g. a new `_cast` is what the registered `_int`/`_bool` converters call. Decorated functions and
changes outside function bodies are refused: swapping those would not take effect.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.metadata
import inspect
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from instrument.coreml import CoreMLError

log = logging.getLogger(__name__)

PATCH_DIR = Path(__file__).resolve().parents[2] / "patches"
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_HEADERS = ("Patch", "Package", "Versions", "Module")
_SEARCH = 200  # lines a hunk may have moved from where the diff says, as `patch` allows


class PatchError(CoreMLError):
    """A patch file cannot be read, or no longer applies to the installed package."""


@dataclass(frozen=True)
class Hunk:
    start: int  # 1-based line in the original file
    old: tuple[str, ...]  # context and removed lines, without newlines
    new: tuple[str, ...]  # context and added lines


@dataclass(frozen=True)
class SourcePatch:
    name: str
    path: Path
    package: str
    versions: tuple[str, ...]
    module: str
    hunks: tuple[Hunk, ...]

    def installed_version(self) -> str | None:
        try:
            return importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            return None


def parse_patch(path: Path) -> SourcePatch:
    """Read one patch file: its headers and the hunks of its single-file unified diff."""
    lines = Path(path).read_text().splitlines()
    headers: dict[str, str] = {}
    i = 0
    while i < len(lines) and not lines[i].startswith("--- "):
        key, sep, value = lines[i].partition(":")
        if sep and key.strip() in _HEADERS:
            headers[key.strip()] = value.strip()
        i += 1
    missing = [h for h in _HEADERS if h not in headers]
    if missing:
        raise PatchError(f"{path}: header lines {', '.join(missing)} missing; expected {', '.join(_HEADERS)}")
    if i + 1 >= len(lines) or not lines[i + 1].startswith("+++ "):
        raise PatchError(f"{path}: no unified diff ('--- a/...' then '+++ b/...') after the headers")
    hunks: list[Hunk] = []
    i += 2
    while i < len(lines):
        m = _HUNK.match(lines[i])
        if not m:
            if lines[i].startswith("--- "):
                raise PatchError(f"{path}: diffs more than one file; one file per patch")
            i += 1
            continue
        start, n_old = int(m.group(1)), int(m.group(2) or 1)
        n_new = int(m.group(4) or 1)
        old: list[str] = []
        new: list[str] = []
        i += 1
        while i < len(lines) and (len(old) < n_old or len(new) < n_new):
            line = lines[i]
            tag, text = (line[:1], line[1:]) if line else (" ", "")
            if tag in " -":
                old.append(text)
            if tag in " +":
                new.append(text)
            if tag not in " -+\\":
                raise PatchError(f"{path}: line {i + 1} {line!r} is not part of a hunk")
            i += 1
        if (len(old), len(new)) != (n_old, n_new):
            raise PatchError(f"{path}: a hunk at line {start} is shorter than its header says")
        hunks.append(Hunk(start, tuple(old), tuple(new)))
    if not hunks:
        raise PatchError(f"{path}: no hunks")
    return SourcePatch(
        name=headers["Patch"],
        path=Path(path),
        package=headers["Package"],
        versions=tuple(v.strip() for v in headers["Versions"].split(",") if v.strip()),
        module=headers["Module"],
        hunks=tuple(hunks),
    )


def load_patches(directory: Path = PATCH_DIR) -> list[SourcePatch]:
    """Every `*.diff` in `directory`, by name; none when the folder is absent (an installed wheel)."""
    if not directory.is_dir():
        return []
    return [parse_patch(p) for p in sorted(directory.glob("*.diff"))]


def apply_hunks(source: str, hunks: tuple[Hunk, ...], label: str = "source") -> str:
    """`source` with the hunks applied; PatchError naming the hunk whose context does not match."""
    lines = source.splitlines()
    out: list[str] = []
    pos = 0  # next line of `lines` not yet copied
    for h in hunks:
        want = h.start - 1 if h.old else h.start
        at = next(
            (
                c
                for d in range(_SEARCH + 1)
                for c in ((want + d, want - d) if d else (want,))
                if pos <= c <= len(lines) - len(h.old) and tuple(lines[c : c + len(h.old)]) == h.old
            ),
            None,
        )
        if at is None:
            raise PatchError(
                f"{label}: the hunk at line {h.start} does not apply (its context is not in the installed "
                "source): the package changed; check whether the patch is still needed (patches/README.md)"
            )
        out.extend(lines[pos:at])
        out.extend(h.new)
        pos = at + len(h.old)
    out.extend(lines[pos:])
    return "\n".join(out) + ("\n" if source.endswith("\n") else "")


def _text(node: ast.stmt, lines: list[str]) -> str:
    # by line numbers: ast.get_source_segment splits the whole file on every call (minutes on ops.py)
    start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    return "\n".join(lines[start - 1 : node.end_lineno])


def _functions(tree: ast.Module, lines: list[str]) -> dict[str, tuple[ast.FunctionDef, str]]:
    return {node.name: (node, _text(node, lines)) for node in tree.body if isinstance(node, ast.FunctionDef)}


def _rest(tree: ast.Module, lines: list[str]) -> list[str]:
    """The module's top-level statements other than function definitions, as text."""
    return [_text(n, lines) for n in tree.body if not isinstance(n, ast.FunctionDef)]


@dataclass(frozen=True)
class PreparedPatch:
    patch: SourcePatch
    module: ModuleType
    functions: dict[str, ast.FunctionDef]  # name -> its patched definition


def prepare(patch: SourcePatch) -> PreparedPatch:
    """Check that `patch` applies to the installed module; PatchError saying why not."""
    try:
        module = importlib.import_module(patch.module)
    except ImportError as e:
        raise PatchError(f"{patch.path.name}: cannot import {patch.module} ({e})") from e
    original = inspect.getsource(module)
    patched = apply_hunks(original, patch.hunks, f"{patch.path.name} on {patch.module}")
    old_tree, new_tree = ast.parse(original), ast.parse(patched)
    old_lines, new_lines = original.splitlines(), patched.splitlines()
    if _rest(old_tree, old_lines) != _rest(new_tree, new_lines):
        raise PatchError(f"{patch.path.name}: changes {patch.module} outside function bodies; only "
                         "module-level functions can be swapped at run time")
    old_fns, new_fns = _functions(old_tree, old_lines), _functions(new_tree, new_lines)
    changed = {name: node for name, (node, text) in new_fns.items() if old_fns.get(name, (None, ""))[1] != text}
    for name, node in changed.items():
        if node.decorator_list:
            raise PatchError(f"{patch.path.name}: changes the decorated function {name}; a swapped copy "
                             "would not be what its decorator registered")
    if not changed:
        raise PatchError(f"{patch.path.name}: changes no function of {patch.module}")
    return PreparedPatch(patch, module, changed)


def check_patch(patch: SourcePatch) -> str | None:
    """None when `patch` applies to what is installed; otherwise why not (one line)."""
    try:
        prepare(patch)
    except PatchError as e:
        return str(e)
    return None


@contextlib.contextmanager
def converter_patches(directory: Path = PATCH_DIR) -> Iterator[list[str]]:
    """Apply every patch in `directory` that applies; yield their names; restore the originals after.

    A patch that no longer applies is skipped with a warning (the package changed: perhaps fixed
    upstream), so conversion goes on and fails, if at all, with the package's own error.
    """
    saved: list[tuple[ModuleType, str, object]] = []
    applied: list[str] = []
    if not directory.is_dir():
        log.warning("no patches folder at %s (installed without the repository?): converting with the "
                    "packages as installed (coremltools 9.0 fails with NumPy >= 2.4 without its patch)", directory)
    try:
        for patch in load_patches(directory):
            try:
                ready = prepare(patch)
            except PatchError as e:
                log.warning("patch %s skipped: %s", patch.name, e)
                continue
            filename = f"{ready.module.__file__} (patched by {patch.path.name})"
            for name, node in ready.functions.items():
                code = compile(ast.Module(body=[node], type_ignores=[]), filename, "exec")
                saved.append((ready.module, name, ready.module.__dict__.get(name)))
                exec(code, ready.module.__dict__)  # defines `name` in the module, with its globals
            applied.append(patch.name)
            log.debug("patch %s applied to %s %s (%s)", patch.name, patch.package,
                      patch.installed_version(), ", ".join(ready.functions))
        yield applied
    finally:
        for module, name, value in reversed(saved):
            if value is None:
                module.__dict__.pop(name, None)
            else:
                setattr(module, name, value)
