"""The scaling configs carry the paper's per-size recipe."""

import pytest

import models

# depth: (block counts, image size, dropout, stochastic depth, RandAugment magnitude),
# from the paper's appendix and the TPU reference's resnetrs*_i*.yaml.
PAPER_TABLE = {
    50: ((3, 4, 6, 3), 160, 0.25, 0.0, 10),
    101: ((3, 4, 23, 3), 192, 0.25, 0.0, 15),
    152: ((3, 8, 36, 3), 256, 0.25, 0.0, 15),
    200: ((3, 24, 36, 3), 256, 0.25, 0.1, 15),
    270: ((4, 29, 53, 4), 256, 0.25, 0.1, 15),
    350: ((4, 36, 72, 4), 256, 0.25, 0.1, 15),
    420: ((4, 44, 87, 4), 320, 0.4, 0.1, 15),
}


@pytest.mark.parametrize("depth", sorted(PAPER_TABLE))
def test_paper_recipe_per_depth(depth):
    cfg = models.config(f"resnet_rs_{depth}")
    blocks, size, dropout, sd_rate, magnitude = PAPER_TABLE[depth]
    assert cfg.block_counts == blocks
    assert (cfg.train_image_size, cfg.eval_image_size) == (size, size)
    assert cfg.dropout_rate == dropout
    assert cfg.stochastic_depth_rate == sd_rate
    assert (cfg.randaugment_layers, cfg.randaugment_magnitude) == (2, magnitude)
    assert cfg.se_ratio == 0.25
    assert cfg.bn_epsilon == 1e-5


def test_other_published_sizes_are_named():
    assert models.config("resnet_rs_101_i160").train_image_size == 160
    assert models.config("resnet_rs_101_i160").randaugment_magnitude == 10
    assert models.config("resnet_rs_350_i320").dropout_rate == 0.4
    assert models.config("resnet_rs_152_i224").eval_image_size == 224


def test_overrides_replace_fields_without_touching_the_registry():
    cfg = models.config("resnet_rs_50", dropout_rate=0.0, bn_momentum=0.0)
    assert (cfg.dropout_rate, cfg.bn_momentum) == (0.0, 0.0)
    assert models.config("resnet_rs_50").dropout_rate == 0.25


def test_unknown_name_and_field_are_named_in_the_error():
    with pytest.raises(ValueError, match="resnet_rs_51"):
        models.config("resnet_rs_51")
    with pytest.raises(ValueError, match="dropout"):
        models.config("resnet_rs_50", dropout=0.1)


def test_stochastic_depth_grows_with_stage_position():
    rates = models.stochastic_depth_rates(models.config("resnet_rs_420"))
    assert rates == pytest.approx([0.04, 0.06, 0.08, 0.1])
    assert models.stochastic_depth_rates(models.config("resnet_rs_50")) == [0.0] * 4
