"""GET /v1/methods: every registered prompt method with its config's JSON schema and defaults, behind the read scope."""

from __future__ import annotations

from collections.abc import Callable

import jsonschema
import pytest
from fastapi.testclient import TestClient

from app.engine.methods import REGISTRY, parse_config
from tests.api.test_keys import ADMIN_KEY, as_key, new_key


def test_every_registered_method_is_listed_with_a_schema_its_defaults_satisfy(client: TestClient) -> None:
    response = client.get("/v1/methods")
    assert response.status_code == 200, response.text
    listed = response.json()["data"]
    assert [m["name"] for m in listed] == sorted(REGISTRY)
    for method in listed:
        name, schema, defaults = method["name"], method["config_schema"], method["defaults"]
        assert method["description"] and method["cacheable"] == REGISTRY[name].cacheable
        jsonschema.Draft202012Validator.check_schema(schema)
        jsonschema.validate(defaults, schema)
        # the defaults are what a job that names only the method trains with
        assert defaults == parse_config({"method": name}).model_dump(mode="json")
        assert defaults["method"] == name
        # the schema carries the config's bounds: it refuses what POST /v1/jobs refuses
        for bad in ({"num_virtual_tokens": 1000}, {"learning_rate": 0}, {"method": "nope"}, {"unknown_field": 1}):
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate({**defaults, **bad}, schema)


def test_listing_methods_needs_the_read_scope(client_with: Callable[..., TestClient]) -> None:
    admin = as_key(client_with(admin_key=ADMIN_KEY), ADMIN_KEY)
    assert as_key(admin, None).get("/v1/methods").status_code == 401
    infer_only = as_key(admin, new_key(admin, "acme", ["infer"])).get("/v1/methods")
    assert infer_only.status_code == 403 and infer_only.json()["error"]["code"] == "missing_scope"
    assert as_key(admin, new_key(admin, "acme", ["read"])).get("/v1/methods").status_code == 200
