"""The headers our plain-httpx calls to Prefect's REST API send, as Prefect's client does."""

from __future__ import annotations

import base64

import pytest
from pydantic import SecretStr

from deployments.prefect_rest import API_VERSION, prefect_headers
from shim.prefect_api import PrefectApi
from shim.settings import ShimSettings

pytestmark = pytest.mark.unit


def test_auth_string_is_basic_and_wins_over_a_key():
    headers = prefect_headers("user:pass", "key")
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"user:pass").decode()
    assert headers["X-PREFECT-API-VERSION"] == API_VERSION


def test_a_key_alone_is_a_bearer_token_and_nothing_sends_no_authorization():
    assert prefect_headers(None, "key")["Authorization"] == "Bearer key"
    assert "Authorization" not in prefect_headers(None, None)


def test_the_shim_sends_them():
    settings = ShimSettings(prefect_api_url="http://prefect.invalid/api", prefect_api_key=SecretStr("k"))
    api = PrefectApi(settings)
    assert api._client.headers["Authorization"] == "Bearer k"
    assert api._client.headers["User-Agent"] == "poligraph-jobs-shim"
