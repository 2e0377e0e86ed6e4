"""External weights on our backbones: 2D -> 3D inflation and video mappings reproduce the
pre-trained networks' responses."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from neurotransfer.config import SettingsError
from neurotransfer.models import build_backbone
from neurotransfer.models.cnn3d import map_densenet121, normalise_densenet_keys
from neurotransfer.models.external_weights import inflate_conv, sum_rgb
from neurotransfer.models.slice2d import map_resnet18_slice2d
from neurotransfer.models.video import map_resnet18_r3d, map_video
from neurotransfer.models.vit3d import map_vit_b_16
from neurotransfer.pretrain.sources import map_external


def randomise_norms(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (fresh ones are 0/1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d | nn.LayerNorm):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=generator))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=generator))
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=generator))
                m.running_var.copy_(1 + 0.5 * torch.rand(m.running_var.shape, generator=generator))
    return module


def constant_depth(image: torch.Tensor, depth: int) -> torch.Tensor:
    """``[B, 1, H, W]`` -> ``[B, 1, depth, H, W]``, every slice the same."""
    return image.unsqueeze(2).expand(-1, -1, depth, -1, -1).contiguous()


def test_sum_rgb_equals_grey_replicated_to_rgb() -> None:
    conv = nn.Conv2d(3, 5, 3, padding=1)
    grey = torch.randn(2, 1, 9, 9)
    single = nn.functional.conv2d(grey, sum_rgb(conv.weight), conv.bias, padding=1)
    assert torch.allclose(single, conv(grey.repeat(1, 3, 1, 1)), atol=1e-5)
    with pytest.raises(ValueError, match="RGB"):
        sum_rgb(torch.zeros(4, 2, 3, 3))


def test_inflated_conv_matches_2d_on_constant_depth() -> None:
    weight = torch.randn(4, 2, 3, 3)
    image = torch.randn(1, 2, 10, 10)
    out2d = nn.functional.conv2d(image, weight, padding=1)
    volume = image.unsqueeze(2).expand(-1, -1, 7, -1, -1)
    out3d = nn.functional.conv3d(volume, inflate_conv(weight, 3), padding=1)
    assert torch.allclose(out3d[:, :, 3], out2d, atol=1e-5)
    # The two end slices see the zero padding.
    assert not torch.allclose(out3d[:, :, 0], out2d, atol=1e-3)


def test_slice2d_encoder_is_resnet18_on_grey_slices() -> None:
    torch.manual_seed(0)
    net2d = randomise_norms(torchvision.models.resnet18()).eval()
    backbone = build_backbone("slice2d", (4, 32, 32)).eval()
    own_projection = backbone.projection.weight.clone()
    mapped = map_resnet18_slice2d(net2d.state_dict(), backbone)
    backbone.load_state_dict(mapped.state)
    assert torch.equal(backbone.projection.weight, own_projection)  # own initialisation kept
    assert mapped.own_init and all(not k.startswith("encoder.") for k in mapped.own_init)
    net2d.fc = nn.Identity()
    grey = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        expected = net2d(grey.repeat(1, 3, 1, 1))
        got = backbone.encoder(grey)
    assert torch.allclose(got, expected, atol=1e-4)


def test_resnet18_to_r3d_stem_and_layer1_match_2d_at_central_depth() -> None:
    torch.manual_seed(0)
    net2d = randomise_norms(torchvision.models.resnet18()).eval()
    backbone = build_backbone("r3d_18", (16, 32, 32)).eval()
    backbone.load_state_dict(map_resnet18_r3d(net2d.state_dict(), backbone).state)
    grey = torch.rand(2, 1, 32, 32)
    volume = constant_depth(grey, 16)
    with torch.no_grad():
        # 2D: conv1 -> bn1 -> relu, then layer1 (VideoResNet has no max-pool, so skip it).
        stem2d = net2d.relu(net2d.bn1(net2d.conv1(grey.repeat(1, 3, 1, 1))))
        layer2d = net2d.layer1(stem2d)
        stem3d = backbone.net.stem(volume)
        layer3d = backbone.net.layer1(stem3d)
    # Receptive field along depth: 1 (stem) + 4 (layer1) slices; the centre is far enough.
    assert torch.allclose(stem3d[:, :, 8], stem2d, atol=1e-4)
    assert torch.allclose(layer3d[:, :, 8], layer2d, atol=1e-4)


def test_densenet121_stem_matches_2d_at_central_depth() -> None:
    torch.manual_seed(0)
    net2d = randomise_norms(torchvision.models.densenet121()).eval()
    backbone = build_backbone("densenet121", (32, 32, 32)).eval()
    # Old-style torchvision keys (`norm.1`) are accepted too.
    old_style = {
        k.replace("norm1", "norm.1").replace("conv2", "conv.2") if "denselayer" in k else k: v
        for k, v in net2d.state_dict().items()
    }
    assert normalise_densenet_keys(old_style).keys() == net2d.state_dict().keys()
    backbone.load_state_dict(map_densenet121(old_style, backbone).state)
    grey = torch.rand(1, 1, 32, 32)
    volume = constant_depth(grey, 32)
    with torch.no_grad():
        f2d = net2d.features
        stem2d = f2d.pool0(f2d.relu0(f2d.norm0(f2d.conv0(grey.repeat(1, 3, 1, 1)))))
        layer2d = f2d.denseblock1.denselayer1(stem2d)  # the new features only
        f3d = backbone.net.features
        stem3d = f3d.pool0(f3d.relu0(f3d.norm0(f3d.conv0(volume))))
        layer3d = f3d.denseblock1.denselayer1(stem3d)  # MONAI: [input, new features]
    centre = stem3d.shape[2] // 2
    assert torch.allclose(stem3d[:, :, centre], stem2d, atol=1e-4)
    assert torch.allclose(layer3d[:, 64:, centre], layer2d, atol=1e-4)


def tiny_torchvision_vit(query_bias: bool = False) -> torchvision.models.VisionTransformer:
    """Same key layout as vit_b_16, tiny sizes: 32x32 images, 16x16 patches, 64 wide.

    Without ``query_bias`` the query bias is zeroed: a vit3d without ``qkv_bias`` cannot hold it.
    """
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=128
    )
    with torch.no_grad():
        vit.encoder.pos_embedding.normal_(std=0.2)
        vit.class_token.normal_(std=0.2)
        for layer in vit.encoder.layers:
            layer.self_attention.in_proj_bias.normal_(std=0.1)
            if not query_bias:
                layer.self_attention.in_proj_bias[:64] = 0.0
    return randomise_norms(vit).eval()


def tiny_vit3d(depth: int = 16, **options: object) -> nn.Module:
    kwargs = dict(patch_size=16, hidden_size=64, mlp_dim=128, num_layers=2, num_heads=2)
    kwargs.update(options)
    return build_backbone("vit3d", (depth, 32, 32), **kwargs).eval()


def vit2d_class_token(
    vit2d: torchvision.models.VisionTransformer, grey: torch.Tensor
) -> torch.Tensor:
    """The 2D ViT's final class token for grey images replicated to RGB (no classifier head)."""
    tokens = vit2d._process_input(grey.repeat(1, 3, 1, 1))
    tokens = torch.cat([vit2d.class_token.expand(len(grey), -1, -1), tokens], dim=1)
    return vit2d.encoder(tokens)[:, 0]


