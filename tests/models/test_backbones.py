"""Backbones: each family maps [B, 1, D, H, W] to [B, F], trains, and rejects bad config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from neurotransfer.models import (
    TaskHead,
    available_backbones,
    backbone_layer_groups,
    backbone_options,
    build_backbone,
)
from tests.models.tiny_backbones import (
    HAS_EINOPS,
    NEEDS_EINOPS,
    TEST_SHAPE,
    TINY_OPTIONS,
    backbone_params,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
ALL_BACKBONES = [
    "densenet121",
    "mvit_v2_s",
    "r2plus1d_18",
    "r3d_18",
    "sfcn",
    "slice2d",
    "swin3d_t",
    "vit3d",
]


def profile_shape(profile: str) -> tuple[int, int, int]:
    conf = yaml.safe_load((REPO_ROOT / "conf" / "profile" / f"{profile}.yaml").read_text())
    return tuple(conf["data"]["preprocess"]["shape"])


def tiny(name: str, shape: tuple[int, int, int] = TEST_SHAPE, **overrides: object) -> nn.Module:
    return build_backbone(name, shape, **{**TINY_OPTIONS[name], **overrides})


def input_convolution(backbone: nn.Module) -> nn.Module:
    """The one convolution that reads the raw one-channel input."""
    convs = [
        m for m in backbone.modules() if isinstance(m, nn.Conv2d | nn.Conv3d) and m.in_channels == 1
    ]
    assert len(convs) == 1, f"expected one input convolution, found {len(convs)}"
    return convs[0]


def test_registry_has_every_family_and_tests_cover_it() -> None:
    assert available_backbones() == ALL_BACKBONES
    assert sorted(TINY_OPTIONS) == ALL_BACKBONES


@pytest.mark.parametrize("name", backbone_params(ALL_BACKBONES))
def test_forward_maps_volumes_to_batch_by_out_features(name: str) -> None:
    torch.manual_seed(0)
    backbone = tiny(name).eval()
    volumes = torch.randn(3, 1, *TEST_SHAPE)
    with torch.no_grad():
        features = backbone(volumes)
    assert features.shape == (3, backbone.out_features)
    assert torch.isfinite(features).all()
    assert not torch.allclose(features[0], features[1]), "features ignore the input"


@pytest.mark.parametrize("name", backbone_params(ALL_BACKBONES))
def test_a_gradient_step_lowers_the_loss_and_reaches_the_input_layer(name: str) -> None:
    torch.manual_seed(0)
    backbone = tiny(name).train()
    head = TaskHead(backbone.out_features)
    volumes = torch.randn(4, 1, *TEST_SHAPE)
    targets = torch.randn(4)
    first_layer = input_convolution(backbone).weight
    first_layer_before = first_layer.detach().clone()
    params = [*backbone.parameters(), *head.parameters()]

    loss = F.mse_loss(head(backbone(volumes)), targets)
    loss.backward()
    for param_name, param in backbone.named_parameters():
        assert param.grad is not None, f"{param_name} gets no gradient"
        assert torch.isfinite(param.grad).all(), f"{param_name} has a non-finite gradient"
    assert first_layer.grad.abs().sum() > 0
    # A short step along the gradient, whatever its scale, must lower a smooth loss.
    grad_norm = torch.sqrt(sum(p.grad.square().sum() for p in params))
    torch.optim.SGD(params, lr=1e-3 / grad_norm.item()).step()
    after = F.mse_loss(head(backbone(volumes)), targets).item()

    assert after < loss.item(), f"loss did not fall: {loss.item()} -> {after}"
    assert not torch.equal(first_layer.detach(), first_layer_before)


# Number of layer groups of each backbone at its default (paper-scale) options.
DEFAULT_GROUP_COUNTS = {
    "sfcn": 6,  # one per block
    "densenet121": 5,  # stem + 4 dense blocks (each with its transition)
    "vit3d": 14,  # patch embedding + 12 blocks + final norm
    "slice2d": 6,  # ResNet18 stem + 4 stages + projection/position/pooling
    "r3d_18": 5,  # stem + 4 stages
    "r2plus1d_18": 5,
    "swin3d_t": 9,  # patch embedding + 4 stages + 3 patch mergings + final norm
    "mvit_v2_s": 18,  # patch embedding + 16 blocks + final norm
}


@pytest.mark.parametrize("name", backbone_params(ALL_BACKBONES))
def test_layer_groups_cover_every_parameter_once_from_input_to_output(name: str) -> None:
    backbone = build_backbone(name, (32, 32, 32))
    groups = backbone_layer_groups(backbone)
    grouped = [id(p) for group in groups for p in group]
    assert len(grouped) == len(set(grouped)), "a parameter is in two groups"
    assert set(grouped) == {id(p) for p in backbone.parameters()}
    assert len(groups) == DEFAULT_GROUP_COUNTS[name]
    input_weight = input_convolution(backbone).weight
    assert any(p is input_weight for p in groups[0]), "the first group is not the input layer"


def test_layer_groups_need_a_registered_backbone() -> None:
    with pytest.raises(TypeError, match="build_backbone"):
        backbone_layer_groups(nn.Linear(2, 2))


@pytest.mark.parametrize(
    "name", ["sfcn", "densenet121", "slice2d", "r3d_18", "r2plus1d_18", "swin3d_t", "mvit_v2_s"]
)
def test_backbones_take_odd_volume_shapes(name: str) -> None:
    shape = (17, 19, 13)
    backbone = tiny(name, shape).eval()
    with torch.no_grad():
        features = backbone(torch.randn(2, 1, *shape))
    assert features.shape == (2, backbone.out_features)


def test_mvit_zero_pads_to_whole_patches() -> None:
    torch.manual_seed(0)
    odd = tiny("mvit_v2_s", (17, 19, 13)).eval()
    assert odd.padded_shape == (18, 20, 16)
    padded = tiny("mvit_v2_s", (18, 20, 16)).eval()
    padded.load_state_dict(odd.state_dict())
    volumes = torch.randn(2, 1, 17, 19, 13)
    with torch.no_grad():
        expected = padded(F.pad(volumes, (0, 3, 0, 1, 0, 1)))
        torch.testing.assert_close(odd(volumes), expected)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice2d_has_one_position_per_slice_along_its_axis(axis: int) -> None:
    backbone = tiny("slice2d", axis=axis)
    assert backbone.position_embedding.shape == (TEST_SHAPE[axis], backbone.out_features)
    features = backbone.eval()(torch.randn(2, 1, *TEST_SHAPE))
    assert features.shape == (2, backbone.out_features)


@pytest.mark.parametrize("pooling", ["mean", "max", "attention"])
def test_slice2d_pooling_is_permutation_invariant_without_position_embedding(pooling: str) -> None:
    torch.manual_seed(0)
    volumes = torch.randn(2, 1, *TEST_SHAPE)
    shuffled = volumes[:, :, :, torch.randperm(TEST_SHAPE[1])]  # reorder the slices of axis 1
    unordered = tiny("slice2d", axis=1, pooling=pooling, position_embedding=False).eval()
    ordered = tiny("slice2d", axis=1, pooling=pooling, position_embedding=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(unordered(shuffled), unordered(volumes))
        assert not torch.allclose(ordered(shuffled), ordered(volumes), atol=1e-5)


def test_slice2d_default_encoder_is_resnet18_on_one_channel() -> None:
    backbone = build_backbone("slice2d", TEST_SHAPE, embed_dim=8)
    assert type(backbone.encoder).__name__ == "ResNet18SliceEncoder"
    assert backbone.encoder.net.conv1.in_channels == 1
    features = backbone.eval()(torch.randn(2, 1, *TEST_SHAPE))
    assert features.shape == (2, 8)


def test_slice2d_rejects_a_volume_with_another_slice_count() -> None:
    backbone = tiny("slice2d")
    with pytest.raises(ValueError, match=r"built for 16 slices along axis 0"):
        backbone(torch.randn(1, 1, 18, 20, 12))


@pytest.mark.parametrize("name", backbone_params(["vit3d", "mvit_v2_s"]))
def test_shape_bound_backbones_reject_other_volume_shapes(name: str) -> None:
    backbone = tiny(name)
    with pytest.raises(ValueError, match=r"built for volumes of shape \[B, 1, 16, 20, 12\]"):
        backbone(torch.randn(1, 1, 16, 20, 16))


def test_spec_records_every_option_as_json() -> None:
    backbone = build_backbone("sfcn", (40, 48, 40), channels=(8, 16, 32))
    assert backbone.spec.architecture == "sfcn"
    assert backbone.spec.input_shape == (40, 48, 40)
    assert backbone.spec.options == {"channels": [8, 16, 32], "dropout": 0.5}
    assert backbone_options("sfcn") == {"channels": (32, 64, 128, 256, 256, 64), "dropout": 0.5}


# ---- configuration errors ---------------------------------------------------------------------


def test_unknown_backbone_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'resnet50'") as err:
        build_backbone("resnet50", TEST_SHAPE)
    assert all(name in str(err.value) for name in ALL_BACKBONES)


def test_unknown_option_is_named_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"no option\(s\) \['chanels'\]") as err:
        build_backbone("sfcn", TEST_SHAPE, chanels=[8, 16])
    assert "channels=" in str(err.value) and "dropout=" in str(err.value)


@pytest.mark.parametrize(
    ("name", "options", "named"),
    [
        ("sfcn", {"channels": [0, 8]}, "channels.0"),
        ("sfcn", {"channels": [8]}, "channels"),
        ("slice2d", {"pooling": "median"}, "pooling"),
        ("slice2d", {"axis": 3}, "axis"),
        ("vit3d", {"dropout": 1.5}, "dropout"),
        ("r3d_18", {"layers": [1, 1]}, "layers"),
    ],
)
def test_bad_option_value_is_named(name: str, options: dict, named: str) -> None:
    with pytest.raises(ValueError, match=f"backbone '{name}': invalid option") as err:
        build_backbone(name, (64, 64, 64), **options)
    assert named in str(err.value)


@pytest.mark.parametrize("shape", [(40, 48), (40, 0, 40), (40.5, 48, 40), "40x48x40", 40])
def test_input_shape_must_be_three_positive_ints(shape: object) -> None:
    with pytest.raises(ValueError, match="input_shape must be three positive ints"):
        build_backbone("sfcn", shape)


@pytest.mark.parametrize(
    ("name", "options", "shape", "needed"),
    [
        ("sfcn", {}, (40, 48, 16), "at least 32 voxels (got [16])"),
        ("densenet121", {}, (28, 64, 64), "at least 29 voxels (got [28])"),
        ("mvit_v2_s", {}, (64, 24, 64), "at least 32 voxels (got [24])"),
        ("slice2d", {"encoder": "cnn", "axis": 1}, (8, 64, 64), "at least 32 voxels"),
    ],
)
def test_volume_too_small_for_the_downsampling_says_what_would_work(
    name: str, options: dict, shape: tuple[int, int, int], needed: str
) -> None:
    with pytest.raises(ValueError, match=r"too small|max-pools") as err:
        build_backbone(name, shape, **options)
    assert needed in str(err.value)


def test_slice2d_cnn_only_needs_large_slices_not_many() -> None:
    backbone = build_backbone("slice2d", (8, 32, 32), encoder="cnn", axis=0)
    assert backbone.num_slices == 8


def test_vit_patch_that_does_not_divide_the_volume_lists_the_sizes_that_do() -> None:
    with pytest.raises(ValueError, match=r"patch_size \(16, 16, 16\) does not divide") as err:
        build_backbone("vit3d", (40, 48, 40), patch_size=16)
    assert "one of [1, 2, 4, 8]" in str(err.value)
    assert "axes [0, 2]" in str(err.value)


def test_vit_heads_must_divide_the_width() -> None:
    with pytest.raises(ValueError, match="hidden_size 100 is not divisible by num_heads 12"):
        build_backbone("vit3d", (32, 32, 32), hidden_size=100, num_heads=12)


@pytest.mark.skipif(HAS_EINOPS, reason="checks the message shown when einops is missing")
def test_vit_without_einops_says_what_to_install() -> None:
    with pytest.raises(ImportError, match="pip install einops"):
        build_backbone("vit3d", (32, 32, 32), **TINY_OPTIONS["vit3d"])


def test_swin_needs_one_head_count_per_stage() -> None:
    with pytest.raises(ValueError, match="one entry per stage"):
        build_backbone("swin3d_t", TEST_SHAPE, depths=[2, 2], num_heads=[3, 6, 12])
    with pytest.raises(ValueError, match="stage 1 is 16 wide"):
        build_backbone("swin3d_t", TEST_SHAPE, embed_dim=8, depths=[1, 1], num_heads=[1, 3])


def test_attention_pooling_heads_must_divide_the_embedding() -> None:
    with pytest.raises(ValueError, match="embed_dim 10 is not divisible by attention_heads 4"):
        build_backbone("slice2d", TEST_SHAPE, pooling="attention", embed_dim=10, attention_heads=4)


# ---- the configurations the pipeline uses -----------------------------------------------------

MODEL_CONFS = sorted((REPO_ROOT / "conf" / "model").glob("*.yaml"))


def test_every_backbone_has_a_model_conf() -> None:
    assert sorted(path.stem for path in MODEL_CONFS) == ALL_BACKBONES


@pytest.mark.parametrize(
    "conf_path",
    [
        pytest.param(
            p,
            id=p.stem,
            marks=[NEEDS_EINOPS] if p.stem == "vit3d" else [],
        )
        for p in MODEL_CONFS
    ],
)
def test_model_conf_builds_at_the_cpu_profile_shape(conf_path: Path) -> None:
    conf = yaml.safe_load(conf_path.read_text())
    assert conf["name"] == conf_path.stem
    shape = profile_shape("cpu")
    backbone = build_backbone(conf["name"], shape, **conf["options"]).eval()
    with torch.no_grad():
        features = backbone(torch.randn(1, 1, *shape))
    assert features.shape == (1, backbone.out_features)


# ---- GPU ----------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", backbone_params(ALL_BACKBONES))
def test_backbone_trains_on_gpu_at_the_gpu_profile_shape(name: str) -> None:
    conf = yaml.safe_load((REPO_ROOT / "conf" / "model" / f"{name}.yaml").read_text())
    shape = profile_shape("gpu")
    device = torch.device("cuda")
    backbone = build_backbone(name, shape, **conf["options"]).to(device).train()
    head = TaskHead(backbone.out_features).to(device)
    volumes = torch.randn(2, 1, *shape, device=device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = head(backbone(volumes)).float().square().mean()
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in backbone.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
