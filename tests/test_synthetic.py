"""Draem's synthetic defects: they stay inside their masks, and the module's settings are read at call time
(what benchmarks/setting_trial.py relies on to swap them in a fitting process)."""

import pytest
import torch

from aeguard.train import synthetic


def clean_batch(n=8):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_defects_change_pixels_only_inside_their_masks():
    images = clean_batch()
    defective, masks = synthetic.paste_defects(images, torch.Generator().manual_seed(3))
    changed = (defective - images).abs().amax(dim=1, keepdim=True) > 0
    assert changed.any() and not (changed & (masks == 0)).any()
    shares = masks.mean(dim=(1, 2, 3))
    assert ((shares == 0) | ((shares >= 0.005) & (shares <= 0.35))).all()  # blobs of 1-30 % of the image


def test_the_opacity_setting_is_read_when_defects_are_pasted(monkeypatch):
    images = clean_batch()
    default, default_masks = synthetic.paste_defects(images, torch.Generator().manual_seed(3))
    monkeypatch.setattr(synthetic, "OPACITY_SPAN", 0.0)  # every source pasted at full opacity
    opaque, opaque_masks = synthetic.paste_defects(images, torch.Generator().manual_seed(3))
    assert torch.equal(default_masks, opaque_masks)  # the same draws, so the same shapes
    assert not torch.allclose(default, opaque)


def test_the_trial_refuses_a_setting_aeguard_does_not_have():
    from benchmarks.setting_trial import parse_settings

    assert parse_settings(["train.synthetic.OPACITY_SPAN=0.95", "config.DRAEM_CONV_PADDING=replicate"]) == {
        "train.synthetic.OPACITY_SPAN": 0.95,
        "config.DRAEM_CONV_PADDING": "replicate",
    }
    for wrong in ("train.synthetic.CLEAN_SHAER=0.7", "train.nowhere.CLEAN_SHARE=0.7"):
        with pytest.raises(SystemExit, match="aeguard has no setting"):
            parse_settings([wrong])
    with pytest.raises(SystemExit, match="not a number or a word"):
        parse_settings(["config.MODEL_KINDS=dense"])
