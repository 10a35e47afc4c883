"""Torchvision ImageNet CNNs (1000 classes) with seeded He-scaled weights, for any input size they allow."""

from __future__ import annotations

import numpy as np

from nptp_mpi.errors import ModelError
from nptp_mpi.model.graph import Graph, Node, Window
from nptp_mpi.model.passes import simplify

MODELS = ("alexnet", "vgg11", "vgg13", "vgg16", "vgg19", "resnet18", "resnet34", "resnet50", "mobilenet_v2")

_VGG = {  # torchvision cfgs A, B, D, E: output channels of each 3x3 conv, "M" a 2x2 max pool
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
_RESNET = {
    "resnet18": ("basic", [2, 2, 2, 2]),
    "resnet34": ("basic", [3, 4, 6, 3]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]),
}
_MOBILENET_V2 = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
_RESIDUAL_GAIN = 0.5  # scale of the last batch-norm of a residual branch, so that sums do not blow up with depth


def build(name: str, size: tuple[int, int] = (224, 224), seed: int = 0) -> Graph:
    """Model `name` (see MODELS) for a (3, h, w) input, batch-norms folded; ModelError if unknown or too small."""
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    net = _Net(seed)
    if name in _VGG:
        _vgg(net, _VGG[name])
    elif name in _RESNET:
        _resnet(net, *_RESNET[name])
    else:
        {"alexnet": _alexnet, "mobilenet_v2": _mobilenet_v2}[name](net)
    try:
        graph = Graph(name, "input", (3, *size), net.x, net.nodes)
    except ModelError as e:
        raise ModelError(f"{name}: input {size[0]}x{size[1]} too small: {e}") from None
    return simplify(graph)


