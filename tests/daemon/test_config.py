from pathlib import Path

import pytest

from daemon.cfgbase import describe
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
