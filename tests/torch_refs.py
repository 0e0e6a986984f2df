"""torch twins of jinterp's backbones (torchvision layout, built without torchvision) and a
stand-in ``torchvision`` module so pytorch-grad-cam, zennit and zennit-crp import beside the CPU
torch build (shared/notes/stack.md §8). Used only by parity tests and benchmarks.

Import this module before importing ``pytorch_grad_cam`` / ``zennit`` / ``crp`` / ``torchray``.
"""

import sys
import types

import numpy as np
import torch
from torch import nn

VGG_CFGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ],
}


class VGG(nn.Module):
    """torchvision.models.VGG."""

    def __init__(self, depth=16, batch_norm=False, num_classes=1000, head="classifier"):
        super().__init__()
        self.head = head
        layers, c = [], 3
        for v in VGG_CFGS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers.append(nn.Conv2d(c, v, 3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(v))
                layers.append(nn.ReLU(inplace=True))
                c = v
        self.features = nn.Sequential(*layers)
        if head == "gap":  # jinterp's head="gap": global average pooling + one Linear
            self.fc = nn.Linear(c, num_classes)
            return
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, num_classes),
        )  # fmt: skip

    def forward(self, x):
        if self.head == "gap":
            return self.fc(self.features(x).mean((2, 3)))
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):  # torchvision's call order (hook order matters to PGC's FullGrad)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):  # torchvision's call order
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


RESNET_CFGS = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]), 50: (Bottleneck, [3, 4, 6, 3])}


class ResNet(nn.Module):
    """torchvision.models.ResNet."""

    def __init__(self, depth=18, num_classes=1000):
        super().__init__()
        block, layers = RESNET_CFGS[depth]
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class _DenseLayer(nn.Module):
    def __init__(self, c, growth, bn_size):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(c, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class _DenseBlock(nn.ModuleDict):
    def __init__(self, n, c, growth, bn_size):
        super().__init__()
        for i in range(n):
            self.add_module(f"denselayer{i + 1}", _DenseLayer(c + i * growth, growth, bn_size))

    def forward(self, x):
        feats = [x]
        for layer in self.values():
            feats.append(layer(torch.cat(feats, 1)))
        return torch.cat(feats, 1)


class _Transition(nn.Sequential):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.norm = nn.BatchNorm2d(c_in)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)


class DenseNet(nn.Module):
    """torchvision.models.densenet121."""

    def __init__(self, growth=32, blocks=(6, 12, 24, 16), width=64, bn_size=4, num_classes=1000):
        super().__init__()
        from collections import OrderedDict

        feats = OrderedDict(
            conv0=nn.Conv2d(3, width, 7, 2, 3, bias=False), norm0=nn.BatchNorm2d(width),
            relu0=nn.ReLU(inplace=True), pool0=nn.MaxPool2d(3, 2, 1),
        )  # fmt: skip
        c = width
        for i, n in enumerate(blocks):
            feats[f"denseblock{i + 1}"] = _DenseBlock(n, c, growth, bn_size)
            c += n * growth
            if i != len(blocks) - 1:
                feats[f"transition{i + 1}"] = _Transition(c, c // 2)
                c //= 2
        feats["norm5"] = nn.BatchNorm2d(c)
        self.features = nn.Sequential(feats)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        x = torch.relu(self.features(x))
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class SmallCNN(nn.Module):
    """Twin of jinterp's ``small_cnn``."""

    def __init__(self, num_classes=8, widths=(32, 32, 64, 64, 128, 128), strides=(2, 1, 2, 1, 2, 1)):
        super().__init__()
        layers, c = [], 3
        for w, s in zip(widths, strides, strict=True):
            layers += [nn.Conv2d(c, w, 3, s, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def build(name: str, num_classes: int = 10, seed: int = 0, head: str = "classifier") -> nn.Module:
    """Seeded random torch twin of a jinterp backbone, in eval mode with non-trivial BN statistics.

    ``head`` applies to VGG only (as jinterp's ``VGG.head``)."""
    torch.manual_seed(seed)
    if name.startswith("vgg"):
        model = VGG(int(name[3:5]), name.endswith("_bn"), num_classes, head)
    elif name.startswith("resnet"):
        model = ResNet(int(name[6:]), num_classes)
    elif name == "densenet121":
        model = DenseNet(num_classes=num_classes)
    elif name == "small_cnn":
        model = SmallCNN(num_classes)
    else:
        raise ValueError(name)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # random stats so BN folding/import is really tested
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=gen))
    return model.eval()


def to_nchw(x: np.ndarray) -> torch.Tensor:
    """NHWC numpy -> NCHW float32 torch tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def install_torchvision_stub() -> None:
    """Register a minimal ``torchvision`` so grad-cam / zennit import without the real package.

    Only names touched at import time exist; zennit's ResNet canonizer checks ``isinstance``
    against ``torchvision.models.resnet.BasicBlock/Bottleneck`` and TorchRay's ``update_resnet`` against
    ``ResNet``, pointed at the twins above.
    """
    if "torchvision" in sys.modules:
        return
    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    for name in ("Compose", "Normalize", "ToTensor", "Resize", "CenterCrop"):
        setattr(transforms, name, type(name, (), {"__init__": lambda self, *a, **k: None}))
    functional = types.ModuleType("torchvision.transforms.functional")

    def unavailable(*args, **kwargs):
        raise RuntimeError("the torchvision stand-in has no image transforms (not on CAM/LRP code paths)")

    functional.resize = functional.gaussian_blur = unavailable
    transforms.functional = functional
    ops = types.ModuleType("torchvision.ops")
    ops.box_iou = lambda a, b: None
    models = types.ModuleType("torchvision.models")
    resnet_mod = types.ModuleType("torchvision.models.resnet")
    resnet_mod.BasicBlock, resnet_mod.Bottleneck, resnet_mod.ResNet = BasicBlock, Bottleneck, ResNet
    models.resnet = resnet_mod
    tv.transforms, tv.ops, tv.models = transforms, ops, models
    for mod in (tv, transforms, functional, ops, models, resnet_mod):
        sys.modules[mod.__name__] = mod


install_torchvision_stub()


def pgc_methods() -> dict:
    """jinterp method name -> the pytorch-grad-cam class it reproduces (parity tests, benchmarks)."""
    import pytorch_grad_cam as pgc

    return {
        "grad_cam": pgc.GradCAM,
        "grad_cam_pp": pgc.GradCAMPlusPlus,
        "xgrad_cam": pgc.XGradCAM,
        "hires_cam": pgc.HiResCAM,
        "layer_cam": pgc.LayerCAM,
        "eigen_cam": pgc.EigenCAM,
        "score_cam": pgc.ScoreCAM,
        "ablation_cam": pgc.AblationCAM,
    }
