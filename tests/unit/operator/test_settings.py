import pytest

from eat_operator import settings as settings_mod


def test_empty_policy_url_from_the_environment_turns_the_service_off(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("EAT_OPERATOR_POLICY_URL", "")
    assert settings_mod.Settings().policy_url is None
    monkeypatch.setenv("EAT_OPERATOR_POLICY_URL", "http://policy:8000")
    assert settings_mod.Settings().policy_url == "http://policy:8000"


def test_extra_env_may_not_override_what_the_operator_sets(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("EAT_OPERATOR_EXTRA_ENV", '[{"name": "EAT_INFER_MODE", "value": "sync"}]')
    assert settings_mod.Settings().extra_env == [{"name": "EAT_INFER_MODE", "value": "sync"}]
    for bad in ('[{"name": "RANK", "value": "3"}]', '[{"value": "x"}]'):
        monkeypatch.setenv("EAT_OPERATOR_EXTRA_ENV", bad)
        with pytest.raises(ValueError):
            settings_mod.Settings()
    monkeypatch.setenv("EAT_OPERATOR_EXTRA_ENV", "[]")
    monkeypatch.setenv("EAT_OPERATOR_SECURITY_CONTEXT", '{"runAsNonRoot": true}')
    monkeypatch.setenv("EAT_OPERATOR_POD_SECURITY_CONTEXT", "{}")
    s = settings_mod.Settings()
    assert s.security_context == {"runAsNonRoot": True} and s.pod_security_context == {}


def test_models_must_be_in_the_policys_catalog(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A model the policy cannot plan would pass job validation and then fail every plan."""
    monkeypatch.setenv("EAT_OPERATOR_MODELS", '["sd15", "sdxl-turbo"]')
    assert settings_mod.Settings().models == ("sd15", "sdxl-turbo")
    monkeypatch.setenv("EAT_OPERATOR_MODELS", '["sd15", "sd21"]')
    with pytest.raises(ValueError, match=r"'sd21' not in the policy's catalog \(sd15, sdxl, sdxl-turbo\)"):
        settings_mod.Settings()
