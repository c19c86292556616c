"""Four networks written in plain PyTorch, exported with ``torch.onnx.export`` as a user
would (dynamic batch, height and width), for the real-model corpus (``tests/corpus.py``).

They are small (widths of 8-64 channels) so that profiling them stays cheap, but they
have the structures users bring: a YOLO-style detector (Conv+BN+SiLU, C2f split/concat,
upsample + concat neck, three heads), a U-Net (ConvTranspose up-sampling, skip concats),
an EfficientNet-style net (depthwise MBConv, squeeze-and-excitation, SiLU) and a
ResNet-18 (basic blocks, residual adds, Gemm head). Weights are random with a fixed seed;
BatchNorm statistics are randomised too so that BN-based criteria and the data-free bias
compensation see non-trivial values.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

__all__ = ["TORCH_MODELS", "export_torch_model"]


def _cbs(cin: int, cout: int, k: int = 3, s: int = 1) -> nn.Sequential:
    """Conv + BN + SiLU, YOLO's basic block."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU()
    )


class _Bottleneck(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1, self.cv2 = _cbs(c, c), _cbs(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x))


class _C2f(nn.Module):
    """YOLOv8's C2f: 1x1 conv, split in two, bottlenecks on the second half, concat all."""

    def __init__(self, cin: int, cout: int, n: int = 1) -> None:
        super().__init__()
        self.c = cout // 2
        self.cv1 = _cbs(cin, 2 * self.c, 1)
        self.m = nn.ModuleList(_Bottleneck(self.c) for _ in range(n))
        self.cv2 = _cbs((2 + n) * self.c, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class YoloStyle(nn.Module):
    """Backbone P3/P4/P5, an FPN neck (upsample + concat) and three 1x1 heads."""

    def __init__(self, nc: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(_cbs(3, 8, 3, 2), _cbs(8, 16, 3, 2), _C2f(16, 16))
        self.p3 = nn.Sequential(_cbs(16, 32, 3, 2), _C2f(32, 32))
        self.p4 = nn.Sequential(_cbs(32, 64, 3, 2), _C2f(64, 64))
        self.p5 = nn.Sequential(_cbs(64, 64, 3, 2), _C2f(64, 64))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.n4, self.n3 = _C2f(128, 64), _C2f(96, 32)
        self.heads = nn.ModuleList(nn.Conv2d(c, nc + 5, 1) for c in (32, 64, 64))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p3 = self.p3(self.stem(x))
        p4 = self.p4(p3)
        p5 = self.p5(p4)
        n4 = self.n4(torch.cat([self.up(p5), p4], 1))
        n3 = self.n3(torch.cat([self.up(n4), p3], 1))
        return tuple(h(f) for h, f in zip(self.heads, (n3, n4, p5), strict=True))


def _double(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
    )  # fmt: skip


class UNet(nn.Module):
    """Three-level U-Net with ConvTranspose up-sampling and skip concatenations."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.e1, self.e2, self.e3 = _double(3, 16), _double(16, 32), _double(32, 64)
        self.pool = nn.MaxPool2d(2)
        self.u2, self.d2 = nn.ConvTranspose2d(64, 32, 2, 2), _double(64, 32)
        self.u1, self.d1 = nn.ConvTranspose2d(32, 16, 2, 2), _double(32, 16)
        self.out = nn.Conv2d(16, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.e1(x)
        e2 = self.e2(self.pool(e1))
        e3 = self.e3(self.pool(e2))
        d2 = self.d2(torch.cat([self.u2(e3), e2], 1))
        return self.out(self.d1(torch.cat([self.u1(d2), e1], 1)))


class _MBConv(nn.Module):
    """Expand 1x1 -> depthwise kxk -> squeeze-and-excitation -> project 1x1 (+ skip)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4, k: int = 3) -> None:
        super().__init__()
        mid, squeeze = cin * expand, max(4, cin // 4)
        self.expand = _cbs(cin, mid, 1)
        self.dw = nn.Sequential(
            nn.Conv2d(mid, mid, k, stride, k // 2, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.SiLU(),
        )
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(mid, squeeze, 1), nn.SiLU(),
            nn.Conv2d(squeeze, mid, 1), nn.Sigmoid(),
        )  # fmt: skip
        self.project = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dw(self.expand(x))
        y = self.project(h * self.se(h))
        return x + y if self.skip else y


class EfficientNetStyle(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = _cbs(3, 16, 3, 2)
        self.blocks = nn.Sequential(
            _MBConv(16, 16, 1, expand=1), _MBConv(16, 24, 2), _MBConv(24, 24, 1),
            _MBConv(24, 40, 2, k=5), _MBConv(40, 40, 1, k=5),
        )  # fmt: skip
        self.head = _cbs(40, 128, 1)
        self.fc = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


class _Basic(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1, self.c2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    """ResNet-18's layout (2-2-2-2 basic blocks), at a quarter of the width."""

    def __init__(self, classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = [width, width * 2, width * 4, width * 8]
        self.stem = nn.Sequential(
            nn.Conv2d(3, w[0], 7, 2, 3, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )  # fmt: skip
        layers, cin = [], w[0]
        for i, c in enumerate(w):
            layers += [_Basic(cin, c, 1 if i == 0 else 2), _Basic(c, c, 1)]
            cin = c
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.adaptive_avg_pool2d(self.layers(self.stem(x)), 1)
        return self.fc(torch.flatten(y, 1))


#: name -> constructor; every one takes a (N, 3, H, W) image with H, W multiples of 32.
TORCH_MODELS = {
    "yolo_style": YoloStyle,
    "unet": UNet,
    "efficientnet_style": EfficientNetStyle,
    "resnet18": ResNet18,
}


def _randomise_bn(model: nn.Module, gen: torch.Generator) -> None:
    """Trained-looking BatchNorm statistics (a fresh BN is the identity)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=gen)
            m.bias.data = 0.2 * torch.randn(n, generator=gen)
            m.running_mean.data = 0.1 * torch.randn(n, generator=gen)
            m.running_var.data = 0.5 + torch.rand(n, generator=gen)


def export_torch_model(name: str, path: Path, size: int = 64, seed: int = 0) -> Path:
    """Build ``name`` with seeded weights and export it to ``path`` (opset 17) with
    dynamic batch, height and width, as ``torch.onnx.export`` users do."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TORCH_MODELS[name]().eval()
    _randomise_bn(model, gen)
    x = torch.randn(1, 3, size, size, generator=gen)
    with torch.no_grad():
        outputs = model(x)
    n_out = len(outputs) if isinstance(outputs, tuple) else 1
    names = [f"out{i}" for i in range(n_out)]
    axes = {"images": {0: "batch", 2: "height", 3: "width"}}
    axes.update({n: {0: "batch"} if name in ("efficientnet_style", "resnet18")
                 else {0: "batch", 2: "h_" + n, 3: "w_" + n} for n in names})  # fmt: skip
    torch.onnx.export(
        model, (x,), str(path), input_names=["images"], output_names=names,
        dynamic_axes=axes, opset_version=17, dynamo=False,
    )  # fmt: skip
    return path