def test_vit_patch_embedding_inflation_on_constant_depth() -> None:
    vit2d = tiny_torchvision_vit()
    vit3d = tiny_vit3d(depth=32)
    vit3d.load_state_dict(map_vit_b_16(vit2d.state_dict(), vit3d, source_heads=2).state)
    grey = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        tokens2d = (
            vit2d._process_input(grey.repeat(1, 3, 1, 1)) + vit2d.encoder.pos_embedding[:, 1:]
        )
        tokens3d = vit3d.vit.patch_embedding(constant_depth(grey, 32))
    assert tokens3d.shape == (2, 8, 64)  # 2 depth x 2 x 2 patches
    assert torch.allclose(tokens3d[:, :4], tokens2d, atol=1e-4)
    assert torch.allclose(tokens3d[:, 4:], tokens2d, atol=1e-4)


def test_vit_whole_network_matches_2d_with_one_depth_patch() -> None:
    vit2d = tiny_torchvision_vit()
    vit3d = tiny_vit3d(depth=16)
    vit3d.load_state_dict(map_vit_b_16(vit2d.state_dict(), vit3d, source_heads=2).state)
    grey = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        expected = vit2d_class_token(vit2d, grey)
        got = vit3d(constant_depth(grey, 16))
    # Only MONAI's LayerNorm epsilon (1e-5 vs 1e-6) differs.
    assert torch.allclose(got, expected, atol=2e-3)


