"""Tests for tfaug/training/stage.py: which stages keep budget marks, which have a patience."""

from __future__ import annotations

import pytest

from tfaug.config import Config, ConfigError, config_from_dict
from tfaug.training.stage import budget_marks, stage_patience


def _config(method: str, marks: int, validate_every: int = 25) -> Config:
    cfg = Config()
    cfg.method = method
    cfg.train.budget_marks = marks
    cfg.train.validate_every = validate_every
    return cfg


def test_marks_split_the_final_stage_into_equal_parts_on_validation_steps():
    assert budget_marks(_config("unimatch", 10), "consistency", 6000) == list(range(600, 6000, 600))
    # 1000 / 3 = 333.3 → the validation step before it, 325; 666.7 → 650.
    assert budget_marks(_config("rdri", 3), "segmenter", 1000) == [325, 650]
    # More marks than validations: each validation step once.
    assert budget_marks(_config("rdri", 10, validate_every=3), "segmenter", 9) == [3, 6]


def test_only_the_final_stage_of_a_run_has_marks():
    assert budget_marks(_config("gdgi", 4), "generator_deformation", 1000) == []
    assert budget_marks(_config("gdgi", 4), "segmenter", 1000) == [250, 500, 750]
    assert budget_marks(_config("rdri", 0), "segmenter", 1000) == []


@pytest.mark.parametrize("marks", [1, -2])
def test_one_or_a_negative_number_of_marks_is_a_config_error(marks):
    with pytest.raises(ConfigError, match="train.budget_marks"):
        config_from_dict({"train": {"budget_marks": marks}})


def test_only_the_generator_stages_have_a_patience():
    cfg = config_from_dict({"method": "gdgi", "train": {"generator_patience": 500}})
    assert stage_patience(cfg, "generator_deformation") == 500
    assert stage_patience(cfg, "generator_intensity") == 500
    assert stage_patience(cfg, "pretrain") == 0
    assert stage_patience(cfg, "segmenter") == 0
    assert stage_patience(Config(), "generator_intensity") == 0


@pytest.mark.parametrize(
    ("train", "match"),
    [
        ({"generator_patience": 30}, "multiple of train.validate_every"),
        ({"generator_patience": -50}, "multiple of train.validate_every"),
        ({"generator_patience": 50, "model_selection": "last"}, "needs validation"),
    ],
)
def test_a_patience_off_the_validation_steps_or_without_validation_is_a_config_error(train, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict({"train": {"validate_every": 25, **train}})
