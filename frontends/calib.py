"""Calibration data: stream batches of model inputs from an npz, a folder of images or arrays.

Everything funnels into :func:`iter_calibration`, which yields ``{input name: batch}``
dicts checked against the model's inputs (names, dtypes, static dims). Memory stays
bounded by one batch: npz members are decoded row-block by row-block straight from the zip
(``np.load`` would read a whole member, even with ``mmap_mode``), images are read one batch
at a time.

Example::

    model = onnx.load("digits_resnet.onnx")
    for batch in iter_calibration("digits_calib.npz", input_specs(model), batch_size=64):
        ...  # batch == {"input": float32 array [<=64, 1, 8, 8]}
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
import zipfile
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import onnx
from PIL import Image, UnidentifiedImageError

from onnx_hwprune.errors import UserError

__all__ = [
    "IMAGE_SUFFIXES",
    "BatchFactory",
    "InputSpec",
    "Preprocess",
    "calib_factory",
    "input_specs",
    "iter_calibration",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

Dim = int | str | None
InputSpec = tuple[tuple[Dim, ...], np.dtype]
"""(shape, dtype) of one model input; a dim is an int, or a str/None when dynamic."""


def input_specs(model: onnx.ModelProto) -> dict[str, InputSpec]:
    """Return ``{name: (shape, dtype)}`` for the model's real inputs, in graph order.

    Graph inputs that are also initializers (IR < 4 models list weights as inputs) are
    not inputs a user feeds, so they are left out.
    """
    weights = {t.name for t in model.graph.initializer}
    specs: dict[str, InputSpec] = {}
    for value in model.graph.input:
        if value.name in weights:
            continue
        tensor_type = value.type.tensor_type
        dims = tuple(_dim(d) for d in tensor_type.shape.dim)
        specs[value.name] = (dims, onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
    return specs


def _dim(dim: onnx.TensorShapeProto.Dimension) -> Dim:
    if dim.HasField("dim_value"):
        return dim.dim_value
    return dim.dim_param or None


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


def iter_calibration(
    source: str | Path | np.ndarray | Mapping[str, np.ndarray] | Iterable[Any],
    specs: Mapping[str, InputSpec],
    batch_size: int = 32,
    preprocess: Preprocess | None = None,
    limit: int | None = None,
    extra_keys: Collection[str] = ("label",),
) -> Iterator[dict[str, np.ndarray]]:
    """Yield checked batches ``{input name: array}`` from any supported source.

    Args:
        source: an ``.npz`` path (arrays keyed by input name), a folder of PNG/JPEG images
            (single-input models; read in sorted name order), an array (single-input
            models), a dict name -> array, or an iterable of such arrays/dicts, each
            taken as one batch.
        specs: the model's inputs, from :func:`input_specs`.
        batch_size: samples per batch (npz, folder, arrays); the model's static batch
            dim overrides it.
        preprocess: for image folders; defaults to ``Preprocess()`` sized from the model.
        limit: stop after this many samples.
        extra_keys: keys that an npz or dict may carry beyond the inputs and that are
            skipped (test sets carry ``label``).

    Raises:
        UserError: on any mismatch with the model, unreadable data, or zero samples.
    """
    if batch_size <= 0:
        raise UserError(f"batch size must be positive, got {batch_size}")
    if limit is not None and limit <= 0:
        raise UserError(f"sample limit must be positive, got {limit}")
    batch_size = _effective_batch_size(specs, batch_size)
    batches = _open_source(source, specs, batch_size, preprocess, extra_keys)
    yield from _limited(batches, specs, limit)


def _effective_batch_size(specs: Mapping[str, InputSpec], batch_size: int) -> int:
    static = {shape[0] for shape, _ in specs.values() if shape and isinstance(shape[0], int)}
    if len(static) == 1 and batch_size != (fixed := static.pop()):
        logger.info("model has a static batch dim of %d: using it instead of %d", fixed, batch_size)
        return fixed
    return batch_size


def _open_source(
    source: Any,
    specs: Mapping[str, InputSpec],
    batch_size: int,
    preprocess: Preprocess | None,
    extra_keys: Collection[str],
) -> Iterator[dict[str, np.ndarray]]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            return _iter_image_folder(path, specs, batch_size, preprocess)
        return _iter_npz(path, specs, batch_size, extra_keys)
    if isinstance(source, (np.ndarray, Mapping)):
        arrays = _as_named(source, specs, extra_keys)
        _check_arrays(arrays, specs, "arrays")
        return _slice_arrays(arrays, batch_size)
    if isinstance(source, Iterable):
        return (_as_named(batch, specs, extra_keys) for batch in source)
    raise UserError(f"unsupported calibration source of type {type(source).__name__}")


def _limited(
    batches: Iterator[dict[str, np.ndarray]], specs: Mapping[str, InputSpec], limit: int | None
) -> Iterator[dict[str, np.ndarray]]:
    """Check each batch, cut at ``limit`` samples, and fail if nothing came out."""
    seen = 0
    for batch in batches:
        _check_arrays(batch, specs, "batch")
        if limit is not None and seen + _count(batch) > limit:
            batch = {name: array[: limit - seen] for name, array in batch.items()}
        if _count(batch) == 0:
            continue
        seen += _count(batch)
        yield batch
        if limit is not None and seen >= limit:
            return
    if seen == 0:
        raise UserError("calibration data has zero samples")


def _count(batch: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(batch.values())))


def _single_input(specs: Mapping[str, InputSpec], what: str) -> str:
    if len(specs) != 1:
        raise UserError(
            f"{what} can only feed a single-input model; this one has inputs "
            f"{', '.join(specs)}: give a dict or an npz keyed by input name"
        )
    return next(iter(specs))


def _as_named(
    batch: Any, specs: Mapping[str, InputSpec], extra_keys: Collection[str]
) -> dict[str, np.ndarray]:
    """Turn one array or mapping into ``{input name: array}``, checking the key set."""
    if isinstance(batch, np.ndarray):
        return {_single_input(specs, "a bare array"): batch}
    if not isinstance(batch, Mapping):
        raise UserError(f"calibration batch must be an array or a dict, got {type(batch).__name__}")
    _check_keys(batch.keys(), specs, extra_keys, "calibration data")
    return {name: np.asarray(batch[name]) for name in specs}


def _check_keys(
    keys: Iterable[str], specs: Mapping[str, InputSpec], extra_keys: Collection[str], what: str
) -> None:
    keys = set(keys)
    missing = [name for name in specs if name not in keys]
    if missing:
        raise UserError(
            f"{what} lacks input {', '.join(map(repr, missing))}; "
            f"the model expects {', '.join(map(repr, specs))}"
        )
    unknown = sorted(keys - set(specs) - set(extra_keys))
    if unknown:
        raise UserError(
            f"{what} has unknown key {', '.join(map(repr, unknown))}; "
            f"the model's inputs are {', '.join(map(repr, specs))}"
        )


def _check_spec(name: str, shape: tuple[int, ...], dtype: np.dtype, spec: InputSpec) -> None:
    """Raise if ``shape``/``dtype`` do not fit the model input ``name`` (dim 0 is free)."""
    want_shape, want_dtype = spec
    if dtype != want_dtype:
        raise UserError(
            f"input {name!r}: dtype {dtype}, the model expects {np.dtype(want_dtype)} "
            f"(convert with .astype(np.{np.dtype(want_dtype).name}))"
        )
    rank_ok = not want_shape or len(shape) == len(want_shape)
    dims_ok = rank_ok and all(
        not isinstance(w, int) or w == g or i == 0
        for i, (w, g) in enumerate(zip(want_shape, shape, strict=False))
    )
    if not dims_ok:
        want = "[" + ", ".join("?" if not isinstance(w, int) else str(w) for w in want_shape) + "]"
        raise UserError(f"input {name!r}: shape {list(shape)}, the model expects {want}")


def _check_arrays(
    arrays: Mapping[str, np.ndarray], specs: Mapping[str, InputSpec], what: str
) -> None:
    for name, array in arrays.items():
        _check_spec(name, array.shape, array.dtype, specs[name])
    counts = {name: len(array) for name, array in arrays.items() if array.ndim}
    if len(set(counts.values())) > 1:
        raise UserError(f"{what} have different sample counts per input: {counts}")


def _slice_arrays(
    arrays: Mapping[str, np.ndarray], batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    total = _count(arrays)
    for start in range(0, total, batch_size):
        yield {name: array[start : start + batch_size] for name, array in arrays.items()}


# --- npz: decode members block by block ------------------------------------------------


def _iter_npz(
    path: Path, specs: Mapping[str, InputSpec], batch_size: int, extra_keys: Collection[str]
) -> Iterator[dict[str, np.ndarray]]:
    """Stream an npz: headers are checked first, then rows are read ``batch_size`` at a time."""
    with _open_zip(path) as archive:
        members = _npz_members(archive, path)
        _check_keys(members, specs, extra_keys, f"{path.name}")
        streams = {name: _NpyStream(archive.open(members[name]), path, name) for name in specs}
        for name, stream in streams.items():
            _check_spec(name, stream.shape, stream.dtype, specs[name])
        counts = {name: stream.shape[0] for name, stream in streams.items()}
        if len(set(counts.values())) > 1:
            raise UserError(f"{path.name}: inputs have different sample counts {counts}")
        total = next(iter(counts.values()))
        for start in range(0, total, batch_size):
            rows = min(batch_size, total - start)
            yield {name: stream.read_rows(rows) for name, stream in streams.items()}


def _open_zip(path: Path) -> zipfile.ZipFile:
    if not path.exists():
        raise UserError(f"calibration data {path} does not exist")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise UserError(f"{path} is not an .npz file (nor a folder of images)") from None


def _npz_members(archive: zipfile.ZipFile, path: Path) -> dict[str, str]:
    members = {n[: -len(".npy")]: n for n in archive.namelist() if n.endswith(".npy")}
    if not members:
        raise UserError(f"{path} is a zip without .npy arrays, not an .npz file")
    return members


class _NpyStream:
    """Reads C-ordered rows of one ``.npy`` member without loading the whole array."""

    def __init__(self, fileobj: IO[bytes], path: Path, name: str) -> None:
        self._file = fileobj
        try:
            version = np.lib.format.read_magic(fileobj)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(fileobj)
        except (ValueError, OSError, zipfile.BadZipFile) as err:
            raise UserError(f"{path.name}: array {name!r} is corrupt ({err})") from None
        if dtype.hasobject or fortran or not shape:
            raise UserError(
                f"{path.name}: array {name!r} must be a plain C-ordered numeric array "
                "with a sample axis (no objects, no Fortran order, not a scalar)"
            )
        self.shape, self.dtype, self._where = tuple(shape), dtype, f"{path.name}:{name}"
        self._row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))

    def read_rows(self, rows: int) -> np.ndarray:
        data = self._file.read(rows * self._row_bytes)
        if len(data) != rows * self._row_bytes:
            raise UserError(f"{self._where} is truncated")
        return np.frombuffer(data, dtype=self.dtype).reshape((rows, *self.shape[1:]))


# --- image folders ---------------------------------------------------------------------


def _iter_image_folder(
    folder: Path, specs: Mapping[str, InputSpec], batch_size: int, preprocess: Preprocess | None
) -> Iterator[dict[str, np.ndarray]]:
    name = _single_input(specs, "an image folder")
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


BatchFactory = Callable[[], Iterable[Mapping[str, np.ndarray]]]
"""Calibration data is read several times (once per statistic or layer): a callable
returning a fresh iterable of batches each time."""


def calib_factory(
    source: Any,
    model: onnx.ModelProto,
    batch_size: int = 64,
    preprocess: Preprocess | str | None = None,
    limit: int | None = None,
) -> BatchFactory:
    """A re-iterable source of checked calibration batches for ``model``.

    ``source`` is anything ``iter_calibration`` takes (npz path, image folder, arrays,
    dict, list of batches; a one-shot generator is refused since it is read many times).
    The first batch is read at once, so bad data fails here with a :class:`UserError`
    before any work.
    """
    if isinstance(source, Iterable) and iter(source) is source:
        raise UserError("calibration data is read several times: pass a list, not a generator")
    prep = Preprocess.parse(preprocess) if isinstance(preprocess, str) else preprocess
    specs = input_specs(model)

    def factory() -> Iterable[Mapping[str, np.ndarray]]:
        return iter_calibration(source, specs, batch_size, prep, limit)

    next(iter(factory()))
    return factory
