"""Procedural scenes for the offline sample data: coloured shapes whose text is true to the image.

A :class:`Scene` is a background plus 1..k non-overlapping shapes (circle, square, triangle) of
distinct colour/shape pairs. Everything said about it -- captions, questions and answers,
referring expressions, boxes -- is derived from the same shape list that is drawn, so a model
trained on it can measurably learn colours, shapes, counts and positions.

Boxes are ``[x0, y0, x1, y1]`` in pixels with ``x1 = x0 + size`` (exclusive end); the drawn
shape lies inside it and covers its centre pixel.

Image-infilling / text-to-image codes come from :func:`block_codes`, a *stand-in* quantiser:
each 8×8 block's mean colour is quantised to 5+4+4 bits, giving ids in [0, 8192). It is not a
VQ-GAN; it only gives the code streams a learnable, image-dependent target of the right shape.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = ((235, 235, 235), (200, 200, 200), (90, 90, 90))
# Words for object swaps in image-text-matching negatives (drawn shapes and a few never drawn).
OBJECT_WORDS = (*SHAPES, "star", "heart", "ring", "cross")


@dataclass
class Shape:
    color: str
    shape: str
    box: tuple[int, int, int, int]

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def with_article(self) -> str:
        return ("an " if self.color[0] in "aeiou" else "a ") + self.name

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


@dataclass
class Scene:
    width: int
    height: int
    background: tuple[int, int, int]
    shapes: list[Shape]

    # -- rendering -------------------------------------------------------------------------
    def render(self) -> Image.Image:
        img = Image.new("RGB", (self.width, self.height), self.background)
        draw = ImageDraw.Draw(img)
        for s in self.shapes:
            x0, y0, x1, y1 = s.box
            fill = COLORS[s.color]
            if s.shape == "circle":
                draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)
            elif s.shape == "square":
                draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
            else:
                draw.polygon([((x0 + x1) / 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=fill)
        return img

    # -- language about the scene ----------------------------------------------------------
    def place(self, s: Shape) -> str:
        """"left", "top right", "middle", ...: the third of the image holding the shape's centre."""
        cx, cy = s.center
        col = ("left", "middle", "right")[min(int(3 * cx / self.width), 2)]
        row = ("top", "middle", "bottom")[min(int(3 * cy / self.height), 2)]
        if row == "middle" or col == "middle":
            return col if row == "middle" else row
        return f"{row} {col}"

    def position(self, s: Shape) -> str:
        """"on the left", "at the top right", "in the middle", ..."""
        place = self.place(s)
        if place == "middle":
            return "in the middle"
        return f"on the {place}" if place in ("left", "right") else f"at the {place}"

    def caption(self, rng: random.Random) -> str:
        parts = [f"{s.with_article} {self.position(s)}" for s in self.shapes]
        text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return rng.choice(("", "a picture of ", "an image with ")) + text + "."

    def unique(self, attr: str) -> list[Shape]:
        """Shapes whose colour (or shape kind) occurs once in the scene."""
        values = [getattr(s, attr) for s in self.shapes]
        return [s for s in self.shapes if values.count(getattr(s, attr)) == 1]

    def questions(self, rng: random.Random) -> list[tuple[str, str, str]]:
        """True (question, answer, answer type) triples."""
        qa = [("how many shapes are there?", str(len(self.shapes)), "how many")]
        for s in self.unique("shape"):
            qa.append((f"what color is the {s.shape}?", s.color, "color"))
        for s in self.unique("color"):
            qa.append((f"what shape is {s.color}?", s.shape, "shape"))
            qa.append((f"where is the {s.name}?", self.place(s), "other"))
        present = {s.name for s in self.shapes}
        # Half the time ask about a shape that is there, so "yes" and "no" are balanced.
        name = rng.choice(sorted(present)) if rng.random() < 0.5 else \
            f"{rng.choice(list(COLORS))} {rng.choice(SHAPES)}"
        qa.append((f"is there {'an' if name[0] in 'aeiou' else 'a'} {name}?", "yes" if name in present else "no",
                   "yes/no"))
        return qa

    def referring(self, s: Shape) -> str:
        if s in self.unique("shape"):
            return f"the {s.shape}"
        return f"the {s.name} {self.position(s)}"


def random_scene(rng: random.Random, width: int, height: int, max_shapes: int = 3,
                 min_size: int | None = None, max_size: int | None = None) -> Scene:
    """1..max_shapes non-overlapping shapes (distinct colour/shape pairs) on a plain background."""
    side = min(width, height)
    lo = min_size or max(12, side // 6)
    hi = max_size or max(lo + 1, side // 3)
    shapes: list[Shape] = []
    names: set[str] = set()
    want = rng.randint(1, max_shapes)
    for _ in range(50 * want):
        if len(shapes) == want:
            break
        size = rng.randint(lo, hi)
        x0, y0 = rng.randint(0, width - size), rng.randint(0, height - size)
        box = (x0, y0, x0 + size, y0 + size)
        color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
        # A margin of 2 px keeps shapes (and their boxes) apart.
        if f"{color} {shape}" in names or any(
                box[0] < b[2] + 2 and b[0] < box[2] + 2 and box[1] < b[3] + 2 and b[1] < box[3] + 2
                for b in (t.box for t in shapes)):
            continue
        names.add(f"{color} {shape}")
        shapes.append(Shape(color, shape, box))
    return Scene(width, height, rng.choice(BACKGROUNDS), shapes)


def block_codes(img: Image.Image) -> np.ndarray:
    """Stand-in "VQ codes": mean colour of each 8×8 block quantised to 5/4/4 bits -> [0, 8192).

    Returns the ids in raster order, ``(H/8)·(W/8)`` of them.
    """
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    h, w = a.shape[0] // 8, a.shape[1] // 8
    means = a[: h * 8, : w * 8].reshape(h, 8, w, 8, 3).mean(axis=(1, 3)).astype(np.int64)
    r, g, b = means[..., 0] >> 3, means[..., 1] >> 4, means[..., 2] >> 4
    return ((r << 8) | (g << 4) | b).reshape(-1)
