"""The visual world of the quality benchmark: scenes of coloured objects, rendered and captioned.

One world serves both halves of the benchmark. The stand-in VLM is pretrained on captioned scenes
("a photo of a small red ball on the left and a green tree."), the downstream tagging task uses
photos of the same objects. Every object kind has a shape of its own and a typical colour it wears
most of the time (as bananas are yellow), so a caption's words can be learned from pixels, while
colour alone never settles the kind.

The downstream photos differ from the pretraining ones the way a user's photos differ from web
images: more objects, smaller, some overlapping, with clutter. That gap is what fine-tuning closes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

RENDER_SIZE = 96  # square canvas; the model sees it resized (tagger's own preprocessing)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "orange": (245, 140, 20), "yellow": (240, 215, 40), "green": (40, 165, 60),
    "blue": (40, 80, 220), "purple": (140, 60, 200), "pink": (240, 120, 180), "brown": (125, 80, 40),
    "white": (245, 245, 240), "black": (25, 25, 30),
}

# kind -> typical colour. Order is the downstream task's frequency rank (most frequent first).
KINDS: dict[str, str] = {
    "ball": "red", "tree": "green", "house": "brown", "car": "blue", "flower": "pink", "sun": "yellow",
    "boat": "white", "fish": "blue", "tent": "orange", "star": "yellow", "heart": "red", "kite": "purple",
    "flag": "white", "clock": "white", "mushroom": "red", "cross": "purple", "ring": "orange",
    "arrow": "black", "moon": "yellow", "box": "brown",
}

POSITIONS = ("on the left", "on the right", "at the top", "at the bottom", "in the middle")

# Captions call an object "small" or "large" past these radii (canvas pixels); in between, no size word.
SMALL_BELOW, LARGE_ABOVE = 11.5, 15.5
# Radii drawn for an object wanted at a size: clear of the thresholds, so the size word is never in doubt.
SIZE_RADIUS: dict[str, tuple[float, float]] = {"small": (7.5, 11.0), "large": (16.0, 19.0)}


@dataclass(frozen=True)
class SceneStyle:
    """How a scene is composed and photographed."""

    radius: tuple[float, float] = (11.0, 17.0)  # object radius in canvas pixels
    typical_colour: float = 0.7  # chance an object wears its kind's typical colour
    noise: float = 5.0  # pixel noise (std, 0-255 scale)
    clutter: tuple[int, int] = (0, 2)  # grey distractor blobs per scene (inclusive range)
    strokes: tuple[int, int] = (0, 0)  # random line strokes per scene
    overlap: bool = False  # objects may overlap (the placement stops looking for free space)


# Web-like pretraining images: few, large, well separated objects on plain backgrounds.
PRETRAIN_STYLE = SceneStyle()
# The user's photos: smaller objects, more clutter, some overlap, noisier.
PHOTO_STYLE = SceneStyle(radius=(8.0, 14.0), typical_colour=0.6, noise=9.0, clutter=(1, 4), strokes=(0, 3),
                         overlap=True)


@dataclass(frozen=True)
class Thing:
    kind: str
    colour: str
    radius: float
    x: float  # centre, canvas pixels
    y: float

    @property
    def size_word(self) -> str | None:
        return "small" if self.radius < SMALL_BELOW else "large" if self.radius > LARGE_ABOVE else None

    @property
    def position(self) -> str:
        c = RENDER_SIZE / 2
        dx, dy = self.x - c, self.y - c
        if max(abs(dx), abs(dy)) < RENDER_SIZE * 0.14:
            return "in the middle"
        if abs(dx) >= abs(dy):
            return "on the left" if dx < 0 else "on the right"
        return "at the top" if dy < 0 else "at the bottom"


@dataclass(frozen=True)
class Scene:
    things: tuple[Thing, ...]
    background: tuple[tuple[int, int, int], tuple[int, int, int]]  # top and bottom colour of the gradient
    seed: int  # drives noise, clutter and drawing details

    @property
    def kinds(self) -> list[str]:
        """The distinct kinds present, in KINDS order: the scene's tags."""
        present = {t.kind for t in self.things}
        return [k for k in KINDS if k in present]


@dataclass(frozen=True)
class Want:
    """One object a scene must hold: its kind and, where given, its colour and its caption size word."""

    kind: str
    colour: str | None = None  # None: the style's rule (the kind's typical colour, or another)
    size: str | None = None  # "small" or "large" (SIZE_RADIUS); None: any radius in the style's range


def sample_scene(kinds: list[str], rng: np.random.Generator, style: SceneStyle = PRETRAIN_STYLE) -> Scene:
    """A scene holding one object of each of `kinds` (a kind may be listed twice for two objects)."""
    return compose_scene([Want(kind) for kind in kinds], rng, style)