class _Net:
    """Appends nodes with seeded weights; each node's output tensor takes the node's name, net.x the latest."""

    def __init__(self, seed: int) -> None:
        self.rng, self.nodes, self.x = np.random.default_rng(seed), [], "input"

    def add(
        self, op: str, name: str, inputs: tuple[str, ...] | None = None, attrs=None, params=None, window=None
    ) -> str:
        self.nodes.append(Node(op, name, inputs or (self.x,), name, attrs or {}, params or {}, window))
        self.x = name
        return name

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        return self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def conv(self, name: str, cin: int, cout: int, k: int, stride=1, groups=1, bias=False, pad=None) -> str:
        """k x k conv with He-normal weights, padded by k // 2 unless told."""
        params = {"w": self.normal((cout, cin // groups, k, k), np.sqrt(2 / (cin // groups * k * k)))}
        if bias:
            params["b"] = self.normal((cout,), 0.01)
        window = Window((k, k), (stride, stride), (k // 2 if pad is None else pad,) * 4)
        return self.add("conv", name, attrs={"groups": groups, "act": ""}, params=params, window=window)

    def bn(self, name: str, c: int, gain: float = 1.0) -> str:
        scale = self.rng.uniform(0.9 * gain, 1.1 * gain, c).astype(np.float32)
        return self.add("affine", name, params={"scale": scale, "shift": self.normal((c,), 0.05)})

    def relu(self, name: str) -> str:
        return self.add("relu", name)

    def relu6(self, name: str) -> str:
        return self.add("clip", name, attrs={"lo": 0.0, "hi": 6.0})

    def maxpool(self, name: str, k: int, stride: int, pad: int = 0) -> str:
        return self.add("maxpool", name, window=Window((k, k), (stride, stride), (pad,) * 4))

    def gemm(self, name: str, k: int, m: int, act: str = "") -> str:
        """Fully connected layer; an activation is fused (graphs have no standalone pointwise op on vectors)."""
        return self.add(
            "gemm",
            name,
            attrs={"act": act},
            params={"w": self.normal((m, k), np.sqrt(2 / k)), "b": self.normal((m,), 0.01)},
        )


def _classifier(net: _Net, pool: int, c: int, first: int) -> None:
    """Torchvision VGG/AlexNet head: adaptive pool (dropped by simplify when a no-op), flatten, 3 FC layers."""
    net.add("adaptive_avgpool", "avgpool", attrs={"out": (pool, pool)})
    net.add("flatten", "flatten")
    dims = [c * pool * pool, 4096, 4096, 1000]
    for i, (k, m) in enumerate(zip(dims, dims[1:], strict=False)):
        net.gemm(f"classifier.{first + 3 * i}", k, m, "relu" if m != 1000 else "")


def _vgg(net: _Net, cfg: list) -> None:
    cin = 3
    for i, v in enumerate([s for c in cfg for s in ((c,) if c == "M" else (c, "R"))]):
        if v == "M":
            net.maxpool(f"features.{i}", 2, 2)
        elif v == "R":
            net.relu(f"features.{i}")
        else:
            net.conv(f"features.{i}", cin, v, 3, bias=True)
            cin = v
    _classifier(net, 7, 512, 0)


def _alexnet(net: _Net) -> None:
    convs = {
        0: (3, 64, 11, 4, 2),
        3: (64, 192, 5, 1, 2),
        6: (192, 384, 3, 1, 1),
        8: (384, 256, 3, 1, 1),
        10: (256, 256, 3, 1, 1),
    }
    for i, (cin, cout, k, s, p) in convs.items():
        net.conv(f"features.{i}", cin, cout, k, s, bias=True, pad=p)
        net.relu(f"features.{i + 1}")
        if i in (0, 3, 10):
            net.maxpool(f"features.{i + 2}", 3, 2)
    _classifier(net, 6, 256, 1)


def _resnet(net: _Net, block: str, depths: list[int]) -> None:
    net.conv("conv1", 3, 64, 7, 2)
    net.bn("bn1", 64)
    net.relu("relu")
    net.maxpool("maxpool", 3, 2, 1)
    expansion, cin = (1 if block == "basic" else 4), 64
    for li, (depth, width) in enumerate(zip(depths, (64, 128, 256, 512), strict=True), 1):
        for bi in range(depth):
            p, stride, x = f"layer{li}.{bi}", (2 if li > 1 and bi == 0 else 1), net.x
            if block == "basic":
                branch = [(cin, width, 3, stride), (width, width, 3, 1)]
            else:
                branch = [(cin, width, 1, 1), (width, width, 3, stride), (width, 4 * width, 1, 1)]
            for j, (ci, co, k, s) in enumerate(branch, 1):
                net.conv(f"{p}.conv{j}", ci, co, k, s)
                net.bn(f"{p}.bn{j}", co, _RESIDUAL_GAIN if j == len(branch) else 1.0)
                if j < len(branch):
                    net.relu(f"{p}.relu{j}")
            y, net.x = net.x, x
            if stride != 1 or cin != width * expansion:
                net.conv(f"{p}.downsample.0", cin, width * expansion, 1, stride)
                net.bn(f"{p}.downsample.1", width * expansion)
            net.add("add", f"{p}.add", (y, net.x))
            net.relu(f"{p}.relu")
            cin = width * expansion
    _gap_fc(net, cin, "fc")


def _gap_fc(net: _Net, c: int, fc: str) -> None:
    net.add("gap", "avgpool")
    net.add("flatten", "flatten")
    net.gemm(fc, c, 1000)


def _mobilenet_v2(net: _Net) -> None:
    def conv_bn(p: str, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> None:
        net.conv(f"{p}.0", cin, cout, k, stride, groups)
        net.bn(f"{p}.1", cout)
        net.relu6(f"{p}.2")

    conv_bn("features.0", 3, 32, 3, 2)
    i, cin = 1, 32
    for t, c, n, s in _MOBILENET_V2:
        for j in range(n):
            p, stride, x, hidden = f"features.{i}", (s if j == 0 else 1), net.x, cin * t
            layers = [(cin, hidden, 1, 1, 1)] if t != 1 else []
            layers.append((hidden, hidden, 3, stride, hidden))
            for k, (ci, co, ks, st, g) in enumerate(layers):
                conv_bn(f"{p}.conv.{k}", ci, co, ks, st, g)
            net.conv(f"{p}.conv.{len(layers)}", hidden, c, 1)
            residual = stride == 1 and cin == c
            net.bn(f"{p}.conv.{len(layers) + 1}", c, _RESIDUAL_GAIN if residual else 1.0)
            if residual:
                net.add("add", f"{p}.add", (x, net.x))
            i, cin = i + 1, c
    conv_bn("features.18", 320, 1280, 1)
    _gap_fc(net, 1280, "classifier.1")
