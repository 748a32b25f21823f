import pytest
import yaml

from tfaug.config import (
    DATASETS,
    SETTINGS_DIR,
    ConfigError,
    config_from_dict,
    load_config,
    parse_override,
    shipped_settings,
)
from tfaug.methods import PHANTOM_VARIANT_NAMES


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_dataset_config_loads_and_is_consistent(dataset):
    cfg = load_config(dataset)
    assert cfg.data.dataset == dataset
    assert len(cfg.train.class_weights) == cfg.data.n_classes
    assert abs(sum(cfg.train.class_weights) - 1.0) < 1e-6
    assert cfg.preprocess.crop_size % 32 == 0


def test_paper_values_in_acdc_config():
    cfg = load_config("acdc")
    assert cfg.preprocess.spacing_mm == 1.367
    assert cfg.preprocess.crop_size == 224
    assert cfg.train.batch_size == 20
    assert cfg.train.generator_iterations == 10000
    assert (cfg.train.lambda_adv, cfg.train.lambda_ld) == (1.0, 1e-3)
    assert (cfg.split.n_unlabeled, cfg.split.n_test, cfg.split.n_validation) == (25, 20, 2)


def test_acdc_ssl_config_is_the_semi_supervised_protocol():
    cfg = load_config("acdc_ssl")
    assert (cfg.data.dataset, cfg.data.frames) == ("acdc_ssl", "both")
    preprocess = cfg.preprocess
    assert (preprocess.normalisation, preprocess.resize, preprocess.crop_size) == (
        "minmax",
        "fixed",
        256,
    )
    assert (preprocess.image_interpolation, preprocess.restore_interpolation) == (
        "nearest",
        "nearest",
    )
    assert preprocess.n4 is False
    split = cfg.split
    assert (split.scheme, split.n_test, split.n_validation, split.draws) == ("ssl4mis", 20, 10, 1)
    assert split.n_unlabeled >= 69  # every unlabeled training patient, whatever --nl
    assert (cfg.train.model_selection, cfg.train.segmenter_iterations) == ("best", 30000)
    # The shipped ACDC config keeps the paper's protocol.
    acdc = load_config("acdc")
    assert (acdc.data.frames, acdc.preprocess.normalisation, acdc.preprocess.resize) == (
        "es",
        "percentile",
        "spacing",
    )


@pytest.mark.parametrize("dataset", ["acdc", "acdc_ssl", "prostate", "pancreas"])
def test_real_dataset_configs_keep_the_papers_generator_settings(dataset):
    cfg = load_config(dataset)
    assert (cfg.model.deformation_max_mm, cfg.model.deformation_grid) == (None, 1)
    assert (cfg.model.intensity_max, cfg.model.intensity_grid) == (1.0, 1)
    assert cfg.train.discriminator_learning_rate is None
    assert cfg.train.discriminator_update_every == 1
    assert cfg.model.discriminator_patch_levels is None
    assert cfg.model.discriminator_spectral_norm is False
    assert (cfg.train.real_label, cfg.train.validation_smoothing) == (1.0, 0.0)
    assert cfg.augment.generated_composition == "choice"


def test_overrides_are_typed_and_nested():
    cfg = load_config("phantom", overrides=["train.batch_size=8", "model.bn_momentum=0.5"])
    assert cfg.train.batch_size == 8
    assert cfg.model.bn_momentum == 0.5
    assert parse_override("a.b.c=[1, 2]") == {"a": {"b": {"c": [1, 2]}}}


def test_exponent_without_a_dot_is_a_number():
    # YAML 1.1 reads 2e-4 as a string; a float key takes it as the number users mean.
    cfg = load_config("phantom", overrides=["train.discriminator_learning_rate=2e-4"])
    assert cfg.train.discriminator_learning_rate == pytest.approx(2e-4)
    for text, message in (("fast", "expected a number"), ("nan", "finite")):
        with pytest.raises(ConfigError, match=message):
            load_config("phantom", overrides=[f"train.learning_rate={text}"])