def test_vit_with_qkv_bias_keeps_the_query_bias() -> None:
    vit2d = tiny_torchvision_vit(query_bias=True)
    vit3d = tiny_vit3d(depth=16, qkv_bias=True)
    vit3d.load_state_dict(map_vit_b_16(vit2d.state_dict(), vit3d, source_heads=2).state)
    without = tiny_vit3d(depth=16)
    without.load_state_dict(map_vit_b_16(vit2d.state_dict(), without, source_heads=2).state)
    grey = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        expected = vit2d_class_token(vit2d, grey)
        got = vit3d(constant_depth(grey, 16))
        dropped = without(constant_depth(grey, 16))
    assert torch.allclose(got, expected, atol=2e-3)
    # Without qkv_bias the (non-zero) query bias is lost and the response moves further away.
    assert (dropped - expected).abs().max() > (got - expected).abs().max()


def test_vit_size_mismatch_is_a_clear_error() -> None:
    vit2d = tiny_torchvision_vit()
    with pytest.raises(SettingsError, match=r"hidden_size 32.*hidden_size=64"):
        map_vit_b_16(vit2d.state_dict(), tiny_vit3d(hidden_size=32, num_heads=2), source_heads=2)
    with pytest.raises(SettingsError, match="num_layers 3"):
        map_vit_b_16(vit2d.state_dict(), tiny_vit3d(num_layers=3), source_heads=2)


def test_kinetics_r3d_weights_summed_over_rgb() -> None:
    torch.manual_seed(0)
    video = randomise_norms(torchvision.models.video.r3d_18()).eval()
    backbone = build_backbone("r3d_18", (8, 32, 32)).eval()
    mapped = map_external("kinetics", "r3d_18", video.state_dict(), backbone)
    backbone.load_state_dict(mapped.state)
    assert mapped.own_init == []
    video.fc = nn.Identity()
    volume = torch.rand(2, 1, 8, 32, 32)
    with torch.no_grad():
        assert torch.allclose(backbone(volume), video(volume.repeat(1, 3, 1, 1, 1)), atol=1e-4)


@pytest.mark.slow
def test_kinetics_mvit_relative_positions_are_interpolated() -> None:
    torch.manual_seed(0)
    source = torchvision.models.video.mvit_v2_s().state_dict()
    backbone = build_backbone("mvit_v2_s", (16, 32, 32))
    mapped = map_video(source, backbone, "mvit_v2_s")
    backbone.load_state_dict(mapped.state)
    assert mapped.own_init == []
    with torch.no_grad():
        assert backbone(torch.rand(1, 1, 16, 32, 32)).shape == (1, backbone.out_features)


def test_options_that_change_the_network_fail_naming_keys() -> None:
    source = torchvision.models.resnet18().state_dict()
    backbone = build_backbone("r3d_18", (8, 32, 32), layers=(1, 1, 1, 1))
    # Fewer blocks: every model key still has a source; the extra blocks are reported unused.
    mapped = map_resnet18_r3d(source, backbone)
    assert any(k.startswith("net.layer1.1.") for k in mapped.unused)
    video = torchvision.models.video.r3d_18().state_dict()
    wider = build_backbone("r2plus1d_18", (8, 32, 32))
    with pytest.raises(SettingsError, match="do not fit model 'r2plus1d_18'"):
        map_video(video, wider, "r2plus1d_18")
