
import pytest

from lmops.config import PRESETS_DIR, Config, ConfigError, config_from_dict, load_config

PRESETS = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def test_presets_exist():
    assert {"tiny", "small", "gpt2-124m"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_loads(preset):
    cfg = load_config(preset)
    assert isinstance(cfg, Config)
    assert cfg.name == preset


def test_default_is_tiny():
    assert load_config().name == "tiny"


def test_wrong_type_names_the_yaml_path(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  lr: fast\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert 'train.lr: expected a number, got "fast"' in str(e.value)
    assert str(f) in str(e.value)


def test_unknown_key_lists_allowed_keys():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"build": {"dedup": {"treshold": 0.9}}})
    msg = str(e.value)
    assert "build.dedup.treshold: unknown key 'treshold'" in msg
    assert "threshold" in msg  # the allowed keys are listed


def test_unknown_section():
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        config_from_dict({"trian": {}})


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"train": {"lr": "x", "max_steps": "many"}, "build": {"txt_mode": "lines"}})
    msg = str(e.value)
    assert "train.max_steps: expected an integer" in msg
    assert "build.txt_mode: expected one of 'file' or 'paragraph'" in msg


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="min_chars"):
        config_from_dict({"build": {"min_chars": 10, "max_chars": 5}})
    with pytest.raises(ConfigError, match="val \\+ test"):
        config_from_dict({"build": {"split": {"val": 0.5, "test": 0.5}}})


def test_overrides_parse_yaml_values():
    cfg = load_config("micro", ["train.lr=3e-4", "build.dedup.near=false", "build.sources=[a, b]"])
    assert cfg.train.lr == 3e-4
    assert cfg.build.dedup.near is False
    assert cfg.build.sources == ["a", "b"]


def test_bad_override():
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        load_config("micro", ["train.lr"])
    with pytest.raises(ConfigError, match='train.lr: expected a number, got "fast"'):
        load_config("micro", ["train.lr=fast"])


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'huge'.*tiny"):
        load_config("huge")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_syntax_error_and_non_mapping(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(f)


def test_section_digest_tracks_values():
    a, b = load_config("micro"), load_config("micro", ["build.min_chars=1"])
    assert a.build.digest() != b.build.digest()
    assert a.tokenize.digest() == b.tokenize.digest()


def test_compress_gates_given_for_one_variant_keep_the_others_defaults():
    cfg = config_from_dict({"compress": {"gates": {"pruned": {"perplexity": {"max_ratio": 1.5}}}}})
    gates = cfg.compress.gates
    assert gates["pruned"]["perplexity"].max_ratio == 1.5
    assert gates["int8"]["perplexity"].max_ratio == 1.02 and gates["student"]["perplexity"].max_ratio == 1.35
    assert config_from_dict({"compress": {"gates": {"int8": {}}}}).compress.gates["int8"] == {}
    with pytest.raises(ConfigError, match="fp16"):
        config_from_dict({"compress": {"gates": {"fp16": {}}}})


def test_a_key_given_twice_in_a_config_file_is_refused_with_its_path(tmp_path):
    # PyYAML would keep the last one silently; an env list rendered from it would also lose one
    path = tmp_path / "dup.yaml"
    path.write_text("deploy:\n  env:\n    LOG_LEVEL: info\n    LOG_LEVEL: debug\ntrain:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"deploy\.env\.LOG_LEVEL: key given twice \(lines 3 and 4\)"):
        load_config(path)
    path.write_text("train:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"train\.lr: key given twice"):
        load_config(path)
