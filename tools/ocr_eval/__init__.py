"""Task metrics of PP-OCR-style models on text rendered here (``tools/eval_ocr.py``).

``text`` draws and renders lines with Pillow in the Debian DejaVu fonts; ``det`` scores
a DB text detector (hmean at IoU 0.5 on rendered pages) and ``cls`` a text-direction
classifier (accuracy on lines rotated 0 or 180 degrees). Both reuse the pre- and
post-processing of the ``onnxocr`` package (PP-OCR's own, ported), which needs OpenCV,
shapely and pyclipper (``pip install opencv-python-headless shapely pyclipper``).
"""
