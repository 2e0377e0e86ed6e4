"""Saving and loading backbone weights: round trips, clear mismatch errors, never pickle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from neurotransfer.models import (
    build_backbone,
    load_backbone,
    load_backbone_weights,
    save_backbone,
)
from neurotransfer.models.weights import META_FILE, WEIGHTS_FILE
from tests.models.tiny_backbones import TEST_SHAPE, TINY_OPTIONS, backbone_params


def trained_tiny(name: str) -> torch.nn.Module:
    """A tiny backbone whose weights and normalisation statistics differ from a fresh build."""
    torch.manual_seed(1)
    backbone = build_backbone(name, TEST_SHAPE, **TINY_OPTIONS[name]).train()
    optimizer = torch.optim.SGD(backbone.parameters(), lr=0.1)
    backbone(torch.randn(2, 1, *TEST_SHAPE)).square().mean().backward()
    optimizer.step()
    return backbone.eval()


@pytest.mark.parametrize("name", backbone_params(sorted(TINY_OPTIONS)))
def test_round_trip_gives_identical_outputs(name: str, tmp_path: Path) -> None:
    backbone = trained_tiny(name)
    save_backbone(backbone, tmp_path / "pretrained", {"source": "synthetic", "epochs": 3})

    torch.manual_seed(2)  # a different initialisation, which the loaded weights must replace
    loaded, meta = load_backbone(tmp_path / "pretrained")
    volumes = torch.randn(2, 1, *TEST_SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(volumes), backbone(volumes), rtol=0, atol=0)
    assert meta["architecture"] == name
    assert meta["input_shape"] == list(TEST_SHAPE)
    assert meta["options"] == backbone.spec.options
    assert meta["source"] == "synthetic" and meta["epochs"] == 3
    assert meta["out_features"] == backbone.out_features


def test_saved_directory_holds_exactly_the_two_files(tmp_path: Path) -> None:
    backbone = trained_tiny("sfcn")
    save_backbone(backbone, tmp_path, {"source": "ssl"})
    save_backbone(backbone, tmp_path, {"source": "ssl"})  # overwriting leaves no temp files
    assert sorted(p.name for p in tmp_path.iterdir()) == [WEIGHTS_FILE, META_FILE]
    stored = load_file(str(tmp_path / WEIGHTS_FILE))
    assert stored.keys() == backbone.state_dict().keys()
    assert json.loads((tmp_path / META_FILE).read_text())["source"] == "ssl"


def test_saving_needs_a_source_and_consistent_meta(tmp_path: Path) -> None:
    backbone = trained_tiny("sfcn")
    with pytest.raises(ValueError, match="'source'"):
        save_backbone(backbone, tmp_path, {})
    with pytest.raises(ValueError, match=r"contradicts the backbone on \['architecture'\]"):
        save_backbone(backbone, tmp_path, {"source": "ssl", "architecture": "vit3d"})
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        save_backbone(backbone, tmp_path, {"source": "ssl", "when": object()})
    assert list(tmp_path.iterdir()) == []


def test_saving_a_hand_built_module_is_refused(tmp_path: Path) -> None:
    backbone = trained_tiny("sfcn")
    backbone.spec = None
    with pytest.raises(ValueError, match="build_backbone"):
        save_backbone(backbone, tmp_path, {"source": "ssl"})


def test_loading_into_other_options_names_the_mismatched_keys(tmp_path: Path) -> None:
    save_backbone(trained_tiny("sfcn"), tmp_path, {"source": "ssl"})
    wider = build_backbone("sfcn", TEST_SHAPE, channels=[4, 16, 8], dropout=0.0)
    with pytest.raises(ValueError, match="weights do not fit backbone 'sfcn'") as err:
        load_backbone_weights(wider, tmp_path / WEIGHTS_FILE)
    message = str(err.value)
    assert "blocks.1.0.weight (file [8, 4, 3, 3, 3], model [16, 4, 3, 3, 3])" in message
    assert str(tmp_path / WEIGHTS_FILE) in message


def test_loading_into_another_architecture_names_missing_and_unexpected_keys(
    tmp_path: Path,
) -> None:
    save_backbone(trained_tiny("sfcn"), tmp_path, {"source": "ssl"})
    other = build_backbone("densenet121", TEST_SHAPE, **TINY_OPTIONS["densenet121"])
    with pytest.raises(ValueError, match=r"missing .* key") as err:
        load_backbone_weights(other, tmp_path / WEIGHTS_FILE)
    assert "net.features.conv0.weight" in str(err.value)
    assert "unexpected" in str(err.value) and "blocks.0.0.weight" in str(err.value)


def test_weights_only_torch_file_loads(tmp_path: Path) -> None:
    backbone = trained_tiny("sfcn")
    path = tmp_path / "backbone.pt"
    torch.save(backbone.state_dict(), path)
    fresh = build_backbone("sfcn", TEST_SHAPE, **TINY_OPTIONS["sfcn"]).eval()
    load_backbone_weights(fresh, path)
    volumes = torch.randn(2, 1, *TEST_SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(fresh(volumes), backbone(volumes), rtol=0, atol=0)


def test_a_file_that_needs_pickle_is_refused(tmp_path: Path) -> None:
    backbone = trained_tiny("sfcn")
    path = tmp_path / "whole_module.pt"
    torch.save(backbone, path)  # a pickled module, not a state dict
    with pytest.raises(ValueError, match="pickle"):
        load_backbone_weights(build_backbone("sfcn", TEST_SHAPE, **TINY_OPTIONS["sfcn"]), path)


def test_a_nested_checkpoint_is_refused_naming_the_expected_layout(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "epoch": 3}, path)
    with pytest.raises(ValueError, match="flat mapping of parameter names to tensors"):
        load_backbone_weights(build_backbone("sfcn", TEST_SHAPE, **TINY_OPTIONS["sfcn"]), path)


def test_missing_or_broken_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / META_FILE)):
        load_backbone(tmp_path)
    (tmp_path / META_FILE).write_text('{"architecture": "sfcn"}')
    with pytest.raises(ValueError, match=r"missing key\(s\) \['input_shape', 'options'\]"):
        load_backbone(tmp_path)
    (tmp_path / META_FILE).write_text(
        json.dumps({"architecture": "sfcn", "input_shape": [8, 8, 8], "options": {}})
    )
    with pytest.raises(ValueError, match=r"cannot rebuild the saved backbone.*too small"):
        load_backbone(tmp_path)
    (tmp_path / META_FILE).write_text(
        json.dumps(
            {
                "architecture": "sfcn",
                "input_shape": list(TEST_SHAPE),
                "options": TINY_OPTIONS["sfcn"],
            }
        )
    )
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE):
        load_backbone(tmp_path)
    (tmp_path / WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_backbone(tmp_path)
