"""The OpenAPI 3.1 document: paths, parameters, bodies, responses and schemas of the routes."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.openapi import openapi_document, openapi_path
from bridge.registry import JsonShape, ProtoSet, build_snapshot, load_includes
from bridge.routing import parse_template

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def document_of(protos: ProtoSet, **options: Any) -> dict[str, Any]:
    snapshot = build_snapshot([protos], lambda service: "users", JsonShape())
    return openapi_document(snapshot, **options)


@pytest.fixture(scope="module")
def doc(demo_protos: ProtoSet) -> dict[str, Any]:
    return document_of(demo_protos)


def op(doc: dict[str, Any], path: str, verb: str) -> dict[str, Any]:
    return doc["paths"][path][verb]


def params(operation: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in operation.get("parameters", []) if p["in"] == where}


def deref(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    return doc["components"]["schemas"][ref.rpartition("/")[2]] if ref else schema


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for verb, operation in item.items():
            yield path, verb, operation


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


# --- paths -----------------------------------------------------------------------------------


def test_every_http_rule_has_its_path_and_verb(doc):
    paths = doc["paths"]
    # PATCH /v1/{user.name=users/*} is /v1/users/{user.name}, which OpenAPI deems the same path.
    assert set(paths["/v1/users/{id}"]) == {"get", "patch", "delete"}
    assert set(paths["/v1/users"]) == {"get", "post"}
    assert set(paths["/v1/users/{id}:ban"]) == {"post"}
    assert set(paths["/v1/users/{id}/attachments/{path}"]) == {"get"}
    assert set(paths["/v1/users/{id}/profile"]) == {"get"}
    assert set(paths["/v1/orgs/{org}/users"]) == {"get"}
    assert set(paths["/v1/echo"]) == {"post"}
    assert set(paths["/v1/echo/{message}"]) == {"get"}
    assert list(paths) == sorted(paths)


def test_every_method_has_its_default_route(doc):
    echo = op(doc, "/demo.echo.v1.EchoService/Echo", "post")
    assert echo["operationId"] == "EchoService_Echo_rpc"  # the HTTP rule has the plain id
    unannotated = op(doc, "/demo.echo.v1.EchoService/ResetStats", "post")
    assert unannotated["operationId"] == "EchoService_ResetStats"
    body = unannotated["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"type": "object"}  # google.protobuf.Empty
    whole = op(doc, "/demo.users.v1.UserService/BanUser", "post")["requestBody"]
    assert whole["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/demo.users.v1.BanUserRequest"
    }


def test_operation_ids_tags_and_summaries(doc):
    assert op(doc, "/v1/users/{id}", "get")["operationId"] == "UserService_GetUser"
    assert op(doc, "/v1/users/{id}/profile", "get")["operationId"] == "UserService_GetUser_1"
    assert op(doc, "/v1/orgs/{org}/users", "get")["operationId"] == "UserService_ListUsers_1"
    get = op(doc, "/v1/users/{id}", "get")
    assert get["tags"] == ["demo.users.v1.UserService"]
    assert get["summary"] == "GetUser"
    ids = [o["operationId"] for _, _, o in operations(doc)]
    assert len(ids) == len(set(ids))
    tags = [t["name"] for t in doc["tags"]]
    assert tags == ["demo.echo.v1.EchoService", "demo.users.v1.UserService"]


def test_a_patterned_variable_keeps_its_literal_segments_in_the_path(doc):
    name = params(op(doc, "/v1/users/{id}", "patch"), "path")["id"]
    assert name["required"] is True
    assert name["schema"] == {"type": "string"}
    assert name["description"] == "Sets `user.name` to `users/{id}`."
    assert "/v1/{user.name}" not in doc["paths"]


def test_a_multi_segment_variable_is_one_parameter_with_a_pattern(doc):
    path = params(op(doc, "/v1/users/{id}/attachments/{path}", "get"), "path")
    assert set(path) == {"id", "path"}
    assert path["path"]["schema"]["pattern"] == "^.+$"


def test_path_parameters_are_typed_from_their_field(doc):
    code = params(op(doc, "/v1/fail/{code}", "get"), "path")["code"]
    assert code["schema"] == {"type": "integer", "format": "int32"}
    assert code["required"] is True


def test_template_conversion():
    def convert(template: str, expand: bool = False) -> tuple[str, list[str]]:
        path, found = openapi_path(parse_template(template), expand=expand)
        return path, [p.name for p in found]

    assert convert("/v1/users/{id}:ban") == ("/v1/users/{id}:ban", ["id"])
    assert convert("/v1/{name=shelves/*/books/*}") == ("/v1/{name}", ["name"])
    expanded = convert("/v1/{name=shelves/*/books/*}", expand=True)
    assert expanded == ("/v1/shelves/{name}/books/{name_2}", ["name", "name_2"])
    assert convert("/v1/*/x/{a.b=**}") == ("/v1/{_segment1}/x/{a.b}", ["_segment1", "a.b"])
    assert convert("/") == ("/", [])
    _, found = openapi_path(parse_template("/v1/{name=a.b/*}"))
    assert found[0].pattern == r"^a\.b/[^/]+$"


# --- parameters and bodies -------------------------------------------------------------------


def test_list_users_query_parameters(doc):
    query = params(op(doc, "/v1/users", "get"), "query")
    assert query["pageSize"]["schema"] == {"type": "integer", "format": "int32"}
    assert query["filter.city"]["schema"] == {"type": "string"}
    assert query["filter.createdAfter"]["schema"] == {"type": "string", "format": "date-time"}
    assert query["tags"]["schema"] == {"type": "array", "items": {"type": "string"}}
    assert query["minKarma"]["schema"] == {"type": "string", "format": "int64"}
    role = deref(doc, query["role"]["schema"])
    assert role["enum"] == ["ROLE_UNSPECIFIED", "ROLE_MEMBER", "ROLE_ADMIN"]
    assert "filter" not in query
    by_org = op(doc, "/v1/orgs/{org}/users", "get")
    assert "org" in params(by_org, "path") and "org" not in params(by_org, "query")


def test_fields_bound_by_path_or_body_are_not_query_parameters(doc):
    assert set(params(op(doc, "/v1/users/{id}", "get"), "query")) == {"fields"}  # selection
    create = op(doc, "/v1/users", "post")
    assert set(params(create, "query")) == {"userId", "validateOnly", "fields"}
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/demo.users.v1.User"
    }
    echo = op(doc, "/v1/echo", "post")  # body "*": nothing in the query but the selection
    assert set(params(echo, "query")) == {"fields"}


def test_query_parameters_stop_at_cycles_and_skip_maps_and_structs(doc):
    query = params(op(doc, "/v1/echo/{message}", "get"), "query")
    assert {"inner.note", "inner.level", "ratio", "numbers", "kinds", "mask", "big"} <= set(query)
    assert not any(name.startswith("inner.child") for name in query)
    assert not {"responseHeaders", "named", "extra", "message"} & set(query)
    assert query["ratio"]["schema"] == {"type": "number", "format": "double"}  # no null in URLs


def test_body_star_leaves_out_what_the_path_sets(doc):
    ban = op(doc, "/v1/users/{id}:ban", "post")
    body = ban["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"reason", "duration"}
    assert set(params(ban, "query")) == {"fields"}  # the response's field selection only


def test_body_field_leaves_out_what_the_path_sets(doc):
    patch = op(doc, "/v1/users/{id}", "patch")
    body = patch["requestBody"]["content"]["application/json"]["schema"]
    assert "name" not in body["properties"]
    assert {"displayName", "email", "address"} <= set(body["properties"])
    assert set(params(patch, "query")) == {"updateMask", "fields"}


def test_client_streaming_takes_ndjson(doc):
    body = op(doc, "/v1/sum", "post")["requestBody"]
    ndjson = body["content"]["application/x-ndjson"]["schema"]
    assert ndjson == {"$ref": "#/components/schemas/demo.echo.v1.SumRequest"}
    assert "per line" in body["description"]


# --- responses and schemas -------------------------------------------------------------------


def test_responses_have_the_output_and_the_status(doc):
    get = op(doc, "/v1/users/{id}", "get")["responses"]
    assert get["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/demo.users.v1.User"
    }
    error = deref(doc, get["default"]["content"]["application/json"]["schema"])
    assert error["properties"]["code"]["type"] == "integer"
    assert error["properties"]["message"]["type"] == "string"
    detail = error["properties"]["details"]["items"]
    assert detail["properties"]["@type"] == {"type": "string"}


def test_response_body_is_the_fields_schema(doc):
    profile = op(doc, "/v1/users/{id}/profile", "get")["responses"]["200"]
    assert profile["content"]["application/json"]["schema"] == {
        "type": "object", "additionalProperties": True,
    }  # fmt: skip


def test_server_streaming_is_ndjson_or_sse(doc):
    ok = op(doc, "/v1/ticks", "get")["responses"]["200"]
    assert set(ok["content"]) == {"application/x-ndjson", "text/event-stream"}
    lines = ok["content"]["application/x-ndjson"]["schema"]["oneOf"]
    tick = {"$ref": "#/components/schemas/demo.echo.v1.TickEvent"}
    assert lines[0]["properties"]["result"] == tick
    assert lines[1]["properties"]["error"] == {"$ref": "#/components/schemas/google.rpc.Status"}


# --- raw bodies: google.api.HttpBody ---------------------------------------------------------

RAW = {"*/*": {"schema": {"type": "string", "format": "binary"}}}


def json_of(message: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{message}"}}}


STATUS = json_of("google.rpc.Status")


def test_upload_takes_the_raw_body_and_answers_json(doc):
    upload = op(doc, "/v1/files/{name}", "post")
    assert upload["x-grpc"]["method"] == "demo.echo.v1.EchoService/Upload"
    body = upload["requestBody"]
    assert body["content"] == RAW
    assert "`file.data`" in body["description"] and "`file.content_type`" in body["description"]
    assert set(params(upload, "path")) == {"name"}
    assert set(params(upload, "query")) == {"fields"}  # `file` is the body, `name` the path
    assert upload["responses"]["200"]["content"] == json_of("demo.echo.v1.UploadResponse")
    assert upload["responses"]["default"]["content"] == STATUS


def test_download_answers_raw_bytes_not_ndjson_or_sse(doc):
    download = op(doc, "/v1/files/{name}", "get")
    assert download["x-grpc"] == {
        "method": "demo.echo.v1.EchoService/Download", "kind": "server_streaming",
    }  # fmt: skip
    assert "requestBody" not in download
    assert set(params(download, "query")) == {"lines", "contentType", "intervalMs", "failAfter"}
    ok = download["responses"]["200"]
    assert ok["content"] == RAW
    assert "whatever the `Accept` header asks" in ok["description"]
    assert '`{"error": status}`' in ok["description"]
    assert download["responses"]["default"]["content"] == STATUS


def test_the_default_routes_of_raw_methods(doc):
    """POST /pkg.Service/Method takes the whole request as JSON: an HttpBody field inside it is
    JSON too, while an HttpBody reply is raw on every route."""
    upload = op(doc, "/demo.echo.v1.EchoService/Upload", "post")
    assert upload["requestBody"]["content"] == json_of("demo.echo.v1.UploadRequest")
    download = op(doc, "/demo.echo.v1.EchoService/Download", "post")
    assert download["requestBody"]["content"] == json_of("demo.echo.v1.DownloadRequest")
    assert download["responses"]["200"]["content"] == RAW
    assert "fields" not in params(download, "query")


@pytest.fixture(scope="module")
def raw_doc() -> dict[str, Any]:
    """The document of tests/protos, whose RawService covers every HttpBody position."""
    from tests.proto_service import TEST_PROTOS

    return document_of(asyncio.run(load_includes((TEST_PROTOS,))))


@pytest.mark.parametrize(
    "path, verb, request_body, query, reply",
    [
        pytest.param("/v1/pages/{name}", "get", None, {"contentType"}, RAW, id="reply"),
        pytest.param("/v1/reports/{name}", "get", None, {"contentType"}, RAW,
                     id="response-body-field"),
        pytest.param("/v1/reports/{name}:json", "get", None, {"contentType", "fields"},
                     json_of("fidelity.v1.Report"), id="other-binding-json"),
        pytest.param("/v1/blobs", "post", "data", {"fields"}, "json", id="request-body-star"),
        pytest.param("/fidelity.v1.RawService/Store", "post", "data", {"fields"}, "json",
                     id="request-default-route"),
        pytest.param("/v1/things/{name}/attachment", "put", "file.data", {"note", "fields"},
                     "json", id="request-body-field"),
        pytest.param("/fidelity.v1.RawService/Page", "post", None, set(), RAW,
                     id="reply-default-route"),
    ],
)  # fmt: skip
def test_every_http_body_position_is_raw(raw_doc, path, verb, request_body, query, reply):
    operation = op(raw_doc, path, verb)
    body = operation.get("requestBody")
    if request_body is None:
        assert body is None or "application/json" in body["content"]
    else:
        assert body["content"] == RAW and f"`{request_body}`" in body["description"]
    assert set(params(operation, "query")) == query
    ok = operation["responses"]["200"]["content"]
    assert (set(ok) == {"application/json"}) if reply == "json" else (ok == reply)
    assert operation["responses"]["default"]["content"] == STATUS


def test_the_raw_document_passes_openapi_spec_validator(raw_doc):
    validate(raw_doc)


def test_message_schemas_follow_the_proto3_json_mapping(doc):
    user = doc["components"]["schemas"]["demo.users.v1.User"]["properties"]
    assert user["karma"] == {"type": "string", "format": "int64"}
    # a singular message field may be null: unset ones are written as null
    assert user["createTime"] == {"type": ["string", "null"], "format": "date-time"}
    assert user["nickname"] == {"type": ["string", "null"]}
    assert user["age"] == {"type": ["integer", "null"], "format": "int32"}
    assert user["avatar"] == {"type": "string", "format": "byte"}
    assert user["labels"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert user["tags"] == {"type": "array", "items": {"type": "string"}}
    address = {"$ref": "#/components/schemas/demo.users.v1.Address"}
    assert user["address"] == {"anyOf": [address, {"type": "null"}]}
    assert user["sessionTtl"]["type"] == ["string", "null"]
    assert "oneof `contact`" in user["phone"]["description"]
    echo = doc["components"]["schemas"]["demo.echo.v1.EchoRequest"]["properties"]
    assert echo["big"] == {"type": "string", "format": "uint64"}
    assert echo["numbers"] == {"type": "array", "items": {"type": "string", "format": "int64"}}
    assert echo["extra"] == {"type": ["object", "null"], "additionalProperties": True}
    assert echo["named"]["additionalProperties"] == {
        "$ref": "#/components/schemas/demo.echo.v1.EchoRequest.Inner"
    }
    inner = doc["components"]["schemas"]["demo.echo.v1.EchoRequest.Inner"]["properties"]
    child = {"$ref": "#/components/schemas/demo.echo.v1.EchoRequest.Inner"}
    assert inner["child"] == {"anyOf": [child, {"type": "null"}]}
    assert echo["mask"]["type"] == ["string", "null"]  # map values and list items are not


def test_proto_names_on_request(demo_protos):
    doc = document_of(demo_protos, use_proto_names=True)
    query = params(op(doc, "/v1/users", "get"), "query")
    assert {"page_size", "filter.city", "min_karma"} <= set(query)
    assert "display_name" in doc["components"]["schemas"]["demo.users.v1.User"]["properties"]


# --- the document as a whole -----------------------------------------------------------------


def test_every_ref_resolves(doc):
    schemas = doc["components"]["schemas"]
    found = set(refs(doc))
    assert found
    for ref in found:
        assert ref.startswith("#/components/schemas/")
        assert ref.rpartition("/")[2] in schemas, ref
    assert list(schemas) == sorted(schemas)


def test_the_document_is_structurally_openapi_3_1(doc):
    assert doc["openapi"] == "3.1.0"
    assert doc["info"]["title"] == "Bridge" and doc["info"]["version"]
    assert "x-bridge-unlisted-routes" not in doc
    for path, verb, operation in operations(doc):
        assert path.startswith("/") and verb in METHODS
        assert "200" in operation["responses"] and "default" in operation["responses"]
        for response in operation["responses"].values():
            assert response["description"]
        named = set(re.findall(r"\{([^}]+)\}", path))
        assert set(params(operation, "path")) == named, path
        assert all(p["required"] for p in params(operation, "path").values())
        for parameter in operation.get("parameters", []):
            assert parameter["in"] in ("path", "query") and "schema" in parameter
    json.dumps(doc)  # JSON-ready


def test_the_document_passes_openapi_spec_validator(doc):
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(doc)


def test_the_document_is_deterministic(demo_protos, doc):
    assert json.dumps(document_of(demo_protos)) == json.dumps(doc)


COLLIDING = """\
syntax = "proto3";
package shelf.v1;
import "google/api/annotations.proto";
message ListRequest { string parent = 1; int32 page_size = 2; }
message ListResponse { repeated string names = 1; }
service Books {
  rpc List(ListRequest) returns (ListResponse) {
    option (google.api.http) = {
      get: "/v1/{parent=shelves/*}/books"
      additional_bindings { get: "/v1/{parent=projects/*}/books" }
      additional_bindings { custom: {kind: "LIST", path: "/v1/all/books"} }
    };
  }
}
"""


def test_patterns_that_differ_in_literals_are_paths_of_their_own(tmp_path):
    (tmp_path / "shelf.proto").write_text(COLLIDING)
    doc = document_of(asyncio.run(load_includes((tmp_path,))))
    projects = params(op(doc, "/v1/projects/{parent}/books", "get"), "path")["parent"]
    assert "projects/{parent}" in projects["description"]
    expanded = params(op(doc, "/v1/shelves/{parent}/books", "get"), "path")["parent"]
    assert "shelves/{parent}" in expanded["description"]
    assert doc["x-bridge-unlisted-routes"] == [
        "LIST /v1/all/books (shelf.v1.Books/List): OpenAPI has no HTTP method LIST"
    ]


# --- the command -----------------------------------------------------------------------------


def test_bridge_openapi_prints_the_document(tmp_path):
    config = tmp_path / "bridge.yaml"
    config.write_text(textwrap.dedent(f"""\
        protos: {{include: [{json.dumps(str(ROOT / "protos"))}]}}
        upstreams:
          users: {{targets: ["127.0.0.1:1"]}}
          echo: {{targets: ["127.0.0.1:2"]}}
        services: {{"demo.users.v1.*": users, "demo.echo.v1.*": echo}}
        """))  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "openapi", "--config", str(config)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["openapi"] == "3.1.0"
    assert {"/v1/users/{id}", "/v1/echo", "/v1/ticks"} <= set(printed["paths"])
    assert result.stdout.startswith('{\n  "openapi"')


def test_bridge_openapi_refuses_a_bad_config(tmp_path):
    config = tmp_path / "bridge.yaml"
    config.write_text("nonsense: true\n")
    result = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "openapi", "--config", str(config)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stdout == "" and "nonsense" in result.stderr


async def test_openapi_json_is_served_for_the_live_routes(demo):
    status, body, _ = await demo.json("GET", "/openapi.json")
    assert status == 200
    assert body["openapi"] == "3.1.0"
    assert "/v1/users/{id}" in body["paths"]
    assert "get" in body["paths"]["/v1/users/{id}"]


# --- descriptions and security ---------------------------------------------------------------

COMMENTED = """\
syntax = "proto3";
package notes.v1;
import "google/api/annotations.proto";

