from pathlib import Path

import pytest

from kbcore.config import Settings, load_settings


def test_defaults_file_then_environment_override_in_order(tmp_path):
    config = tmp_path / "kbchat.toml"
    config.write_text('kb_name = "laws"\n[llm]\nmodel = "qwen2.5-1.5b"\ntemperature = 0.7\n'
                      '[retrieval]\ntop_k = 9\n', encoding="utf-8")
    settings = load_settings(config, env={"KBCHAT_LLM__TEMPERATURE": "0.1", "KBCHAT_KB_ROOT": str(tmp_path)})
    assert settings.kb_name == "laws"
    assert settings.llm.model == "qwen2.5-1.5b"
    assert settings.llm.temperature == 0.1  # environment beats the file
    assert settings.retrieval.top_k == 9
    assert settings.kb_path == tmp_path / "laws"
    assert settings.chunking == Settings().chunking  # untouched sections keep their defaults


def test_config_file_named_by_environment(tmp_path):
    config = tmp_path / "other.toml"
    config.write_text("[chunking]\nchunk_size = 500\n", encoding="utf-8")
    assert load_settings(env={"KBCHAT_CONFIG": str(config)}).chunking.chunk_size == 500


@pytest.mark.parametrize("env, message", [
    ({"KBCHAT_RETRIEVAL__MODE": "magic"}, "mode"),
    ({"KBCHAT_RETRIEVAL__TOP_K": "many"}, "top_k"),
    ({"KBCHAT_NOPE": "1"}, "unknown setting"),
])
def test_bad_values_are_named(env, message):
    with pytest.raises(ValueError, match=message):
        load_settings(env=env, use_default_file=False)


def test_unreadable_config_file_is_named(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[llm\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.toml"):
        load_settings(bad, env={})


def test_settings_are_hashable_and_optional_fields_parse_none():
    settings = load_settings(env={"KBCHAT_LLM__ADAPTER": "none", "KBCHAT_CACHE_DIR": "~/x"}, use_default_file=False)
    assert settings.llm.adapter is None
    assert settings.cache_dir == Path("~/x").expanduser()
    assert hash(settings.llm) == hash(load_settings(env={}, use_default_file=False).llm)
