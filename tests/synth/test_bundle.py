"""Loading the published brain LDM: the old GenerativeModels state-dict layout round-trips
through MONAI's converter, and files that do not fit the architecture are refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from neurotransfer.config import AutoencoderNetSettings, DiffusionNetSettings, PretrainedLDMSettings
from neurotransfer.synth.bundle import (
    legacy_key,
    load_pretrained_ldm,
    load_weights,
    read_state_dict,
    to_legacy_layout,
)
from neurotransfer.synth.networks import build_autoencoder, build_unet
from tests.synth.helpers import needs_einops, randomise

pytestmark = needs_einops

# Small networks with every renamed part of the bundle's: encoder/decoder self-attention and
# upsampling convolutions in the autoencoder, cross-attention transformers in the UNet.
AE_NET = AutoencoderNetSettings(
    channels=[8, 16], attention_levels=[False, True], norm_num_groups=8, with_nonlocal_attn=True
)
UNET_NET = DiffusionNetSettings(
    channels=[8, 16], attention_levels=[False, True], num_head_channels=[0, 8], norm_num_groups=8
)


def test_legacy_names_match_the_generative_models_layout() -> None:
    assert legacy_key("encoder.blocks.4.attn.to_q.weight") == "encoder.blocks.4.to_q.weight"
    assert legacy_key("encoder.blocks.4.attn.out_proj.bias") == "encoder.blocks.4.proj_attn.bias"
    assert (
        legacy_key("decoder.blocks.3.postconv.conv.weight") == "decoder.blocks.3.conv.conv.weight"
    )
    assert (
        legacy_key("middle_block.attention.transformer_blocks.0.attn2.out_proj.weight")
        == "middle_block.attention.transformer_blocks.0.attn2.to_out.0.weight"
    )
    assert legacy_key("down_blocks.0.resnets.0.conv1.conv.weight") == (
        "down_blocks.0.resnets.0.conv1.conv.weight"
    )


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_bundle_layout_round_trips_through_the_loader(tmp_path: Path, suffix: str) -> None:
    original_ae = randomise(build_autoencoder(AE_NET), 1)
    original_unet = randomise(build_unet(UNET_NET, latent_channels=3), 2)
    files = {}
    for name, module in (("autoencoder", original_ae), ("model", original_unet)):
        legacy = to_legacy_layout(module.state_dict())
        assert set(legacy) != set(module.state_dict())  # the layouts really differ
        files[name] = tmp_path / f"{name}{suffix}"
        if suffix == ".pt":
            torch.save(legacy, files[name])
        else:
            save_file({k: v.contiguous() for k, v in legacy.items()}, str(files[name]))

    settings = PretrainedLDMSettings(
        autoencoder_path=files["autoencoder"].name,
        unet_path=files["model"].name,
        autoencoder=AE_NET,
        diffusion=UNET_NET,
        image_shape=(16, 16, 16),
    )
    autoencoder, unet, layouts = load_pretrained_ldm(settings, tmp_path)
    assert layouts == {"autoencoder": "generative", "diffusion": "generative"}
    for loaded, original in ((autoencoder, original_ae), (unet, original_unet)):
        for key, value in original.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[key], value, msg=key)

    x = torch.rand(1, 1, 16, 16, 16)
    torch.testing.assert_close(autoencoder.reconstruct(x), original_ae.eval().reconstruct(x))


def test_monai_layout_is_detected_and_loaded(tmp_path: Path) -> None:
    original = randomise(build_autoencoder(AE_NET), 3)
    torch.save(original.state_dict(), tmp_path / "ae.pt")
    target = build_autoencoder(AE_NET)
    assert load_weights(target, tmp_path / "ae.pt", "auto", "autoencoder") == "monai"
    torch.testing.assert_close(target.state_dict(), original.state_dict())


def test_wrong_architecture_is_refused_naming_file_and_keys(tmp_path: Path) -> None:
    bigger = AutoencoderNetSettings(
        channels=[8, 16, 16], attention_levels=[False, True, True], norm_num_groups=8
    )
    torch.save(to_legacy_layout(build_autoencoder(bigger).state_dict()), tmp_path / "ae.pt")
    with pytest.raises(
        ValueError,
        match=r"ae\.pt: weights do not fit the configured "
        r"autoencoder.*unexpected key",
    ):
        load_weights(build_autoencoder(AE_NET), tmp_path / "ae.pt", "auto", "autoencoder")


def test_forced_layout_that_does_not_match_is_refused(tmp_path: Path) -> None:
    torch.save(build_autoencoder(AE_NET).state_dict(), tmp_path / "ae.pt")
    with pytest.raises(ValueError, match=r"generative layout"):
        load_weights(build_autoencoder(AE_NET), tmp_path / "ae.pt", "generative", "autoencoder")


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"absent\.pt: weights file not found"):
        read_state_dict(tmp_path / "absent.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"list\.pt: expected a state dict"):
        read_state_dict(tmp_path / "list.pt")
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "wrapped.pt")
    assert set(read_state_dict(tmp_path / "wrapped.pt")) == {"w"}
