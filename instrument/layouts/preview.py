"""PNG previews drawn from a layout file's own geometry (so a preview cannot drift from its layout).

Each format module reads the file it wrote back into `Box`es (its own coordinates, its own labels)
and `draw()` renders them: a box per widget, its kind shown by its shape, its label in Pillow's
built-in bitmap font (the same pixels on every machine). Pillow is a development dependency:
`make layouts` and the tests need it, the instrument does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

BACKGROUND = (34, 36, 40)
PANEL = (52, 56, 62)
INK = (230, 230, 225)
DIM = (150, 155, 160)
KIND_COLOURS = {
    "fader": (90, 160, 220), "toggle": (230, 170, 60), "button": (230, 110, 90), "text": (120, 200, 140),
    "menu": (180, 130, 220), "xy": (90, 200, 200), "meter": (120, 220, 90), "number": (220, 200, 120),
    "label": (150, 155, 160), "comment": (120, 125, 130), "object": (200, 200, 200), "panel": (70, 75, 82),
}


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    w: float
    h: float
    kind: str  # a key of KIND_COLOURS
    label: str = ""


@dataclass(frozen=True)
class Preview:
    """One picture of a layout (a Max patch, a Pd patch, a TouchOSC page)."""

    name: str  # the PNG's file name without .png (docs/layouts/<name>.png)
    boxes: list[Box]
    width: int
    height: int
    title: str
    scale: float = 1.0


def draw(boxes: list[Box], width: int, height: int, title: str, scale: float = 1.0) -> Any:
    """An RGB image of the boxes on a `width` x `height` canvas (layout units, times `scale`)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default_imagefont()
    img = Image.new("RGB", (max(1, round(width * scale)), max(1, round(height * scale)) + 18), BACKGROUND)
    d = ImageDraw.Draw(img)
    d.text((6, 3), title, fill=INK, font=font)
    for b in boxes:
        x0, y0 = round(b.x * scale), round(b.y * scale) + 18
        x1, y1 = x0 + max(2, round(b.w * scale)) - 1, y0 + max(2, round(b.h * scale)) - 1
        c = KIND_COLOURS.get(b.kind, INK)
        if b.kind == "panel":
            d.rectangle((x0, y0, x1, y1), fill=PANEL, outline=c)
        elif b.kind == "comment":
            pass
        elif b.kind == "xy":
            d.rectangle((x0, y0, x1, y1), outline=c)
            d.line(((x0 + x1) // 2, y0, (x0 + x1) // 2, y1), fill=c)
            d.line((x0, (y0 + y1) // 2, x1, (y0 + y1) // 2), fill=c)
        elif b.kind in ("fader", "meter"):
            d.rectangle((x0, y0, x1, y1), outline=c)
            if y1 - y0 >= x1 - x0:  # vertical: fill the lower third
                d.rectangle((x0 + 2, y1 - (y1 - y0) // 3, x1 - 2, y1 - 2), fill=c)
            else:
                d.rectangle((x0 + 2, y0 + 2, x0 + (x1 - x0) // 3, y1 - 2), fill=c)
        elif b.kind == "toggle":
            d.rectangle((x0, y0, x1, y1), outline=c)
            d.line((x0 + 3, y0 + 3, x1 - 3, y1 - 3), fill=c)
            d.line((x0 + 3, y1 - 3, x1 - 3, y0 + 3), fill=c)
        elif b.kind == "button":
            d.ellipse((x0, y0, x1, y1), outline=c)
        else:
            d.rectangle((x0, y0, x1, y1), outline=c)
        if b.label:
            text = b.label if len(b.label) <= 80 else b.label[:77] + "..."
            d.text((x0 + 3, y0 + 2), text, fill=DIM if b.kind in ("comment", "panel") else INK, font=font)
    return img


def save(img: Any, path: Path) -> None:
    """Write deterministically (no timestamps or text chunks; fixed compression)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", optimize=False, compress_level=9)


def same_pixels(path: Path, img: Any) -> bool:
    """Whether the PNG at `path` holds exactly `img`'s pixels (the check a test makes)."""
    from PIL import Image

    with Image.open(path) as old:
        return old.size == img.size and old.convert("RGB").tobytes() == img.convert("RGB").tobytes()