// Notes keeps short texts.
service Notes {
  // Reads one note.
  rpc GetNote(GetNoteRequest) returns (Note) {
    option (google.api.http) = {get: "/v1/{name=notes/*}"};
  }
}

message GetNoteRequest {
  // The note's resource name, "notes/{id}".
  string name = 1;
}

// A note.
message Note {
  // Resource name.
  string name = 1;
  Kind kind = 2;  // How the note is shown.
  // Nested messages are named in full.
  message Part { string text = 1; }
  repeated Part parts = 3;
}

// How a note is shown.
enum Kind {
  // Not set.
  KIND_UNSPECIFIED = 0;
  // Plain text.
  KIND_TEXT = 1;
  KIND_LIST = 2;
}
"""


def test_the_proto_comments_are_the_descriptions(tmp_path):
    (tmp_path / "notes.proto").write_text(COMMENTED)
    doc = document_of(asyncio.run(load_includes((tmp_path,))))
    assert {"name": "notes.v1.Notes", "description": "Notes keeps short texts."} in doc["tags"]
    get = op(doc, "/v1/notes/{name}", "get")
    assert get["description"].startswith("Reads one note.\n\nCalls `notes.v1.Notes/GetNote`")
    schemas = doc["components"]["schemas"]
    note = schemas["notes.v1.Note"]
    assert note["description"] == "A note."
    assert note["properties"]["name"]["description"] == "Resource name."
    assert note["properties"]["kind"] == {
        "allOf": [{"$ref": "#/components/schemas/notes.v1.Kind"}],
        "description": "How the note is shown.",
    }
    assert "notes.v1.Note.Part" in schemas
    kind = schemas["notes.v1.Kind"]
    assert kind["description"] == (
        "How a note is shown.\n\n- `KIND_UNSPECIFIED`: Not set.\n- `KIND_TEXT`: Plain text."
    )
    assert kind["enum"] == ["KIND_UNSPECIFIED", "KIND_TEXT", "KIND_LIST"]
    validate(doc)


def test_the_example_protos_comments_reach_the_document(doc):
    tag = {t["name"]: t for t in doc["tags"]}["demo.users.v1.UserService"]
    assert tag["description"] == "UserService manages an in-memory directory of users."
    user = doc["components"]["schemas"]["demo.users.v1.User"]
    assert user["description"] == "User is one directory entry."
    assert user["properties"]["name"]["description"] == 'Resource name, "users/{id}".'


def test_security_follows_the_auth_rules(demo_protos):
    from bridge.config.policies import AuthSettings

    auth = AuthSettings.model_validate({
        "api_keys": {"header": "x-key", "keys": "k1"},
        "jwt": {"algorithms": ["HS256"], "secret": "s" * 32},
        "rules": [
            {"match": "demo.users.v1.UserService/Get*", "require": "none"},
            {"match": "demo.users.v1.UserService/Delete*", "require": "jwt", "scopes": ["admin"]},
            {"match": "demo.users.v1.UserService/Ban*", "require": "api_key"},
        ],
    })  # fmt: skip
    doc = document_of(demo_protos, auth=auth)
    assert doc["components"]["securitySchemes"] == {
        "apiKey": {"type": "apiKey", "in": "header", "name": "x-key"},
        "bearerJwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
    }
    assert "security" not in op(doc, "/v1/users/{id}", "get")
    assert op(doc, "/v1/users/{id}", "delete")["security"] == [{"bearerJwt": ["admin"]}]
    assert op(doc, "/v1/users/{id}:ban", "post")["security"] == [{"apiKey": []}]
    either = [{"apiKey": []}, {"bearerJwt": []}]
    assert op(doc, "/v1/users", "post")["security"] == either  # no rule matches: any
    validate(doc)


def validate(doc: dict[str, Any]) -> None:
    from openapi_spec_validator import validate as check

    check(doc)


async def test_a_client_filling_the_documented_path_reaches_the_patterned_route(demo):
    """PATCH /v1/{user.name=users/*}: a client fills `/v1/users/{id}` with 2, the bridge
    routes it to UpdateUser with name "users/2"."""
    _, doc, _ = await demo.json("GET", "/openapi.json")
    patch = doc["paths"]["/v1/users/{id}"]["patch"]
    assert patch["x-grpc"]["method"] == "demo.users.v1.UserService/UpdateUser"
    (name,) = params(patch, "path")
    url = "/v1/users/{id}".replace("{" + name + "}", "2")
    status, body, _ = await demo.json("PATCH", url, json={"displayName": "Alan M. Turing"})
    assert status == 200, body
    assert body["name"] == "users/2" and body["displayName"] == "Alan M. Turing"


async def test_the_live_download_and_upload_answer_as_documented(demo):
    """Raw bytes under the chunks' type even when SSE is asked for; `fields` on them is a 400
    (a Status, as `default` says); Upload takes any bytes and answers its JSON."""
    _, doc, _ = await demo.json("GET", "/openapi.json")
    assert doc["paths"]["/v1/files/{name}"]["get"]["responses"]["200"]["content"] == RAW
    headers = {"Accept": "text/event-stream"}
    async with demo.request("GET", "/v1/files/a?lines=2", headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert await resp.read() == b"a line 1\na line 2\n"
    status, body, headers = await demo.json("GET", "/v1/files/a?fields=data")
    assert status == 400 and body["code"] == 3
    assert headers["Content-Type"].startswith("application/json")
    data = b"\x89PNG\r\n\x1a\n\x00\xff"
    headers = {"Content-Type": "image/png"}
    status, body, _ = await demo.json("POST", "/v1/files/p.png", data=data, headers=headers)
    assert status == 200, body
    assert (body["name"], body["contentType"]) == ("p.png", "image/png")
    assert body["size"] == str(len(data))  # int64: a string in JSON