def compose_scene(wants: list[Want], rng: np.random.Generator, style: SceneStyle = PRETRAIN_STYLE) -> Scene:
    """A scene holding one object per want, in order (later objects are drawn over earlier ones)."""
    names = list(COLOURS)
    placed: list[Thing] = []
    for want in wants:
        if want.kind not in KINDS or want.colour not in (None, *COLOURS) or want.size not in (None, *SIZE_RADIUS):
            raise ValueError(f"no such object in this world: {want}")
        if want.colour is not None:
            colour = want.colour
        elif rng.random() < style.typical_colour:
            colour = KINDS[want.kind]
        else:
            colour = names[int(rng.integers(len(names)))]
            colour = colour if colour != KINDS[want.kind] else names[(names.index(colour) + 1) % len(names)]
        r = float(rng.uniform(*(SIZE_RADIUS[want.size] if want.size else style.radius)))
        x, y = _free_spot(rng, placed, r, style.overlap)
        placed.append(Thing(want.kind, colour, r, x, y))
    background = (tuple(int(v) for v in rng.integers(70, 200, 3)), tuple(int(v) for v in rng.integers(70, 200, 3)))
    return Scene(tuple(placed), background, int(rng.integers(2**31)))


def _free_spot(rng, placed: list[Thing], r: float, overlap: bool) -> tuple[float, float]:
    margin = r + 1
    best, best_gap = None, -math.inf
    tries = 4 if overlap else 40
    for _ in range(tries):
        x, y = rng.uniform(margin, RENDER_SIZE - margin, 2)
        gap = min((math.hypot(x - t.x, y - t.y) - (r + t.radius) for t in placed), default=math.inf)
        if gap > 0:
            return float(x), float(y)
        if gap > best_gap:
            best, best_gap = (float(x), float(y)), gap
    return best


# -- captions ---------------------------------------------------------------------------------------

