from pathlib import Path

import pytest

from market.cfgbase import describe
from daemon.config import Config, ConfigError, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_config_loads_and_equals_defaults():
    assert load_config(ROOT / "config.toml") == Config()


def test_shipped_config_is_generated_and_documents_every_option():
    import importlib.util
    spec = importlib.util.spec_from_file_location("gen_config", ROOT / "scripts" / "gen_config.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (ROOT / "config.toml").read_text() == mod.render(), "run scripts/gen_config.py"
    for key, _default, doc in describe(Config):
        assert doc, f"option {key} has no documentation"


@pytest.mark.parametrize("raw, needle", [
    ({"venue": {"port": 70000}}, "venue.port: must be <= 65535"),
    ({"venue": {"mode": "live"}}, "venue.mode: 'live' is not one of"),
    ({"broker": {"taker_fee": "0.1"}}, "broker.taker_fee: expected a number"),
    ({"feed": {"stale_after_s": float("nan")}}, "feed.stale_after_s: must be finite"),
    ({"general": {"symbols": []}}, "symbols: at least one"),
    ({"general": {"symbols": ["btc-usdt"]}}, "symbols: 'btc-usdt'"),
    ({"recorder": {"enabled": 1}}, "recorder.enabled: expected true/false"),
    ({"nosuch": {}}, "unknown key(s) nosuch"),
    ({"http": {"port": 8000, "prot": 1}}, "unknown key(s) http.prot"),
    ({"general": {"timeframes": ["2m"]}}, "general.timeframes: '2m' is not one of"),
])
def test_bad_config_names_the_file_and_key(raw, needle):
    with pytest.raises(ConfigError) as ei:
        config_from_dict(raw, "my.toml")
    assert str(ei.value).startswith("my.toml: ")
    assert needle in str(ei.value)


def test_bad_toml_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[venue\nport=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def _numeric_fields(cls, prefix=""):
    import dataclasses
    import typing
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(tp):
            yield from _numeric_fields(tp, key)
            continue
        args = typing.get_args(tp)
        if tp in (int, float) or (typing.get_origin(tp) is tuple and args and args[0] in (int, float)):
            yield key, f


def test_every_numeric_option_has_an_upper_bound():
    """Issue #14: ``store.writer_queue = 2**63-1`` was accepted. Every int/float option (and tuple of them) is
    bounded above (le/lt) or by a choice set, and its default is inside its range."""
    from market.cfgbase import _check_range
    fields = list(_numeric_fields(Config))
    assert len(fields) > 80  # the walk sees the whole tree
    unbounded = [k for k, f in fields
                 if f.metadata.get("le") is None and f.metadata.get("lt") is None and f.metadata.get("choices") is None]
    assert unbounded == []
    for k, f in fields:
        _check_range(f.default, dict(f.metadata), k, "defaults")


@pytest.mark.parametrize("raw, needle", [
    ({"store": {"writer_queue": 2**63 - 1}}, "store.writer_queue: must be <= 10000000"),
    ({"simulator": {"seed": -1}}, "simulator.seed: must be >= 0"),
    ({"risk": {"max_daily_loss": 1e300}}, "risk.max_daily_loss: must be <="),
    ({"optimizer": {"allow_short": True}, "broker": {"kind": "testnet"}}, "optimizer.allow_short = true needs "
                                                                          "broker.kind = \"paper\""),
    ({"engines": {"family": "pooled"}}, "engines.family"),
    ({"engines": {"family": "universe"}, "retrain": {"enabled": False},
      "general": {"symbols": ["BTCUSDT", "ETHUSDT"]}}, "engines.family = \"universe\" needs at least 3 symbols"),
])
def test_out_of_bounds_and_cross_section_rules_name_the_key(raw, needle):
    with pytest.raises(ConfigError) as ei:
        config_from_dict(raw, "my.toml")
    assert str(ei.value).startswith("my.toml: ") and needle in str(ei.value)


def test_universe_family_is_a_typed_choice():
    # the embedded default trades a small universe of the simulated market with the pooled models
    assert Config().engines.family == "auto" and len(Config().general.symbols) >= 3
    assert Config().model_family == "universe"
    assert config_from_dict({"general": {"symbols": ["BTCUSDT", "ETHUSDT"]}}).model_family == "per_symbol"
    assert config_from_dict({"engines": {"family": "per_symbol"}}).model_family == "per_symbol"
    c = config_from_dict({"engines": {"family": "universe"},
                          "general": {"symbols": ["BTCUSDT", "ETHUSDT", "SOLUSDT"]}})
    assert c.engines.family == "universe" and c.retrain.enabled  # the retrainer retrains the universe bundles


def test_spot_is_long_only_by_default_and_paper_may_choose_shorts():
    assert Config().optimizer.allow_short is False
    assert config_from_dict({"broker": {"kind": "testnet"}}).optimizer.allow_short is False
    assert config_from_dict({"optimizer": {"allow_short": True}}).optimizer.allow_short is True  # paper


def test_empty_config_file_is_refused_with_exit_2(tmp_path, capsys):
    """An empty (or comments-only) file used to start the full default daemon silently; no --config at all is
    how to ask for the embedded defaults."""
    import argparse

    from daemon import app
    p = tmp_path / "empty.toml"
    p.write_text("# nothing here\n\n")
    with pytest.raises(ConfigError, match="empty.toml: the config file is empty"):
        load_config(p)
    parser = argparse.ArgumentParser()
    app.add_arguments(parser)
    assert app.main(parser.parse_args(["--config", str(p)])) == app.EXIT_CONFIG
    err = capsys.readouterr().err
    assert "config file is empty" in err and "without --config" in err
    assert load_config(None) == Config()  # no --config: the embedded defaults
