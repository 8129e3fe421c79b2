"""Hostile and malformed requests: always a 4xx in our error shape, never a 5xx."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from falcon import testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, update

from shared.context import Site
from shared.security import new_token
from shared.state.models import Connection, Counter, ModuleSettings
from tests.helpers import API, PEER, add_connection, case_id, configure, post, sha

PASSWORD = "open sesame"
MODES = ("auto_accept", "require_approval", "require_password", "deny_all")
INVALID_JSON = {"success": False, "error": "Invalid JSON body"}
TOO_LARGE = {"success": False, "error": "Request body too large"}

FIELDS: dict[str, list[tuple[str, bool]]] = {
    "register-connection": [
        ("sender_url", True),
        ("connection_name", True),
        ("auth_token", True),
        ("password", False),
    ],
    "get-connection-status": [("receiver_url", True), ("auth_token_hash", True)],
    "update-status": [
        ("sender_url", True),
        ("auth_token_hash", True),
        ("status", True),
    ],
    "delete-connection": [("sender_url", True), ("auth_token_hash", True)],
    "verify-connection": [("sender_url", True), ("auth_token_hash", True)],
}
POST_ENDPOINTS = list(FIELDS)

SWEEP = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


DISABLED = {"success": False, "error": "DB Sync module is disabled"}


def assert_protocol_answer(
    r: testing.Result, sent: Any = None, endpoint: str = "", disabled: bool = False
) -> None:
    """A 200 for a valid body or a 4xx in the protocol's error shape; JSON always.

    The one 5xx allowed is the protocol's 503 of a disabled module.
    """
    if disabled and r.status_code == 503:
        assert r.json == DISABLED
        return
    assert r.status_code < 500, (r.status_code, r.text[:300], repr(sent)[:300])
    assert r.status_code == 200 or 400 <= r.status_code < 500, r.status_code
    assert r.headers.get("content-type", "").startswith("application/json")
    body = json.loads(r.text)
    assert isinstance(body, dict)
    if r.status_code >= 400:
        assert body["success"] is False, body
        assert isinstance(body["error"], str) and body["error"], body
    else:
        assert body["success"] is True, body
        if endpoint:
            # Only a genuinely valid body may succeed.
            assert isinstance(sent, dict)
            for name, required in FIELDS[endpoint]:
                if required:
                    assert isinstance(sent.get(name), str) and sent[name], (name, sent)


# ---------------------------------------------------------------- strategies

NASTY = [
    " ",
    "\x00",
    "a\x00b",
    "\u202eevil",
    "\U0001f600",
    "\\",
    "%00",
    "'; DROP TABLE dbsync_connections; --",
    "\r\n",
    "null",
    PEER + "\x00",
    PEER + "/\u0000/",
    "http://127.0.0.1:19001\r\nX-Injected: 1",
]
nasty = st.sampled_from(NASTY)
scalars = st.one_of(
    nasty,
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=10), children, max_size=5),
    ),
    max_leaves=20,
)
huge_strings = st.builds(
    lambda ch, n: ch * n,
    st.characters(codec="utf-8"),
    st.integers(min_value=0, max_value=100_000),
)


def _nest(value: Any, depth: int, as_list: bool) -> Any:
    for _ in range(depth):
        value = [value] if as_list else {"a": value}
    return value


deep_values = st.builds(_nest, scalars, st.integers(1, 400), st.booleans())
junk = st.one_of(json_values, huge_strings, deep_values)


def plausible_values(name: str, known_hashes: list[str]) -> st.SearchStrategy[Any]:
    strategies: dict[str, st.SearchStrategy[Any]] = {
        "sender_url": st.one_of(
            st.sampled_from(
                [
                    PEER,
                    PEER + "/",
                    "HTTP://127.0.0.1:19001",
                    "http://2130706433",
                    "http://127.0.0.1:18999",
                    "ftp://x",
                    "http://[::1",
                    "http://10.0.0.1",
                ]
            ),
            st.integers(1, 65535).map(lambda p: f"http://127.0.0.1:{p}"),
            st.text(max_size=60).map(lambda t: "http://" + t),
        ),
        "receiver_url": st.one_of(
            st.sampled_from([PEER, "x", "http://127.0.0.1:19002"]), nasty
        ),
        "connection_name": st.one_of(st.text(min_size=1, max_size=40), nasty),
        "auth_token": st.one_of(st.builds(new_token), nasty),
        "auth_token_hash": st.sampled_from(
            known_hashes + [sha("nobody"), "a" * 64] + NASTY
        ),
        "status": st.sampled_from(["active", "suspended", "revoked", "paused", ""]),
        "password": st.sampled_from([PASSWORD, "wrong", ""]),
    }
    return strategies[name]


@st.composite
def object_bodies(
    draw: st.DrawFn, endpoint: str, known_hashes: list[str]
) -> dict[str, Any]:
    """Mostly complete bodies, each field plausible or junk, some fields left out."""
    body: dict[str, Any] = draw(st.dictionaries(st.text(max_size=12), junk, max_size=3))
    junk_rate = draw(st.sampled_from([0.0, 0.2, 0.5, 1.0]))
    omit_rate = draw(st.sampled_from([0.0, 0.0, 0.2, 0.5]))
    for name, _ in FIELDS[endpoint]:
        if draw(st.floats(0, 1)) < omit_rate:
            continue
        if draw(st.floats(0, 1)) < junk_rate:
            body[name] = draw(junk)
        else:
            body[name] = draw(plausible_values(name, known_hashes))
    return body


def raw_bodies(
    endpoint: str, known_hashes: list[str]
) -> st.SearchStrategy[tuple[Any, bytes]]:
    """(what was meant, the bytes sent)."""
    objects = object_bodies(endpoint, known_hashes).map(
        lambda v: (v, json.dumps(v).encode())
    )
    others = st.one_of(json_values, st.lists(json_values, max_size=4), deep_values).map(
        lambda v: (v, json.dumps(v).encode())
    )
    not_json = st.binary(max_size=200).map(lambda b: (None, b))
    deep_text = st.builds(
        lambda n, lst: (
            None,
            (b"[" * n + b"]" * n) if lst else (b'{"a":' * n + b"1" + b"}" * n),
        ),
        st.integers(100, 5000),
        st.booleans(),
    )
    kinds = [objects] * 6 + [others] * 2 + [not_json, deep_text]
    return st.integers(0, len(kinds) - 1).flatmap(lambda i: kinds[i])


# ---------------------------------------------------------------- the sweep


@pytest.mark.parametrize("endpoint", POST_ENDPOINTS)
def test_post_endpoints_never_fail_with_5xx(
    site: Site, client: testing.TestClient, endpoint: str
) -> None:
    configure(site, password=PASSWORD)
    known = [
        add_connection(site, direction="sender", name="Known")[1],
        add_connection(site, direction="receiver", name="Known")[1],
    ]
    engine = site.db.engine

    @SWEEP
    @given(
        mode=st.sampled_from(MODES + MODES[:3] + ("disabled",)),
        sent=raw_bodies(endpoint, known),
        content_type=st.sampled_from(["application/json", "text/plain", None]),
    )
    def run(mode: str, sent: tuple[Any, bytes], content_type: str | None) -> None:
        with engine.begin() as conn:
            conn.execute(
                update(ModuleSettings).values(
                    enabled=mode != "disabled",
                    incoming_mode="auto_accept" if mode == "disabled" else mode,
                )
            )
            conn.execute(delete(Counter))  # keep the password path reachable
        headers = {"content-type": content_type} if content_type else {}
        meant, raw = sent
        r = client.simulate_post(f"{API}/{endpoint}", body=raw, headers=headers)
        assert_protocol_answer(r, meant, endpoint, disabled=mode == "disabled")
        if mode == "disabled" and len(raw) <= site.settings.max_body_bytes:
            assert r.status_code == 503
        denied_first = endpoint == "register-connection" and mode == "deny_all"
        not_an_object = meant is not None and not isinstance(meant, dict)
        if mode != "disabled" and not_an_object and not denied_first:
            assert (r.status_code, r.json) == (400, INVALID_JSON)

    run()


@SWEEP
@given(
    query=st.dictionaries(
        st.text(min_size=1, max_size=10), st.text(max_size=20), max_size=3
    ),
    raw=st.one_of(
        st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode())
    ),
)
def _status_sweep(
    client: testing.TestClient, query: dict[str, str], raw: bytes
) -> None:
    r = client.simulate_get(f"{API}/status", params=query, body=raw)
    assert_protocol_answer(r)
    assert r.json == {
        "success": True,
        "enabled": True,
        "incoming_mode": "deny_all",
        "password_required": False,
        "accepting_connections": False,
        "protocol": 1,
    }


def test_get_status_always_answers_its_body(
    site: Site, client: testing.TestClient
) -> None:
    configure(site, mode="deny_all", password=PASSWORD)
    _status_sweep(client)


# ---------------------------------------------------------------- explicit cases


def padded(size: int, **fields: str) -> bytes:
    """A JSON object of exactly ``size`` bytes."""
    base = json.dumps({**fields, "pad": ""}).encode()
    return json.dumps({**fields, "pad": "x" * (size - len(base))}).encode()


@pytest.mark.parametrize("endpoint", POST_ENDPOINTS)
@pytest.mark.parametrize("settings_env", [{"SYNC_MAX_BODY_BYTES": "2048"}])
def test_body_over_the_limit_is_413(
    site: Site, client: testing.TestClient, endpoint: str
) -> None:
    configure(site, password=PASSWORD)
    raw = padded(2049, sender_url=PEER, auth_token_hash=sha("x"))
    assert len(raw) == 2049
    r = post(client, endpoint, raw)
    assert (r.status_code, r.json) == (413, TOO_LARGE), endpoint
    r = post(client, endpoint, b"[" + b"1," * 50_000 + b"1]")
    assert (r.status_code, r.json) == (413, TOO_LARGE), endpoint
    # Exactly at the limit is read and answered normally.
    raw = padded(2048, sender_url=PEER, receiver_url=PEER, auth_token_hash=sha("x"))
    assert len(raw) == 2048
    r = post(client, endpoint, raw)
    assert r.status_code in (400, 404), (endpoint, r.json)


def call_wsgi(
    client: testing.TestClient, endpoint: str, raw: bytes, **environ: Any
) -> tuple[int, Any]:
    """Call the app with a hand-made environ (the test client would refuse it)."""
    env = testing.create_environ(
        method="POST",
        path=f"{API}/{endpoint}",
        headers={"content-type": "application/json"},
    )
    env["wsgi.input"] = io.BytesIO(raw)
    env["CONTENT_LENGTH"] = str(len(raw))
    for key, value in environ.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    start = testing.StartResponseMock()
    out = b"".join(client.app(env, start))
    return int(start.status.split()[0]), json.loads(out)


def call_chunked(
    client: testing.TestClient, endpoint: str, raw: bytes
) -> tuple[int, Any]:
    """POST as a WSGI server presents a chunked request: no Content-Length.

    gunicorn (and other servers that de-chunk) set ``wsgi.input_terminated``.
    """
    return call_wsgi(
        client,
        endpoint,
        raw,
        CONTENT_LENGTH=None,
        HTTP_TRANSFER_ENCODING="chunked",
        **{"wsgi.input_terminated": True},
    )


@pytest.mark.parametrize("endpoint", POST_ENDPOINTS)
@pytest.mark.parametrize("settings_env", [{"SYNC_MAX_BODY_BYTES": "2048"}])
def test_chunked_body_over_the_limit_is_413(
    site: Site, client: testing.TestClient, endpoint: str
) -> None:
    configure(site, password=PASSWORD)
    raw = padded(10_000, sender_url=PEER, auth_token_hash=sha("x"))
    assert call_chunked(client, endpoint, raw) == (413, TOO_LARGE), endpoint


def test_chunked_body_within_the_limit_is_read(
    site: Site, client: testing.TestClient
) -> None:
    configure(site, password=PASSWORD)
    token_hash = add_connection(site, direction="receiver", name="Known")[1]
    raw = json.dumps({"sender_url": PEER, "auth_token_hash": token_hash}).encode()
    assert call_chunked(client, "verify-connection", raw) == (
        200,
        {"success": True, "exists": True},
    )


NOT_OBJECTS = [
    b"",
    b"{nope",
    b"{'single': 'quotes'}",
    b'{"a": 1} trailing',
    b"\xff\xfe\x00",
    b"NaN",
    b"[]",
    b'[{"sender_url": "http://127.0.0.1:19001"}]',
    b'"a string"',
    b"42",
    b"3.5",
    b"true",
    b"null",
    b"[" * 3000 + b"]" * 3000,
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
]


@pytest.mark.parametrize("raw", NOT_OBJECTS, ids=case_id)
@pytest.mark.parametrize("endpoint", POST_ENDPOINTS)
@pytest.mark.parametrize("mode", ["auto_accept", "require_password"])
def test_a_body_that_is_not_a_json_object_is_400(
    site: Site, client: testing.TestClient, mode: str, endpoint: str, raw: bytes
) -> None:
    configure(site, mode=mode, password=PASSWORD)
    r = post(client, endpoint, raw)
    assert (r.status_code, r.json) == (400, INVALID_JSON), (endpoint, raw[:40])


WRONG_TYPES: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "register-connection",
        {"sender_url": PEER, "connection_name": 123, "auth_token": "t"},
        "connection_name",
        "a string",
    ),
    (
        "register-connection",
        {"sender_url": [PEER], "connection_name": {"a": 1}, "auth_token": "t"},
        "sender_url",
        "a string",
    ),
    (
        "register-connection",
        {"sender_url": PEER, "connection_name": "n", "auth_token": True},
        "auth_token",
        "a string",
    ),
    (
        "register-connection",
        {
            "sender_url": PEER,
            "connection_name": "n",
            "auth_token": "t",
            "password": ["pw"],
        },
        "password",
        "a string",
    ),
    (
        "get-connection-status",
        {"receiver_url": PEER, "auth_token_hash": {"$ne": None}},
        "auth_token_hash",
        "a string",
    ),
    (
        "get-connection-status",
        {"receiver_url": 1.5, "auth_token_hash": "h"},
        "receiver_url",
        "",
    ),
    (
        "update-status",
        {"sender_url": PEER, "auth_token_hash": "h", "status": ["active"]},
        "status",
        "",
    ),
    (
        "update-status",
        {"sender_url": PEER, "auth_token_hash": 0, "status": "active"},
        "auth_token_hash",
        "",
    ),
    (
        "delete-connection",
        {"sender_url": True, "auth_token_hash": "h"},
        "sender_url",
        "",
    ),
    (
        "verify-connection",
        {"sender_url": PEER, "auth_token_hash": 12345},
        "auth_token_hash",
        "",
    ),
    (
        "verify-connection",
        {"sender_url": PEER, "auth_token_hash": [[[["deep"]]]]},
        "auth_token_hash",
        "",
    ),
]


@pytest.mark.parametrize(
    ("endpoint", "body", "field", "_"),
    WRONG_TYPES,
    ids=[f"{e}-{f}-{case_id(b)}" for e, b, f, _ in WRONG_TYPES],
)
def test_wrong_typed_field_is_400_naming_it(
    site: Site,
    client: testing.TestClient,
    endpoint: str,
    body: dict[str, Any],
    field: str,
    _: str,
) -> None:
    configure(site, password=PASSWORD)
    r = client.simulate_post(f"{API}/{endpoint}", json=body)
    assert r.status_code == 400, (endpoint, body)
    assert r.json == {
        "success": False,
        "error": f"Field {field} must be a string",
        "field": field,
    }, (endpoint, body)


def test_update_status_with_a_list_status_exact_body(
    site: Site, client: testing.TestClient
) -> None:
    configure(site, password=PASSWORD)
    token_hash = add_connection(site, direction="receiver", name="Known")[1]
    r = client.simulate_post(
        f"{API}/update-status",
        json={"sender_url": PEER, "auth_token_hash": token_hash, "status": ["revoked"]},
    )
    assert r.status_code == 400
    assert r.json == {
        "success": False,
        "error": "Field status must be a string",
        "field": "status",
    }


def test_missing_fields_come_before_wrong_types(
    site: Site, client: testing.TestClient
) -> None:
    configure(site, password=PASSWORD)
    r = client.simulate_post(f"{API}/register-connection", json={"sender_url": 1})
    assert r.status_code == 400
    assert r.json == {
        "success": False,
        "error": "Missing required fields",
        "fields": ["connection_name", "auth_token"],
    }


TOO_LONG: list[tuple[str, dict[str, Any], str]] = [
    (
        "register-connection",
        {"sender_url": PEER, "connection_name": "n" * 256, "auth_token": "t"},
        "connection_name",
    ),
    (
        "register-connection",
        {
            "sender_url": PEER + "/" + "p" * 2048,
            "connection_name": "n",
            "auth_token": "t",
        },
        "sender_url",
    ),
    (
        "register-connection",
        {"sender_url": PEER, "connection_name": "n", "auth_token": "t" * 100_000},
        "auth_token",
    ),
    (
        "verify-connection",
        {"sender_url": PEER, "auth_token_hash": "h" * 129},
        "auth_token_hash",
    ),
    (
        "update-status",
        {"sender_url": PEER, "auth_token_hash": "h", "status": "s" * 33},
        "status",
    ),
]


@pytest.mark.parametrize(
    ("endpoint", "body", "field"),
    TOO_LONG,
    ids=[f"{e}-{f}" for e, _, f in TOO_LONG],
)
def test_too_long_fields_are_400_naming_them(
    site: Site,
    client: testing.TestClient,
    endpoint: str,
    body: dict[str, Any],
    field: str,
) -> None:
    configure(site, password=PASSWORD)
    r = client.simulate_post(f"{API}/{endpoint}", json=body)
    assert (r.status_code, r.json) == (
        400,
        {"success": False, "error": f"Field {field} is too long", "field": field},
    ), endpoint
    with site.db.session() as session:
        assert session.query(Connection).count() == 0


NUL_BODIES: list[tuple[str, dict[str, Any]]] = [
    (
        "register-connection",
        {"sender_url": PEER, "connection_name": "a\x00b", "auth_token": "t"},
    ),
    (
        "register-connection",
        {"sender_url": PEER + "/\x00", "connection_name": "a", "auth_token": "t"},
    ),
    ("get-connection-status", {"receiver_url": PEER, "auth_token_hash": "ab\x00"}),
    (
        "update-status",
        {"sender_url": PEER, "auth_token_hash": "ab\x00", "status": "active"},
    ),
    ("delete-connection", {"sender_url": PEER + "\x00", "auth_token_hash": "ab"}),
    ("verify-connection", {"sender_url": PEER, "auth_token_hash": "\x00"}),
]


def test_nul_characters_in_strings_are_400_not_500(
    site: Site, client: testing.TestClient
) -> None:
    configure(site, password=PASSWORD)
    answers = []
    for endpoint, body in NUL_BODIES:
        r = client.simulate_post(f"{API}/{endpoint}", json=body)
        answers.append(
            (endpoint, r.status_code, r.json["success"], r.json.get("field"))
        )
    assert answers == [
        ("register-connection", 400, False, "connection_name"),
        ("register-connection", 400, False, "sender_url"),
        ("get-connection-status", 400, False, "auth_token_hash"),
        ("update-status", 400, False, "auth_token_hash"),
        ("delete-connection", 400, False, "sender_url"),
        ("verify-connection", 400, False, "auth_token_hash"),
    ]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"{API}/nope"),
        ("POST", f"{API}/register"),
        ("GET", "/"),
        ("POST", "/sync/api"),
    ],
)
def test_unknown_route_is_404_in_our_shape(
    client: testing.TestClient, method: str, path: str
) -> None:
    r = client.simulate_request(method, path)
    assert r.status_code == 404
    assert r.json == {"success": False, "error": "Not found"}


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", f"{API}/{e}") for e in POST_ENDPOINTS]
    + [
        ("POST", f"{API}/status"),
        ("PUT", f"{API}/register-connection"),
        ("DELETE", f"{API}/delete-connection"),
    ],
)
def test_wrong_method_is_405_in_our_shape(
    client: testing.TestClient, method: str, path: str
) -> None:
    r = client.simulate_request(method, path)
    assert r.status_code == 405, (method, path)
    assert r.json == {"success": False, "error": "405 Method Not Allowed"}, (
        method,
        path,
    )
    assert r.headers["allow"]


@pytest.mark.parametrize("value", ["abc", "-5"])
def test_invalid_content_length_header_is_400_in_our_shape(
    site: Site, client: testing.TestClient, value: str
) -> None:
    configure(site, password=PASSWORD)
    status, body = call_wsgi(client, "verify-connection", b"{}", CONTENT_LENGTH=value)
    assert status == 400, value
    assert body["success"] is False
    assert isinstance(body["error"], str) and body["error"]
