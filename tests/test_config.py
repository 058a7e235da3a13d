"""Run configuration: presets load, overrides parse as TOML, bad keys and types are named."""

from __future__ import annotations

import tomllib

import pytest

from probgen.run.config import (
    ConfigError,
    apply_overrides,
    check_call_kwargs,
    dump_toml,
    list_presets,
    load_config,
    parse_override,
)


def test_every_preset_loads_and_is_described():
    presets = list_presets()
    assert "realnvp-moons" in presets
    for name, description in presets.items():
        assert description, f"preset {name} has no [run] description"
        config = load_config(name)
        assert "train" in config and "model" in config


def test_overrides_are_parsed_as_toml():
    assert parse_override("train.lr=3e-4") == (["train", "lr"], 3e-4)
    assert parse_override("data.name=moons") == (["data", "name"], "moons")
    assert parse_override("model.hidden_features=[8, 8]") == (["model", "hidden_features"], [8, 8])
    config = apply_overrides({"train": {"steps": 1}}, ["train.steps=5", "model.name=MAF"])
    assert config == {"train": {"steps": 5}, "model": {"name": "MAF"}}


@pytest.mark.parametrize(
    "text,match",
    [
        ("steps", "expected 'section.key=value'"),
        ("train=3", "section.key"),
        ("nosuch.key=1", "unknown section 'nosuch'"),
    ],
)
def test_bad_overrides_are_named(text, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides({}, [text])


def test_unknown_key_and_wrong_type_are_named(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        '[data]\nname = "moons"\nsize = 3\n[model]\nname = "MAF"\n[train]\nsteps = 1\n'
    )
    with pytest.raises(ConfigError, match=r"\[data\] unknown key 'size'; allowed keys"):
        load_config(path)
    path.write_text('[data]\nname = 3\n')
    with pytest.raises(ConfigError, match=r"\[data\] name must be str, got int 3"):
        load_config(path)
    path.write_text('[datta]\nname = "x"\n')
    with pytest.raises(ConfigError, match=r"unknown section \[datta\]"):
        load_config(path)


def test_missing_file_and_unknown_preset():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("nowhere/run.toml")
    with pytest.raises(ConfigError, match="neither a TOML file nor a built-in preset; presets:"):
        load_config("no-such-preset")


def test_call_kwargs_checked_against_signature():
    def f(a: int, b: float = 1.0, c: list[int] | None = None, d: str = "x") -> None:
        pass

    check_call_kwargs(f, {"a": 1, "b": 2, "c": [1], "d": "y"}, "model")
    allowed = r"allowed keys: \['a', 'b', 'c', 'd'\]"
    with pytest.raises(ConfigError, match=r"\[model\] unknown key 'e' for f; " + allowed):
        check_call_kwargs(f, {"e": 1}, "model")
    with pytest.raises(ConfigError, match=r"\[model\] a must be int, got float 1.5"):
        check_call_kwargs(f, {"a": 1.5}, "model")
    with pytest.raises(ConfigError, match=r"\[model\] c must be list, got int"):
        check_call_kwargs(f, {"c": 3}, "model")
    with pytest.raises(ConfigError, match="unknown key 'a'"):
        check_call_kwargs(f, {"a": 1}, "model", exclude=("a",))


def test_dump_toml_round_trips():
    config = {"run": {"name": 'a "b"', "seed": 3}, "model": {"h": [1, 2], "x": 0.5, "f": True}}
    assert tomllib.loads(dump_toml(config)) == config
