"""The `synthesize` settings: bad values fail naming the key; the conf options compose."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from neurotransfer.compose import compose_params
from neurotransfer.config import SettingsError, settings_from_dict
from tests.synth.helpers import tiny_settings

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"source": "pretrained"}, "synthesize: .*needs a 'pretrained' block"),
        (
            {"autoencoder": {"net": {"attention_levels": [False]}}},
            r"synthesize\.autoencoder\.net: .*attention_levels has 1 entries",
        ),
        (
            {"autoencoder": {"net": {"channels": [8, 12]}}},
            r"synthesize\.autoencoder\.net: .*\[12\] are not multiples of norm_num_groups 8",
        ),
        (
            {"diffusion": {"net": {"num_head_channels": [0, 12]}}},
            r"synthesize\.diffusion\.net: .*num_head_channels 12 must divide channels 32",
        ),
        (
            {"diffusion": {"schedule": {"beta_start": 0.1, "beta_end": 0.01}}},
            r"synthesize\.diffusion\.schedule: .*beta_start < beta_end",
        ),
        (
            {
                "sampling": {
                    "covariates": [
                        {"sex": "X", "age": 50, "csf_volume_ml": 20, "brain_volume_ml": 1000}
                    ]
                }
            },
            r"synthesize\.sampling\.covariates\.0\.sex",
        ),
        ({"quality": {"holdout_fraction": 1.0}}, r"synthesize\.quality\.holdout_fraction"),
        (
            {"diffusion": {"guidance_scale": 3.0}},
            r"synthesize\.diffusion: .*guidance_scale needs a model trained with condition_dropout",
        ),
    ],
)
def test_bad_values_fail_naming_the_key(edit: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        tiny_settings(**edit)


def test_pretrained_image_shape_must_fit_the_latent_grid() -> None:
    pretrained = {
        "autoencoder_path": "a.pt",
        "unet_path": "u.pt",
        "autoencoder": {"channels": [8, 16], "attention_levels": [False, False]},
        "diffusion": {
            "channels": [16, 32],
            "attention_levels": [False, True],
            "num_head_channels": [0, 16],
        },
        "image_shape": [16, 16, 18],
    }
    with pytest.raises(SettingsError, match=r"synthesize\.pretrained: .*divisible by 4"):
        tiny_settings(source="pretrained", pretrained=pretrained)


def composed(*overrides: str) -> dict:
    return yaml.safe_load(compose_params(list(overrides), CONF))


def test_pretrained_option_carries_the_bundle_architecture() -> None:
    settings = settings_from_dict(composed("synthesize=pretrained"))
    assert settings.synthesize is not None and settings.synthesize.source == "pretrained"
    bundle = settings.synthesize.pretrained
    assert bundle is not None
    assert bundle.image_shape == (160, 224, 160)
    assert bundle.autoencoder.channels == [64, 128, 128, 128]
    assert bundle.diffusion.channels == [256, 512, 768]
    assert bundle.diffusion.num_head_channels == [0, 512, 768]
    assert bundle.schedule.beta_start == 0.0015 and bundle.schedule.beta_end == 0.0205


def test_profiles_size_the_networks() -> None:
    cpu = settings_from_dict(composed("profile=cpu")).synthesize
    gpu = settings_from_dict(composed("profile=gpu")).synthesize
    assert cpu is not None and gpu is not None
    assert cpu.accelerator == "cpu"
    assert max(cpu.autoencoder.net.channels) < max(gpu.autoencoder.net.channels)
    assert gpu.diffusion.net.channels == [256, 512, 768]
    assert gpu.autoencoder.adversarial_weight > 0
    assert cpu.sampling.n_samples >= 100
