"""Character error rate of a PP-OCR-style text recognizer on text lines rendered here.

    python tools/eval_ocr.py rec MODEL.onnx --dict ppocrv5_dict.txt [--lines 200]
    python tools/eval_ocr.py calib OUT.npz --dict ppocrv5_dict.txt [--lines 256]

Lines of 4-16 characters (digits, Latin letters, a few punctuation marks, spaces) are
drawn with a fixed seed and rendered with Pillow in the Debian DejaVu fonts
(``apt-get install fonts-dejavu-core``), black on a light background, with a random font,
size and offset. Pre- and post-processing follow PP-OCR's recognizer: height 48, aspect
kept, width padded to 320, ``(x / 255 - 0.5) / 0.5``; greedy CTC decoding with index 0 the
blank and the dictionary plus a space as the classes. ``calib`` writes lines with another
seed as an npz for ``--calib`` (key = the model's input name, ``x``).

CER = total edit distance / total characters of the truth. The synthetic lines are not
PP-OCR's benchmark data: use the figures to compare a model with its pruned copy.
"""

from __future__ import annotations

import argparse
import glob
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw, ImageFont

HEIGHT, WIDTH = 48, 320
CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.,:-"
FONTS = sorted(glob.glob("/usr/share/fonts/truetype/dejavu/DejaVuSans*.ttf"))


def random_text(rng: np.random.Generator) -> str:
    words = []
    for _ in range(int(rng.integers(1, 4))):
        words.append("".join(rng.choice(list(CHARS), size=int(rng.integers(2, 7)))))
    return " ".join(words)


def render(text: str, rng: np.random.Generator) -> Image.Image:
    if not FONTS:
        raise SystemExit("no DejaVu fonts: apt-get install -y fonts-dejavu-core")
    font = ImageFont.truetype(FONTS[int(rng.integers(len(FONTS)))], int(rng.integers(26, 36)))
    left, top, right, bottom = font.getbbox(text)
    pad = int(rng.integers(4, 12))
    bg = int(rng.integers(200, 256))
    img = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), (bg, bg, bg))
    ImageDraw.Draw(img).text((pad - left, pad - top), text, font=font, fill=(0, 0, 0))
    return img


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["rec", "calib"])
    parser.add_argument("path", help="rec: the model; calib: the npz to write")
    parser.add_argument("--dict", required=True, help="the recognizer's character dictionary")
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.mode == "rec":
        print(f"CER {100 * cer(args.path, args.dict, args.lines, args.seed):.2f}% "
              f"on {args.lines} rendered lines (seed {args.seed})")  # fmt: skip
    else:
        x, _ = lines(args.lines, args.seed + 1000)
        np.savez(args.path, x=x)
        print(f"wrote {args.lines} lines to {args.path}")


if __name__ == "__main__":
    main()
