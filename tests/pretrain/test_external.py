"""External weights: local files (safetensors / weights-only torch), pickle refused, clear
offline errors, and source/architecture combinations checked before any work."""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from neurotransfer.config import SettingsError
from neurotransfer.pretrain import external
from neurotransfer.pretrain.external import (
    WeightsUnavailableError,
    expected_file_name,
    external_weights,
    read_state_dict,
    weights_member,
)
from neurotransfer.pretrain.sources import check_source


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in torchvision.models.resnet18().state_dict().items()}


def test_local_pth_and_safetensors_give_the_same_weights(
    tmp_path: Path, resnet18_state: dict[str, torch.Tensor]
) -> None:
    pth = tmp_path / "resnet18-f37072fd.pth"
    torch.save(resnet18_state, pth)
    st = tmp_path / "resnet18.safetensors"
    save_file(resnet18_state, str(st))
    from_pth = external_weights("imagenet", "r3d_18", None, str(pth))
    from_st = external_weights("imagenet", "r3d_18", None, str(st))
    assert from_pth.state.keys() == resnet18_state.keys() == from_st.state.keys()
    for key, value in resnet18_state.items():
        assert torch.equal(from_pth.state[key], value)
        assert torch.equal(from_st.state[key], value)
    assert from_pth.record["weights"] == "ResNet18_Weights.IMAGENET1K_V1"
    assert from_pth.record["weights_file"] == str(pth)
    assert len(from_pth.record["weights_sha256"]) == 64


class Payload:
    """Anything that is not a tensor needs pickle to load."""

    loaded = False

    def __setstate__(self, state: dict) -> None:
        Payload.loaded = True


def test_file_needing_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra": Payload()}, path)
    with pytest.raises(WeightsUnavailableError, match="pickle"):
        read_state_dict(path)
    assert not Payload.loaded
    not_a_state = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_state)
    with pytest.raises(WeightsUnavailableError, match="state dict"):
        read_state_dict(not_a_state)
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        read_state_dict(tmp_path / "absent.safetensors")


def test_offline_without_weights_path_names_file_and_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def offline(member: object) -> dict:
        raise URLError("no network")

    monkeypatch.setattr(external, "download_state_dict", offline)
    with pytest.raises(WeightsUnavailableError) as err:
        external_weights("imagenet", "r3d_18", None, None)
    message = str(err.value)
    for part in (
        "'r3d_18'",
        "ResNet18_Weights.IMAGENET1K_V1",
        "resnet18-f37072fd.pth",
        "pretrain.weights_path",
        "dvc exp run -S pretrain=imagenet -S pretrain.weights_path=/path/resnet18-f37072fd.pth",
    ):
        assert part in message
    with pytest.raises(WeightsUnavailableError, match=r"R3D_18_Weights\.KINETICS400_V1"):
        external_weights("kinetics", "r3d_18", None, None)


def test_weights_enum_members() -> None:
    member = weights_member("vit_b_16", "IMAGENET1K_V1")
    assert expected_file_name(member).startswith("vit_b_16-")
    with pytest.raises(SettingsError, match="IMAGENET1K_V1"):
        weights_member("resnet18", "IMAGENET22K")


@pytest.mark.parametrize(
    ("source", "architecture", "listed"),
    [
        ("imagenet", "sfcn", "['densenet121', 'r3d_18', 'slice2d', 'vit3d']"),
        ("imagenet", "swin3d_t", "slice2d"),
        ("kinetics", "densenet121", "['mvit_v2_s', 'r2plus1d_18', 'r3d_18', 'swin3d_t']"),
        ("kinetics", "vit3d", "swin3d_t"),
    ],
)
def test_unsupported_combinations_list_supported_architectures(
    source: str, architecture: str, listed: str
) -> None:
    with pytest.raises(SettingsError, match="supports") as err:
        check_source(source, architecture, {})
    assert listed in str(err.value)
    assert repr(architecture) in str(err.value)


def test_vit3d_sizes_are_checked_before_any_download() -> None:
    check_source("imagenet", "vit3d", {"patch_size": 8, "num_layers": 6})
    with pytest.raises(SettingsError, match=r"hidden_size 192 \(vit_b_16: 768\)"):
        check_source("imagenet", "vit3d", {"hidden_size": 192, "mlp_dim": 768, "num_heads": 3})
    with pytest.raises(SettingsError, match="num_layers 13"):
        check_source("imagenet", "vit3d", {"num_layers": 13})


def test_supported_and_training_sources_pass() -> None:
    check_source("imagenet", "slice2d", {"encoder": "resnet18"})
    with pytest.raises(SettingsError, match="encoder"):
        check_source("imagenet", "slice2d", {"encoder": "cnn"})
    for source in ("scratch", "synthetic", "ssl"):
        check_source(source, "sfcn", {})
