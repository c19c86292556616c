"""Train the example model: a small ResNet on scikit-learn's handwritten digits.

The digits set (1797 real 8x8 scans) ships inside scikit-learn, so this runs offline in
about a minute on two CPU cores. It writes, under ``--out`` (default ``examples/``):

- ``digits_resnet.onnx``: opset 17, IR 10, input ``input`` [N,1,8,8] float32, output
  ``logits`` [N,10]; BatchNormalization nodes are kept separate (not folded into Conv),
  so pruning passes see the BN parameters;
- ``digits_test.npz``: ``input`` (normalized, float32 [N,1,8,8]) and ``label`` (int64);
- ``digits_calib.npz``: ``input``, 256 normalized training images, no labels.

Preprocessing: ``x = (pixel / 16 - MEAN) / STD`` with the fixed constants below; they are
also stored in the ONNX model's ``metadata_props`` (key ``preprocess``).

Usage::

    python tools/train_digits.py [--out examples/] [--epochs 40]

Needs the dev extras (``torch==2.13.0``, ``scikit-learn``). Exits 1 if the test accuracy
(torch or onnxruntime) is below 97%.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

__all__ = ["DigitsResNet", "main"]

logger = logging.getLogger(__name__)

# Mean and std of pixel/16 over the whole digits set, rounded; fixed so that the shipped
# npz files and any user of the model agree without recomputing them.
MEAN = 0.3053
STD = 0.3760
SEED = 0
MIN_ACCURACY = 0.97
CALIB_SAMPLES = 256


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU (ResNet-18 style)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            # A 1x1 projection makes the residual Add couple two different channel sources.
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


class DigitsResNet(nn.Module):
    """stem(1->32) -> block1(32) -> block2(32->64, stride 2) -> block3(64) -> GAP -> fc."""

    def __init__(self, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.block1 = BasicBlock(width, width)
        self.block2 = BasicBlock(width, 2 * width, stride=2)
        self.block3 = BasicBlock(2 * width, 2 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return normalized (x_train, x_test, y_train, y_test), x float32 [N,1,8,8]."""
    digits = load_digits()
    x = ((digits.data / 16.0 - MEAN) / STD).astype(np.float32).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)


def random_shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by -1, 0 or +1 pixel in each direction, filling with background."""
    background = (0.0 - MEAN) / STD
    padded = nn.functional.pad(x, (1, 1, 1, 1), value=background)
    dy, dx = torch.randint(0, 3, (2, x.shape[0]), generator=gen)
    offsets = torch.arange(8)
    rows = (dy[:, None] + offsets)[:, :, None]
    cols = (dx[:, None] + offsets)[:, None, :]
    return padded[torch.arange(x.shape[0])[:, None, None], 0, rows, cols].unsqueeze(1)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int) -> None:
    """SGD with momentum and a cosine schedule; batches drawn from a seeded generator."""
    gen = torch.Generator().manual_seed(SEED)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for start in range(0, len(order), 64):
            idx = order[start : start + 64]
            opt.zero_grad()
            loss = loss_fn(model(random_shift(xt[idx], gen)), yt[idx])
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        sched.step()
        logger.info("epoch %d: loss %.4f", epoch + 1, total / len(xt))


def torch_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def export_onnx(model: nn.Module, path: Path) -> None:
    """Export with the TorchScript exporter, BN kept, then pin IR 10 for onnxruntime."""
    model.eval()
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        opset_version=17,
        dynamo=False,
        # PRESERVE keeps BatchNormalization nodes (EVAL would fold them into Conv).
        training=torch.onnx.TrainingMode.PRESERVE,
        do_constant_folding=True,
    )
    proto = onnx.load(str(path))
    unshare_initializers(proto.graph)
    proto.ir_version = 10
    proto.producer_name = "onnx-hwprune tools/train_digits.py"
    onnx.helper.set_model_props(
        proto, {"preprocess": f"scale=0.0625;mean={MEAN};std={STD};layout=NCHW;order=GRAY"}
    )
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))


def unshare_initializers(graph: onnx.GraphProto) -> None:
    """Replace ``Identity(initializer)`` nodes by a copy of the initializer.

    The two BN biases that feed a residual Add get the same gradient from the same zero
    init, so they stay equal and the exporter shares one tensor through an Identity.
    A pruner must be free to cut each BN on its own, so each gets its own initializer.
    """
    inits = {t.name: t for t in graph.initializer}
    for node in [n for n in graph.node if n.op_type == "Identity" and n.input[0] in inits]:
        copy = onnx.TensorProto()
        copy.CopyFrom(inits[node.input[0]])
        copy.name = node.output[0]
        graph.initializer.append(copy)
        graph.node.remove(node)


def onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"input": x})[0]
    return float((logits.argmax(1) == y).mean())


def describe(model: nn.Module, path: Path) -> None:
    """Log parameter shapes and the ONNX Conv node names, for passes and their tests."""
    for name, tensor in model.state_dict().items():
        logger.info("param %-32s %s", name, tuple(tensor.shape))
    graph = onnx.load(str(path)).graph
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    logger.info("ONNX Conv nodes: %s", ", ".join(convs))
    logger.info("ONNX size: %d bytes", path.stat().st_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples"))
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # One thread: this model is too small to gain from more, and a fixed thread count
    # keeps the float reduction order, hence the output bytes, the same on every machine.
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.use_deterministic_algorithms(True)
    x_train, x_test, y_train, y_test = load_split()
    model = DigitsResNet()
    start = time.perf_counter()
    train(model, x_train, y_train, args.epochs)
    logger.info("training time: %.1f s", time.perf_counter() - start)
    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / "digits_resnet.onnx"
    export_onnx(model, onnx_path)
    np.savez(args.out / "digits_test.npz", input=x_test, label=y_test)
    np.savez(args.out / "digits_calib.npz", input=x_train[:CALIB_SAMPLES])
    describe(model, onnx_path)
    acc_torch = torch_accuracy(model, x_test, y_test)
    acc_onnx = onnx_accuracy(onnx_path, x_test, y_test)
    print(f"test accuracy: torch {acc_torch:.4f}, onnxruntime {acc_onnx:.4f} (n={len(y_test)})")
    return 0 if min(acc_torch, acc_onnx) >= MIN_ACCURACY else 1


if __name__ == "__main__":
    sys.exit(main())
