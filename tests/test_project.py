"""Project-level checks: the committed OpenAPI document, the layer rules, the seed manifests."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from app.cli import openapi_document
from app.kinds import KINDS

ROOT = Path(__file__).resolve().parents[1]


def test_committed_openapi_document_matches_the_app() -> None:
    committed = (ROOT / "openapi" / "openapi.json").read_text()
    assert committed == openapi_document(), (
        "openapi/openapi.json is stale: run `corral openapi -o openapi/openapi.json`"
    )


def test_operation_ids_are_unique_and_readable() -> None:
    document = json.loads(openapi_document())
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    assert all(i.isidentifier() and i[0].islower() for i in ids)
    for verb in ("list", "create", "read", "replace", "patch", "delete"):
        assert f"{verb}Instance{'s' if verb == 'list' else ''}" in ids
        assert f"{verb}Node{'s' if verb == 'list' else ''}" in ids
    assert not [i for i in ids if i.startswith("get")], "reads are read*, as the resource operations are"


def test_node_operations_are_tagged_nodes() -> None:
    document = json.loads(openapi_document())
    for verb, op in document["paths"]["/v1/nodes/{name}/drain"].items():
        assert op["tags"] == ["nodes"], verb


def test_public_endpoints_say_so_and_every_other_operation_needs_the_bearer_token() -> None:
    document = json.loads(openapi_document())
    assert document["security"] == [{"bearer": []}]
    operations = {(path, verb): op for path, ops in document["paths"].items() for verb, op in ops.items()}
    assert operations["/healthz", "get"]["security"] == operations["/readyz", "get"]["security"] == []
    assert operations["/metrics", "get"]["security"] == [{}, {"bearer": []}]
    declared = {key for key, op in operations.items() if "security" in op}
    assert declared == {("/healthz", "get"), ("/readyz", "get"), ("/metrics", "get")}


def test_request_bodies_name_their_schema_and_say_yaml_is_accepted() -> None:
    document = json.loads(openapi_document())
    body = document["paths"]["/v1/namespaces/{namespace}/instances"]["post"]["requestBody"]
    # One JSON media type per body: SDK generators drop or duplicate any other; YAML is stated in prose.
    assert body["content"] == {"application/json": {"schema": {"$ref": "#/components/schemas/InstanceBody"}}}
    assert "application/yaml" in body["description"]
    assert "InstanceBody" in document["components"]["schemas"]


def test_layer_rules_hold() -> None:
    """ARCHITECTURE.md's rules of direction, checked by import-linter (contracts in pyproject.toml)."""
    result = subprocess.run(
        [Path(sys.executable).parent / "lint-imports"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_examples_are_the_founding_manifests_unchanged() -> None:
    shared = ROOT.parent / "shared" / "manifests"
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert {p.name for p in examples} >= {
        "migration.yaml",
        "pool-fast-start.yaml",
        "vmi-guest-agent.yaml",
        "vmi-passthrough.yaml",
        "vmi-status-shape.yaml",
    }
    if shared.is_dir():  # beside the design documents, the copies must not drift
        for path in shared.glob("*.yaml"):
            assert (ROOT / "examples" / path.name).read_bytes() == path.read_bytes()


def test_readme_carries_the_codes_phase_table() -> None:
    from app.schemas.phases import phase_table_markdown

    assert phase_table_markdown() in (ROOT / "README.md").read_text()


def test_the_document_is_one_generated_sdks_can_use() -> None:
    """Unique, intentional schema names (no module-qualified duplicates), every error answer typed as the
    problem+json the server sends, and no `authorization` parameter beside the bearer security scheme."""
    document = json.loads(openapi_document())
    names = list(document["components"]["schemas"])
    assert not [n for n in names if "__" in n]
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, operations in document["paths"].items():
        for verb, operation in operations.items():
            for code, response in operation["responses"].items():
                if code[0] in "45":
                    assert response.get("content") == problem, (path, verb, code)
            parameters = [p["name"].lower() for p in operation.get("parameters", [])]
            assert "authorization" not in parameters, (path, verb)


def test_response_headers_are_documented() -> None:
    document = json.loads(openapi_document())
    objects = {kind.object_model.__name__ for kind in KINDS.values()}
    operations = {(path, verb): op for path, ops in document["paths"].items() for verb, op in ops.items()}
    for (path, verb), operation in operations.items():
        for code, response in operation["responses"].items():
            headers = response.get("headers", {})
            body = response.get("content", {}).get("application/json", {}).get("schema", {})
            if code == "201" and str(body.get("$ref", "")).rsplit("/", 1)[-1] in objects:
                assert "Location" in headers and "ETag" in headers, (path, verb)
            if code == "503":
                assert "Retry-After" in headers, (path, verb)
    read = operations["/v1/namespaces/{namespace}/instances/{name}", "get"]["responses"]["200"]
    assert read["headers"]["ETag"]["schema"] == {"type": "string"}


def test_names_state_their_rule() -> None:
    """DNS-1123 labels are enforced everywhere a name is taken; the document says so, so clients can check
    before they send."""
    schemas = json.loads(openapi_document())["components"]["schemas"]
    label = {"pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63, "minLength": 1}
    for schema, field in (("MigrationSpec", "vmiName"), ("Volume", "name"), ("Interface", "name")):
        stated = schemas[schema]["properties"][field]
        assert {k: stated.get(k) for k in label} == label, (schema, field)
    name = next(s for s in schemas["ObjectMeta"]["properties"]["name"]["anyOf"] if s.get("type") == "string")
    assert {k: name.get(k) for k in label} == label


def test_rules_the_server_enforces_are_stated() -> None:
    """What the validators refuse, the document says: exclusive fields, URI schemes, absolute paths,
    argv[0], label keys and selectors, the Idempotency-Key."""
    document = json.loads(openapi_document())
    schemas = document["components"]["schemas"]
    for schema, fields in (
        ("Volume", {"containerDisk", "emptyDisk", "dataVolume", "persistentVolumeClaim"}),
        ("NetworkSpec", {"bridge", "nat"}),
        ("PoolSpec", {"template", "virtualMachineTemplate"}),
        ("DataVolumeSource", {"http", "registry", "upload", "blank", "pvc"}),
        ("KeyPropagation", {"noCloud", "configDrive", "qemuGuestAgent"}),
    ):
        stated = {tuple(choice["required"]) for choice in schemas[schema]["oneOf"]}
        assert {(f,) for f in fields} <= stated, schema
    assert {tuple(c["required"]) for c in schemas["ObjectMeta"]["anyOf"]} == {("name",), ("generateName",)}
    assert schemas["ObjectMeta"]["properties"]["namespace"]["readOnly"] is True
    uri = schemas["NodeSpec"]["properties"]["uri"]["pattern"]
    assert re.match(uri, "qemu+tcp://h:16509/system") and not re.match(uri, "http://h/system")
    assert schemas["FileReadRequest"]["properties"]["path"]["pattern"].startswith("^/")
    assert schemas["ExecRequest"]["properties"]["command"]["prefixItems"] == [
        {"type": "string", "minLength": 1}
    ]
    labels = schemas["ObjectMeta"]["properties"]["labels"]
    assert re.match(labels["propertyNames"]["pattern"], "example.com/app")
    assert not re.match(labels["propertyNames"]["pattern"], "/app")
    listing = document["paths"]["/v1/namespaces/{namespace}/instances"]["get"]
    params = {p["name"]: p for p in listing["parameters"]}
    assert params["labelSelector"]["schema"]["pattern"]
    assert listing["x-stream"] == {"parameter": "watch", "contentType": "application/x-ndjson"}
    action = document["paths"]["/v1/namespaces/{namespace}/instances/{name}/start"]["post"]
    key = next(p for p in action["parameters"] if p["name"] == "Idempotency-Key")
    assert key["schema"]["anyOf"][0] == {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "pattern": "^[ -~]+$",
    }


def test_creates_link_to_what_acts_on_their_object() -> None:
    document = json.loads(openapi_document())
    create = document["paths"]["/v1/namespaces/{namespace}/secrets"]["post"]["responses"]["201"]
    assert set(create["links"]) == {"readSecret", "replaceSecret", "patchSecret", "deleteSecret"}
    assert create["links"]["readSecret"]["parameters"] == {
        "name": "$response.body#/metadata/name",
        "namespace": "$request.path.namespace",
    }
    node = document["paths"]["/v1/nodes"]["post"]["responses"]["201"]["links"]["deleteNode"]
    assert node["parameters"] == {"name": "$response.body#/metadata/name"}
