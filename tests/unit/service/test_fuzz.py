"""Schema fuzzing of the service's own OpenAPI: no input may cause a server error."""

import hypothesis
import schemathesis
from schemathesis.checks import not_a_server_error

from eat_policy.service.app import app

# /readyz answers 503 by design until a checkpoint is loaded; every other 5xx is a bug.
schema = schemathesis.openapi.from_asgi("/openapi.json", app).exclude(path="/readyz")


@schema.parametrize()
@hypothesis.settings(max_examples=60, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_no_input_causes_a_server_error(case) -> None:  # type: ignore[no-untyped-def]
    case.call_and_validate(checks=[not_a_server_error])