def test_user_config_file_is_merged(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  lambda_ld: 0.01\n")
    cfg = load_config("phantom", config_file=path)
    assert cfg.train.lambda_ld == 0.01
    assert cfg.train.batch_size == load_config("phantom").train.batch_size


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batchsize=3", "unknown key"),
        ("train.batch_size=three", "expected an integer"),
        ("train.jit_compile=1", "expected true/false"),
        ("nonsense", "expected section.key=value"),
    ],
)
def test_bad_overrides_are_rejected_with_a_clear_message(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("phantom", overrides=[override])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.validate_every=0", r"train\.validate_every: 0 must be >= 1"),
        ("train.segmenter_iterations=0", r"train\.segmenter_iterations: 0 must be >= 1"),
        ("train.generator_iterations=-3", r"train\.generator_iterations: -3 must be >= 1"),
        ("train.batch_size=0", r"train\.batch_size: 0 must be >= 1"),
        ("train.self_training_rounds=-1", r"train\.self_training_rounds: -1 must be >= 0"),
        ("ssl.rampup_iterations=-1", r"ssl\.rampup_iterations: -1 must be >= 0"),
    ],
)
def test_schedule_counts_out_of_range_are_rejected_before_training(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("phantom", overrides=[override])


def test_an_unknown_key_in_a_config_file_names_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  segmenter_iteration: 5\n", encoding="utf-8")
    with pytest.raises(
        ConfigError, match=rf"^{path}: train: unknown key\(s\) \['segmenter_iteration'\]"
    ):
        load_config("phantom", config_file=path)
    path.write_text("trian:\n  batch_size: 5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{path}: unknown key\(s\) \['trian'\]"):
        load_config("phantom", config_file=path)


def test_a_shared_generator_folders_config_with_no_final_stage_still_loads():
    from tfaug.runs.shared import generator_config

    shared = generator_config(load_config("phantom", overrides=["method=gdgi"]))
    assert shared.method == "generators" and shared.train.segmenter_iterations == 0
    assert config_from_dict(shared.to_dict()) == shared


@pytest.mark.parametrize("variant", PHANTOM_VARIANT_NAMES)
def test_every_phantom_variant_is_a_choice(variant):
    cfg = load_config("phantom", overrides=[f"phantom.variant={variant}"])
    assert cfg.phantom.variant == variant
    # the phantom's part of the TFRecords cache key keeps its keys for every variant
    assert cfg.to_dict()["phantom"] == {"subjects": 100, "seed": 0, "variant": variant}


def test_round_trip_through_dict():
    cfg = load_config("prostate")
    assert config_from_dict(cfg.to_dict()) == cfg


def test_unknown_dataset():
    with pytest.raises(ConfigError, match="unknown dataset"):
        load_config("brats")


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.generator_mode=indep", "train.generator_mode"),
        ("train.model_selection=worst", "train.model_selection"),
        ("split.scheme=paperish", "split.scheme"),
        ("tag=a/b", "tag"),
        ("augment.generated_composition=sum", "augment.generated_composition"),
        ("train.real_label=0.3", "train.real_label"),
        ("train.validation_smoothing=1.0", "train.validation_smoothing"),
        ("train.lambda_diversity=-1", "train.lambda_diversity"),
        ("train.discriminator_learning_rate=0", "train.discriminator_learning_rate"),
        ("train.discriminator_update_every=0", "train.discriminator_update_every"),
        ("model.deformation_max_mm=0", "model.deformation_max_mm"),
        ("model.intensity_max=0", "model.intensity_max"),
        ("model.deformation_grid=7", "model.deformation_grid"),
        ("model.discriminator_patch_levels=6", "model.discriminator_patch_levels"),
        ("augment.generated_strength=[0.5,0.1]", "augment.generated_strength"),
        ("data.frames=all", "data.frames"),
        ("split.scheme=ssl4miss", "split.scheme"),
        ("preprocess.normalisation=zscore", "preprocess.normalisation"),
        ("preprocess.resize=stretch", "preprocess.resize"),
        ("preprocess.image_interpolation=cubic", "preprocess.image_interpolation"),
        ("preprocess.restore_interpolation=cubic", "preprocess.restore_interpolation"),
        ("phantom.variant=wider", "phantom.variant"),
    ],
)
def test_values_outside_their_choices_are_rejected(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("phantom", overrides=[override])


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("setting", shipped_settings())
def test_a_shipped_setting_sets_exactly_its_keys_over_every_dataset_config(dataset, setting):
    written = _flatten(yaml.safe_load((SETTINGS_DIR / f"{setting}.yaml").read_text("utf-8")))
    assert written["tag"] == setting  # runs are named and reported after the setting
    plain = _flatten(load_config(dataset).to_dict())
    merged = _flatten(load_config(dataset, setting).to_dict())
    assert {key: merged[key] for key in written} == written
    changed = {key for key in plain if plain[key] != merged[key]}
    assert changed <= set(written) and changed


def test_the_settings_are_the_benchmarks():
    assert {"bdv3R", "lrdri"} <= set(shipped_settings())
    assert load_config("phantom", "lrdri").ssl.labeled_augmentation == "rdri"
    bdv3r = load_config("phantom", "bdv3R")
    assert (bdv3r.model.deformation_max_mm, bdv3r.augment.generated_composition) == (10, "chain")


def test_config_argument_is_a_file_before_a_setting_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lrdri").write_text("tag: mine\n", encoding="utf-8")
    assert load_config("phantom", "lrdri").tag == "mine"
    assert load_config("phantom", str(SETTINGS_DIR / "lrdri.yaml")).tag == "lrdri"
    with pytest.raises(ConfigError, match=r"nosuch: config file not found.*bdv3R, lrdri"):
        load_config("phantom", "nosuch")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("phantom", "sub/lrdri")  # a path is never read as a setting's name
