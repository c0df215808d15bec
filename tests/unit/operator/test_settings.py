from eat_operator import settings as settings_mod


def test_empty_policy_url_from_the_environment_turns_the_service_off(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("EAT_OPERATOR_POLICY_URL", "")
    assert settings_mod.Settings().policy_url is None
    monkeypatch.setenv("EAT_OPERATOR_POLICY_URL", "http://policy:8000")
    assert settings_mod.Settings().policy_url == "http://policy:8000"
