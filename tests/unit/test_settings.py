"""``Settings`` is the one source of defaults: every field documented, the configurations built
from it agree with it, and the environment reaches them (an empty variable counts as unset)."""

import pytest

from synthd.api.limits import SecurityConfig
from synthd.config import Settings, setting_default
from synthd.engine.config import EngineConfig
from synthd.models.autoscaling import AutoscalingConfig


def test_every_setting_has_help_text() -> None:
    assert [name for name, field in Settings.model_fields.items() if not field.description] == []


def test_config_defaults_are_the_settings_defaults() -> None:
    settings = Settings(home="/nonexistent")
    engine = EngineConfig()
    assert (engine.max_num_seqs, engine.max_waiting, engine.max_loras) == (64, 1024, 8)
    assert EngineConfig.from_settings(settings, engine.kind) == engine
    assert SecurityConfig.from_settings(settings, "127.0.0.1") == SecurityConfig(
        allowed_hosts=("localhost", "127.0.0.1", "::1")
    )
    assert AutoscalingConfig.from_settings(settings) == AutoscalingConfig()
    assert SecurityConfig().max_file_bytes == setting_default("max_file_bytes")


def test_environment_reaches_the_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTHD_MAX_NUM_SEQS", "3")
    monkeypatch.setenv("SYNTHD_MAX_LOADED_ADAPTERS", "2")
    monkeypatch.setenv("SYNTHD_ALLOWED_HOSTS", "a.example, *.b.example")
    monkeypatch.setenv("SYNTHD_KV_CACHE_TOKENS", "")
    settings = Settings()
    engine = EngineConfig.from_settings(settings, "vllm", adapter_ranks=[32])
    assert (engine.max_num_seqs, engine.max_loras, engine.max_lora_rank, engine.kv_cache_tokens) == (3, 2, 32, None)
    assert SecurityConfig.from_settings(settings, "0.0.0.0").allowed_hosts == ("a.example", "*.b.example")


def test_admin_key_from_either_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTHD_API_KEY", "")
    monkeypatch.setenv("SYNTH_API_KEY", "platform-key")
    assert Settings().api_key == "platform-key"
    monkeypatch.setenv("SYNTHD_API_KEY", "server-key")
    assert Settings().api_key == "server-key"
    assert "server-key" not in repr(Settings())


def test_serving_context_caps_at_the_models_own() -> None:
    from synthd.engine.config import serving_context

    assert serving_context(None, 8192) == 8192
    assert serving_context(4096, 8192) == 4096
    assert serving_context(16384, 8192) == 8192  # one --max-model-len for models of several contexts
    assert serving_context(2048, None) == 2048
    assert serving_context(None, None) is None
