"""`python -m instrument.layouts [--check] [--root DIR]`: write (or check) every layout and preview.

Each format module (FORMATS) offers `files(registry) -> {path: bytes}` (paths relative to the repo
root) and `previews(path, data) -> [Preview]` (the geometry read back from the file it wrote).
Previews go to docs/layouts/<name>.png. `--check` writes nothing and exits 1 naming each file
that differs from what the registry makes now (a test runs it).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

from instrument.layouts.common import LAYOUT_SLOTS
from instrument.layouts.preview import draw, same_pixels, save
from instrument.params import Registry

FORMATS = ("instrument.layouts.pd", "instrument.layouts.maxpat", "instrument.layouts.tosc")
ROOT = Path(__file__).resolve().parents[2]
PREVIEWS = "docs/layouts"


def build(registry: Registry | None = None) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Every layout file's bytes, and every preview's image, keyed by path relative to the root."""
    reg = registry or Registry(slots=LAYOUT_SLOTS)
    files: dict[str, bytes] = {}
    images: dict[str, Any] = {}
    for name in FORMATS:
        mod = importlib.import_module(name)
        made: dict[str, bytes] = mod.files(reg)
        files |= made
        for path, data in made.items():
            for p in mod.previews(path, data):
                images[f"{PREVIEWS}/{p.name}.png"] = draw(p.boxes, p.width, p.height, p.title, p.scale)
    return files, images


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m instrument.layouts", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a committed file differs")
    ap.add_argument("--root", type=Path, default=ROOT, help="the repository root (default: this checkout)")
    args = ap.parse_args(argv)
    files, images = build()
    stale = []
    for rel, data in files.items():
        path = args.root / rel
        if args.check:
            if not path.exists() or path.read_bytes() != data:
                stale.append(rel)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    for rel, img in images.items():
        path = args.root / rel
        if args.check:
            if not path.exists() or not same_pixels(path, img):
                stale.append(rel)
        else:
            save(img, path)
    if stale:
        print(f"out of date: {', '.join(stale)}: run `make layouts` and commit them", file=sys.stderr)
        return 1
    if not args.check:
        print(f"wrote {len(files)} layouts and {len(images)} previews")
    return 0


if __name__ == "__main__":
    sys.exit(main())
