"""Seeded text lines rendered with Pillow in the Debian DejaVu fonts."""

from __future__ import annotations

import glob

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["CHARS", "FONTS", "random_text", "random_font", "render"]

CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.,:-"
FONTS = sorted(glob.glob("/usr/share/fonts/truetype/dejavu/DejaVuSans*.ttf"))


def random_text(rng: np.random.Generator, min_words: int = 1) -> str:
    """``min_words``-3 words of 2-6 characters."""
    words = []
    for _ in range(int(rng.integers(min_words, 4))):
        words.append("".join(rng.choice(list(CHARS), size=int(rng.integers(2, 7)))))
    return " ".join(words)


def random_font(rng: np.random.Generator, low: int = 26, high: int = 36):
    if not FONTS:
        raise SystemExit("no DejaVu fonts: apt-get install -y fonts-dejavu-core")
    return ImageFont.truetype(FONTS[int(rng.integers(len(FONTS)))], int(rng.integers(low, high)))


def render(text: str, rng: np.random.Generator) -> Image.Image:
    """One line, black on a light grey background, with a random font, size and margin."""
    font = random_font(rng)
    left, top, right, bottom = font.getbbox(text)
    pad = int(rng.integers(4, 12))
    bg = int(rng.integers(200, 256))
    img = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), (bg, bg, bg))
    ImageDraw.Draw(img).text((pad - left, pad - top), text, font=font, fill=(0, 0, 0))
    return img