_TEMPLATES = ("a photo of {}.", "a picture of {}.", "{}.", "there is {}.", "a photo with {}.",
              "an image of {}.")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def describe(thing: Thing, rng: np.random.Generator) -> str:
    words = []
    if thing.size_word and rng.random() < 0.5:
        words.append(thing.size_word)
    if rng.random() < 0.7:
        words.append(thing.colour)
    words.append(thing.kind)
    phrase = " ".join(words)
    phrase = f"{_article(phrase)} {phrase}"
    if rng.random() < 0.35:
        phrase += f" {thing.position}"
    return phrase


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A short, web-like caption naming every object, some with colour, size and position."""
    order = rng.permutation(len(scene.things))
    phrases = [describe(scene.things[i], rng) for i in order]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return _TEMPLATES[int(rng.integers(len(_TEMPLATES)))].format(listed)


# -- rendering --------------------------------------------------------------------------------------

def render(scene: Scene, style: SceneStyle = PRETRAIN_STYLE) -> Image.Image:
    """The scene as an RGB image of RENDER_SIZE² pixels (deterministic given the scene)."""
    rng = np.random.default_rng(scene.seed)
    s = RENDER_SIZE
    top, bottom = np.array(scene.background[0], float), np.array(scene.background[1], float)
    t = np.linspace(0.0, 1.0, s)[:, None, None]
    pixels = np.broadcast_to(top * (1 - t) + bottom * t, (s, s, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(style.clutter[0], style.clutter[1] + 1))):
        r = rng.uniform(3, 8)
        x, y = rng.uniform(r, s - r, 2)
        grey = int(rng.integers(80, 180))
        draw.ellipse([x - r, y - r * 0.7, x + r, y + r * 0.7], fill=(grey, grey, grey - 10))
    for _ in range(int(rng.integers(style.strokes[0], style.strokes[1] + 1))):
        (x0, y0), (x1, y1) = rng.uniform(0, s, (2, 2))
        grey = int(rng.integers(40, 220))
        draw.line([x0, y0, x1, y1], fill=(grey, grey, grey), width=int(rng.integers(1, 3)))
    for thing in scene.things:
        _DRAW[thing.kind](draw, thing.x, thing.y, thing.radius, COLOURS[thing.colour], rng)
    arr = np.asarray(image, dtype=np.float32) + rng.normal(0.0, style.noise, (s, s, 3)).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _dark(c):
    return tuple(max(0, int(v * 0.35)) for v in c)


def _light(c):
    return tuple(min(255, int(v * 0.4 + 160)) for v in c)


def _ball(d, x, y, r, c, rng):
    d.ellipse([x - r, y - r, x + r, y + r], fill=c)
    d.rectangle([x - r * 0.95, y - r * 0.15, x + r * 0.95, y + r * 0.15], fill=_light(c))


def _tree(d, x, y, r, c, rng):
    d.rectangle([x - r * 0.18, y + r * 0.3, x + r * 0.18, y + r], fill=(110, 70, 30))
    d.polygon([(x, y - r), (x - r * 0.8, y + r * 0.4), (x + r * 0.8, y + r * 0.4)], fill=c)


def _house(d, x, y, r, c, rng):
    d.rectangle([x - r * 0.7, y - r * 0.1, x + r * 0.7, y + r], fill=c)
    d.polygon([(x - r, y - r * 0.1), (x, y - r), (x + r, y - r * 0.1)], fill=_dark(c))
    d.rectangle([x - r * 0.15, y + r * 0.4, x + r * 0.15, y + r], fill=_light(c))


def _car(d, x, y, r, c, rng):
    d.rectangle([x - r, y - r * 0.1, x + r, y + r * 0.45], fill=c)
    d.polygon([(x - r * 0.55, y - r * 0.1), (x - r * 0.3, y - r * 0.55), (x + r * 0.35, y - r * 0.55),
               (x + r * 0.6, y - r * 0.1)], fill=c)
    for wx in (x - r * 0.55, x + r * 0.55):
        d.ellipse([wx - r * 0.25, y + r * 0.25, wx + r * 0.25, y + r * 0.75], fill=(20, 20, 20))


def _flower(d, x, y, r, c, rng):
    for k in range(5):
        a = k * 2 * math.pi / 5
        px, py = x + math.cos(a) * r * 0.55, y + math.sin(a) * r * 0.55
        d.ellipse([px - r * 0.42, py - r * 0.42, px + r * 0.42, py + r * 0.42], fill=c)
    d.ellipse([x - r * 0.3, y - r * 0.3, x + r * 0.3, y + r * 0.3], fill=(250, 230, 60) if c != COLOURS["yellow"]
              else (120, 60, 20))


def _sun(d, x, y, r, c, rng):
    for k in range(8):
        a = k * math.pi / 4
        d.line([x + math.cos(a) * r * 0.5, y + math.sin(a) * r * 0.5, x + math.cos(a) * r, y + math.sin(a) * r],
               fill=c, width=max(1, int(r / 5)))
    d.ellipse([x - r * 0.55, y - r * 0.55, x + r * 0.55, y + r * 0.55], fill=c)


def _boat(d, x, y, r, c, rng):
    d.polygon([(x - r, y + r * 0.25), (x + r, y + r * 0.25), (x + r * 0.6, y + r * 0.75), (x - r * 0.6, y + r * 0.75)],
              fill=_dark(c))
    d.polygon([(x - r * 0.05, y - r), (x - r * 0.05, y + r * 0.15), (x - r * 0.75, y + r * 0.15)], fill=c)
    d.polygon([(x + r * 0.05, y - r * 0.7), (x + r * 0.05, y + r * 0.15), (x + r * 0.6, y + r * 0.15)], fill=c)


def _fish(d, x, y, r, c, rng):
    flip = 1 if rng.random() < 0.5 else -1
    d.polygon([(x - flip * r * 0.5, y), (x - flip * r, y - r * 0.5), (x - flip * r, y + r * 0.5)], fill=c)
    d.ellipse([x - r * 0.7, y - r * 0.42, x + r * 0.7, y + r * 0.42], fill=c)
    ex = x + flip * r * 0.35
    d.ellipse([ex - r * 0.1, y - r * 0.2, ex + r * 0.1, y], fill=(0, 0, 0))


def _tent(d, x, y, r, c, rng):
    d.polygon([(x, y - r), (x - r, y + r * 0.8), (x + r, y + r * 0.8)], fill=c)
    d.polygon([(x, y - r * 0.1), (x - r * 0.25, y + r * 0.8), (x + r * 0.25, y + r * 0.8)], fill=_dark(c))


def _star(d, x, y, r, c, rng):
    points = []
    for k in range(10):
        a = -math.pi / 2 + k * math.pi / 5
        rr = r if k % 2 == 0 else r * 0.42
        points.append((x + math.cos(a) * rr, y + math.sin(a) * rr))
    d.polygon(points, fill=c)


def _heart(d, x, y, r, c, rng):
    d.ellipse([x - r, y - r * 0.75, x, y + r * 0.15], fill=c)
    d.ellipse([x, y - r * 0.75, x + r, y + r * 0.15], fill=c)
    d.polygon([(x - r * 0.97, y - r * 0.15), (x + r * 0.97, y - r * 0.15), (x, y + r)], fill=c)


def _kite(d, x, y, r, c, rng):
    d.polygon([(x, y - r), (x + r * 0.65, y - r * 0.2), (x, y + r * 0.7), (x - r * 0.65, y - r * 0.2)], fill=c)
    d.line([x, y - r, x, y + r * 0.7], fill=_dark(c), width=1)
    d.line([x - r * 0.65, y - r * 0.2, x + r * 0.65, y - r * 0.2], fill=_dark(c), width=1)
    d.line([x, y + r * 0.7, x + r * 0.3, y + r], fill=(30, 30, 30), width=1)


def _flag(d, x, y, r, c, rng):
    d.rectangle([x - r, y - r, x - r * 0.85, y + r], fill=(80, 80, 80))
    for k in range(4):
        top = y - r + k * r * 0.25
        d.rectangle([x - r * 0.85, top, x + r, top + r * 0.25], fill=_dark(c) if k % 2 else c)


def _clock(d, x, y, r, c, rng):
    d.ellipse([x - r, y - r, x + r, y + r], fill=_dark(c))
    d.ellipse([x - r * 0.8, y - r * 0.8, x + r * 0.8, y + r * 0.8], fill=c)
    dark = (20, 20, 20) if sum(c) > 300 else (240, 240, 240)
    d.line([x, y, x, y - r * 0.65], fill=dark, width=max(1, int(r / 7)))
    d.line([x, y, x + r * 0.45, y + r * 0.1], fill=dark, width=max(1, int(r / 7)))


def _mushroom(d, x, y, r, c, rng):
    d.rectangle([x - r * 0.22, y - r * 0.05, x + r * 0.22, y + r], fill=(235, 225, 200))
    d.pieslice([x - r, y - r * 0.9, x + r, y + r * 0.7], 180, 360, fill=c)
    for dx in (-0.5, 0.1, 0.45):
        d.ellipse([x + dx * r - r * 0.1, y - r * 0.45, x + dx * r + r * 0.1, y - r * 0.25], fill=_light(c))


def _cross(d, x, y, r, c, rng):
    w = r * 0.33
    d.rectangle([x - w, y - r, x + w, y + r], fill=c)
    d.rectangle([x - r, y - w, x + r, y + w], fill=c)


def _ring(d, x, y, r, c, rng):
    d.ellipse([x - r, y - r, x + r, y + r], outline=c, width=max(2, int(r * 0.35)))


def _arrow(d, x, y, r, c, rng):
    flip = 1 if rng.random() < 0.5 else -1
    d.rectangle([x - r, y - r * 0.15, x + r * 0.2, y + r * 0.15] if flip > 0 else
                [x - r * 0.2, y - r * 0.15, x + r, y + r * 0.15], fill=c)
    d.polygon([(x + flip * r, y), (x + flip * r * 0.1, y - r * 0.55), (x + flip * r * 0.1, y + r * 0.55)], fill=c)


def _moon(d, x, y, r, c, rng):
    # A crescent: the part of a disc outside a second, offset disc (angles where the circles cross).
    dx, ri = 0.45, 0.8
    a0 = math.acos((1 + dx * dx - ri * ri) / (2 * dx))
    b0 = math.acos((math.cos(a0) - dx) / ri)
    outer = [(x + r * math.cos(a), y + r * math.sin(a)) for a in np.linspace(a0, 2 * math.pi - a0, 16)]
    inner = [(x + r * (dx + ri * math.cos(b)), y + r * ri * math.sin(b))
             for b in np.linspace(2 * math.pi - b0, b0, 12)]
    d.polygon(outer + inner, fill=c)


def _box(d, x, y, r, c, rng):
    d.rectangle([x - r * 0.8, y - r * 0.5, x + r * 0.6, y + r * 0.9], fill=c)
    d.polygon([(x - r * 0.8, y - r * 0.5), (x - r * 0.4, y - r * 0.9), (x + r, y - r * 0.9), (x + r * 0.6, y - r * 0.5)],
              fill=_light(c))
    d.polygon([(x + r * 0.6, y - r * 0.5), (x + r, y - r * 0.9), (x + r, y + r * 0.5), (x + r * 0.6, y + r * 0.9)],
              fill=_dark(c))


_DRAW = {"ball": _ball, "tree": _tree, "house": _house, "car": _car, "flower": _flower, "sun": _sun,
         "boat": _boat, "fish": _fish, "tent": _tent, "star": _star, "heart": _heart, "kite": _kite,
         "flag": _flag, "clock": _clock, "mushroom": _mushroom, "cross": _cross, "ring": _ring,
         "arrow": _arrow, "moon": _moon, "box": _box}
assert set(_DRAW) == set(KINDS)
