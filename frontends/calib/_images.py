"""Folders of images as calibration data: :class:`Preprocess` and one batch at a time."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from onnx_hwprune.errors import UserError
from onnx_hwprune.frontends.calib._specs import Dim, InputSpec, single_input

__all__ = ["IMAGE_SUFFIXES", "Preprocess", "iter_image_folder"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Preprocess:
    """How to turn an image file into one model input sample.

    ``x = (pixel * scale - mean) / std`` per channel, after resizing to ``size`` (H, W)
    and ordering channels. ``size=None`` takes H and W from the model's input shape.
    """

    size: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "NCHW"
    order: str = "RGB"
    scale: float = 1.0 / 255.0

    def __post_init__(self) -> None:
        if self.layout not in ("NCHW", "NHWC"):
            raise UserError(f"preprocess layout must be NCHW or NHWC, got {self.layout!r}")
        if self.order not in ("RGB", "BGR", "GRAY"):
            raise UserError(f"preprocess order must be RGB, BGR or GRAY, got {self.order!r}")
        channels = 1 if self.order == "GRAY" else 3
        for key, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, channels):
                raise UserError(
                    f"preprocess {key} needs 1 or {channels} values for {self.order}, "
                    f"got {len(values)}"
                )
        if any(s == 0 for s in self.std):
            raise UserError("preprocess std must not contain 0")
        if self.size is not None and (len(self.size) != 2 or min(self.size) <= 0):
            raise UserError(f"preprocess size must be two positive ints H,W, got {self.size}")

    @classmethod
    def parse(cls, text: str) -> Preprocess:
        """Parse ``"size=224,224;mean=0.485,0.456,0.406;std=...;layout=NCHW;order=RGB"``.

        Keys may appear in any order and be left out (defaults apply); ``scale`` is also
        accepted (``scale=0.00392``).
        """
        fields: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in text.split(";"))):
            key, sep, value = (s.strip() for s in item.partition("="))
            if not sep or not value:
                raise UserError(f"preprocess item {item!r} is not key=value")
            fields[key] = _parse_field(key, value)
        return cls(**fields)

    def channels(self) -> int:
        return 1 if self.order == "GRAY" else 3


def _parse_field(key: str, value: str) -> Any:
    try:
        if key == "size":
            return tuple(int(v) for v in value.split(","))
        if key in ("mean", "std"):
            return tuple(float(v) for v in value.split(","))
        if key == "scale":
            return float(value)
    except ValueError:
        raise UserError(f"preprocess {key}={value!r}: expected numbers") from None
    if key in ("layout", "order"):
        return value.upper()
    raise UserError(
        f"unknown preprocess key {key!r}; expected one of size, mean, std, layout, order, scale"
    )


def iter_image_folder(
    folder: Path, specs: Mapping[str, InputSpec], batch_size: int, preprocess: Preprocess | None
) -> Iterator[dict[str, np.ndarray]]:
    name = single_input(specs, "an image folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"folder {folder} has no .png/.jpg/.jpeg images")
    shape, dtype = specs[name]
    prep = _sized(preprocess or Preprocess(), shape)
    for start in range(0, len(files), batch_size):
        samples = [_load_image(path, prep) for path in files[start : start + batch_size]]
        yield {name: np.stack(samples).astype(dtype, copy=False)}


def _sized(prep: Preprocess, shape: tuple[Dim, ...]) -> Preprocess:
    """Fill ``prep.size`` from the model's static H, W when the user gave none."""
    if prep.size is not None:
        return prep
    if len(shape) != 4:
        raise UserError(f"image input must be 4-D (N,C,H,W or N,H,W,C), the model has {shape}")
    h, w = (shape[2], shape[3]) if prep.layout == "NCHW" else (shape[1], shape[2])
    if not (isinstance(h, int) and isinstance(w, int)):
        raise UserError("the model's image size is dynamic: give preprocess size=H,W")
    return dataclasses.replace(prep, size=(h, w))


def _load_image(path: Path, prep: Preprocess) -> np.ndarray:
    """Decode, resize and normalize one image into a float32 CHW or HWC array."""
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; either way a
            # decompression bomb is bad input, not something to decode.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image = image.convert("L" if prep.order == "GRAY" else "RGB")
                h, w = prep.size  # type: ignore[misc]
                pixels = np.asarray(image.resize((w, h), Image.Resampling.BILINEAR), np.float32)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UserError(f"refusing image {path}: {err}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(f"cannot read image {path}: {err}") from None
    pixels = pixels.reshape(h, w, -1)
    if prep.order == "BGR":
        pixels = pixels[..., ::-1]
    mean = np.asarray(prep.mean, np.float32)
    std = np.asarray(prep.std, np.float32)
    pixels = (pixels * np.float32(prep.scale) - mean) / std
    return pixels.transpose(2, 0, 1) if prep.layout == "NCHW" else pixels
