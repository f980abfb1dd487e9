//! `GET /openapi.json` through the router (`oneshot`, no socket): the
//! document is OpenAPI 3.1, names every route with its method and nothing
//! the router does not serve, gives every error response the one error
//! schema, its examples are requests the server's parsers accept, and
//! real responses match the schemas it documents.

mod harness;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use harness::{Harness, INTROSPECTION_SECRET, PROD_POLICY, ROOT_CREDENTIAL, Reply};
use http::StatusCode;
use serde_json::{Value, json};

/// The endpoints DESIGN's "HTTP surface" promises, as (method, path). A
/// route can only be added together with its documentation (see
/// `router_serves_exactly_what_the_document_lists`); this list catches
/// one that disappears from both.
const PROMISED: &[(&str, &str)] = &[
    ("post", "/v1/exchange"),
    ("post", "/oauth/token"),
    ("get", "/.well-known/openid-configuration"),
    ("get", "/.well-known/jwks.json"),
    ("get", "/v1/audience"),
    ("post", "/oauth/revoke"),
    ("post", "/oauth/introspect"),
    ("get", "/v1/revocations"),
    ("post", "/v1/orgs"),
    ("get", "/v1/orgs/{org}/policy"),
    ("put", "/v1/orgs/{org}/policy"),
    ("get", "/v1/orgs/{org}/policy/history"),
    ("post", "/v1/orgs/{org}/policy/dry-run"),
    ("get", "/v1/orgs/{org}/audit"),
    ("post", "/v1/orgs/{org}/revocations"),
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/readyz"),
    ("get", "/openapi.json"),
];

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch"];

const ERROR_REF: &str = "#/components/schemas/ErrorBody";

/// The production org plus a rule that gives its infra repository admin
/// tokens.
fn admin_policy() -> String {
    format!(
        r#"{PROD_POLICY}
[[rule]]
name = "infra-admin"
issuer = "github"
repository = "acme/infra"
ref = "refs/heads/main"
permissions = ["writ:policy:read", "writ:policy:write", "writ:audit:read", "writ:tokens:revoke"]
"#
    )
}

async fn document(h: &Harness) -> Value {
    let reply = h.call("GET", "/openapi.json", &[], None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.headers["content-type"], "application/json");
    reply.json
}

/// Every operation of the document: (method, path, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            if let Some(op) = item.get(*method) {
                out.push(((*method).to_owned(), path.clone(), op.clone()));
            }
        }
    }
    out
}

/// Every `$ref` in `value`.
fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                out.push(r.clone());
            }
            map.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// A concrete path for a template.
fn concrete(path: &str) -> String {
    path.replace("{org}", "acme-prod")
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_every_reference_resolves() {
    let h = Harness::start(&[]).await;
    let doc = document(&h).await;
    let parsed: utoipa::openapi::OpenApi = serde_json::from_value(doc.clone()).expect("utoipa reads it back");
    assert!(matches!(parsed.openapi, utoipa::openapi::OpenApiVersion::Version31));
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "writ");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    // Every $ref points at a component that exists.
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(refs.len() > 40, "{refs:?}");
    for r in &refs {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(doc["components"]["schemas"].get(name).is_some(), "{r} does not resolve");
    }

    // Operation ids are unique; every security requirement names a
    // defined scheme.
    let schemes = doc["components"]["securitySchemes"].as_object().expect("security schemes");
    assert_eq!(schemes["admin_token"]["scheme"], "bearer");
    assert_eq!(schemes["root_credential"]["scheme"], "bearer");
    assert_eq!(schemes["introspection_client"]["scheme"], "basic");
    let mut ids = std::collections::BTreeSet::new();
    for (method, path, op) in operations(&doc) {
        let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path} has no operationId"));
        assert!(ids.insert(id.to_owned()), "operationId {id} is used twice");
        for requirement in op["security"].as_array().into_iter().flatten() {
            for name in requirement.as_object().expect("requirement").keys() {
                assert!(schemes.contains_key(name), "{method} {path}: unknown security scheme {name}");
            }
        }
        // Path parameters are declared.
        if path.contains("{org}") {
            let params = op["parameters"].as_array().expect("parameters");
            assert!(
                params.iter().any(|p| p["name"] == "org" && p["in"] == "path" && p["required"] == true),
                "{method} {path}: {{org}} is not declared"
            );
        }
    }
}

#[tokio::test]
async fn every_admin_operation_names_its_credentials() {
    let h = Harness::start(&[]).await;
    let doc = document(&h).await;
    for (method, path, op) in operations(&doc) {
        let schemes: Vec<&str> = op["security"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r.as_object().expect("requirement").keys())
            .map(String::as_str)
            .collect();
        let expected: &[&str] = match (method.as_str(), path.as_str()) {
            ("post", "/v1/orgs") => &["root_credential"],
            (_, p) if p.starts_with("/v1/orgs/") => &["admin_token", "root_credential"],
            (_, "/oauth/introspect") => &["introspection_client", "root_credential", "admin_token"],
            _ => &[],
        };
        assert_eq!(schemes, expected, "{method} {path}");
    }
}

/// The router is built from the document (`api::documented`), so the two
/// cannot differ, provided nothing routes around it: app.rs adds no route
/// of its own, and every documented operation answers while every other
/// method on a documented path is 405.
#[tokio::test]
async fn router_serves_exactly_what_the_document_lists() {
    for (file, text) in [("app.rs", include_str!("../src/app.rs")), ("api.rs", include_str!("../src/api.rs"))] {
        for call in [".route(", ".route_service(", ".nest(", ".nest_service(", ".merge("] {
            assert!(!text.contains(call), "{file} calls {call}: register routes with routes!(..) in api::documented");
        }
    }

    let h = Harness::start(&[]).await;
    let doc = document(&h).await;
    let documented: Vec<(String, String)> = operations(&doc).into_iter().map(|(m, p, _)| (m, p)).collect();
    let mut promised: Vec<(String, String)> =
        PROMISED.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())).collect();
    let mut listed = documented.clone();
    promised.sort();
    listed.sort();
    assert_eq!(listed, promised, "the document lists other endpoints than DESIGN promises");

    for path in doc["paths"].as_object().expect("paths").keys() {
        for method in METHODS {
            let reply = h.call(&method.to_uppercase(), &concrete(path), &[], None).await;
            let is_documented = documented.iter().any(|(m, p)| m == method && p == path);
            if is_documented {
                assert_ne!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} is documented, not routed");
                assert!(
                    !reply.text.contains("no such endpoint"),
                    "{method} {path} is documented, not routed: {}",
                    reply.text
                );
            } else {
                assert_eq!(
                    reply.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is routed but not documented: {}",
                    reply.text
                );
            }
        }
    }
}

#[tokio::test]
async fn every_error_response_is_the_one_error_schema() {
    let h = Harness::start(&[]).await;
    let doc = document(&h).await;
    let error = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(error["required"], json!(["error", "error_description", "request_id"]));
    for field in ["error", "error_description", "explanation", "request_id", "current_version"] {
        assert!(error["properties"].get(field).is_some(), "ErrorBody lacks {field}");
    }

    let mut seen_4xx = 0;
    for (method, path, op) in operations(&doc) {
        let responses = op["responses"].as_object().expect("responses");
        assert!(responses.keys().any(|s| s.starts_with('2')), "{method} {path} documents no success");
        for (status, response) in responses {
            // `/readyz` answers 503 with its own body on purpose, so that
            // a probe sees which part failed.
            if !(status.starts_with('4') || status.starts_with('5')) || (path == "/readyz" && status == "503") {
                continue;
            }
            seen_4xx += usize::from(status.starts_with('4'));
            let content = response["content"].as_object().expect("error content");
            assert_eq!(content.keys().collect::<Vec<_>>(), ["application/json"], "{method} {path} {status}");
            assert_eq!(
                content["application/json"]["schema"]["$ref"], ERROR_REF,
                "{method} {path} {status} does not use the error schema"
            );
        }
        // Layer errors are documented on every operation.
        for status in ["408", "431", "500"] {
            assert!(responses.contains_key(status), "{method} {path} lacks {status}");
        }
        if op.get("requestBody").is_some() {
            assert!(responses.contains_key("413"), "{method} {path} lacks 413");
        }
    }
    assert!(seen_4xx >= 40, "{seen_4xx}");
}

/// The documented examples are requests the parsers accept: the dummy
/// token then fails verification (`invalid_grant`), never parsing
/// (`invalid_request`).
#[tokio::test]
async fn documented_exchange_examples_get_past_the_parser() {
    let h = Harness::start(&[PROD_POLICY]).await;
    let doc = document(&h).await;

    let json_body = &doc["paths"]["/v1/exchange"]["post"]["requestBody"]["content"]["application/json"];
    let example = &json_body["example"];
    assert!(example["token"].is_string() && example["ttl"].is_string(), "{example:#}");
    assert!(json_body["schema"]["$ref"] == "#/components/schemas/ExchangeRequest");
    let (status, body) = h.exchange(example.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:#}");
    assert_eq!(body["error"], "invalid_grant", "{body:#}");

    let form = &doc["paths"]["/oauth/token"]["post"]["requestBody"]["content"]["application/x-www-form-urlencoded"];
    let mut encoded = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in form["example"].as_object().expect("form example") {
        match value {
            Value::Array(values) => values.iter().for_each(|v| {
                encoded.append_pair(key, v.as_str().expect("string"));
            }),
            v => {
                encoded.append_pair(key, v.as_str().expect("string"));
            }
        }
    }
    let (status, body) = h.post_form("/oauth/token", &encoded.finish()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:#}");
    assert_eq!(body["error"], "invalid_grant", "{body:#}");
}

// ---- responses match the document -----------------------------------------

/// Checks `value` against `schema` (the subset of JSON Schema that utoipa
/// emits). Stricter than JSON Schema in one way, on purpose: an object
/// schema with `properties` accepts no undocumented field unless it says
/// `additionalProperties`, so a field added to a response without its
/// documentation fails here.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        return check(doc, &doc["components"]["schemas"][name], value, at, errors);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(branches) = schema[key].as_array() {
            let fits = branches.iter().any(|b| {
                let mut e = Vec::new();
                check(doc, b, value, at, &mut e);
                e.is_empty()
            });
            if !fits {
                errors.push(format!("{at}: {value} fits no branch of {key}"));
            }
            return;
        }
    }
    for branch in schema["allOf"].as_array().into_iter().flatten() {
        check(doc, branch, value, at, errors);
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        errors.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let type_of = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    if !types.is_empty() && !types.iter().any(|t| *t == type_of || (*t == "number" && type_of == "integer")) {
        errors.push(format!("{at}: {value} is {type_of}, documented as {types:?}"));
        return;
    }
    match value {
        Value::Object(map) => {
            for name in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                if !map.contains_key(name) {
                    errors.push(format!("{at}: required field {name} is missing"));
                }
            }
            if let Some(properties) = schema["properties"].as_object() {
                let open = matches!(&schema["additionalProperties"], Value::Bool(true) | Value::Object(_));
                for (name, v) in map {
                    match properties.get(name) {
                        Some(s) => check(doc, s, v, &format!("{at}.{name}"), errors),
                        None if open => {}
                        None => errors.push(format!("{at}: field {name} is not documented")),
                    }
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check(doc, &schema["items"], item, &format!("{at}[{i}]"), errors);
            }
        }
        _ => {}
    }
}

/// Asserts that `reply` is a documented response of `method path`, with
/// a documented content type and, for JSON, a body that fits its schema.
fn conforms(doc: &Value, method: &str, path: &str, reply: &Reply) {
    let status = reply.status.as_u16().to_string();
    let response = &doc["paths"][path][method]["responses"][&status];
    assert!(response.is_object(), "{method} {path}: {status} is not documented; body {}", reply.text);
    let mime = reply.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mime = mime.split(';').next().unwrap_or_default().trim();
    let content = &response["content"][mime];
    assert!(content.is_object(), "{method} {path} {status}: content type {mime:?} is not documented");
    if mime == "application/json" && content["schema"].is_object() {
        let mut errors = Vec::new();
        check(doc, &content["schema"], &reply.json, "$", &mut errors);
        assert!(errors.is_empty(), "{method} {path} {status}:\n{}\n{:#}", errors.join("\n"), reply.json);
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn real_responses_match_the_documented_schemas() {
    let h = Harness::start(&[&admin_policy()]).await;
    let doc = document(&h).await;
    let root = bearer(ROOT_CREDENTIAL);
    let json_type = ("content-type", "application/json");
    let form_type = ("content-type", "application/x-www-form-urlencoded");

    // Discovery and health.
    for path in ["/.well-known/openid-configuration", "/.well-known/jwks.json", "/v1/audience", "/healthz", "/readyz"] {
        let reply = h.call("GET", path, &[], None).await;
        conforms(&doc, "get", path, &reply);
    }

    // The exchange, granted and denied, through both doors.
    let deploy = h.issuer.mint(&h.github("acme/web").environment("production").build());
    let granted = h
        .call("POST", "/v1/exchange", &[json_type], Some(&json!({"token": deploy, "org": "acme-prod"}).to_string()))
        .await;
    conforms(&doc, "post", "/v1/exchange", &granted);
    let deploy_token = granted.json["token"].as_str().expect("token").to_owned();
    let pr = h.issuer.mint(&h.github("acme/web").ref_("refs/pull/7/merge").build());
    let denied =
        h.call("POST", "/v1/exchange", &[json_type], Some(&json!({"token": pr, "org": "acme-prod"}).to_string())).await;
    assert_eq!(denied.status, StatusCode::BAD_REQUEST, "{}", denied.text);
    assert!(denied.json["explanation"].is_array(), "{}", denied.text);
    conforms(&doc, "post", "/v1/exchange", &denied);
    let oidc = h.issuer.mint(&h.github("acme/web").environment("production").build());
    let form = format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token={oidc}&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aid_token&audience=acme-prod&scope=deploy"
    );
    let token = h.call("POST", "/oauth/token", &[form_type], Some(&form)).await;
    assert_eq!(token.status, StatusCode::OK, "{}", token.text);
    conforms(&doc, "post", "/oauth/token", &token);
    let bad_grant = h.call("POST", "/oauth/token", &[form_type], Some("grant_type=password")).await;
    conforms(&doc, "post", "/oauth/token", &bad_grant);

    // Introspection and holder revocation.
    let basic = format!("Basic {}", STANDARD.encode(format!("platform-api:{INTROSPECTION_SECRET}")));
    for (auth, body) in [(basic.as_str(), format!("token={deploy_token}")), (basic.as_str(), "token=garbage".into())] {
        let reply = h.call("POST", "/oauth/introspect", &[form_type, ("authorization", auth)], Some(&body)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        conforms(&doc, "post", "/oauth/introspect", &reply);
    }
    let active = h
        .call(
            "POST",
            "/oauth/introspect",
            &[form_type, ("authorization", &basic)],
            Some(&format!("token={deploy_token}")),
        )
        .await;
    assert_eq!(active.json["active"], true);
    assert!(active.json["ci"].is_object(), "{}", active.text);
    let unauthenticated = h.call("POST", "/oauth/introspect", &[form_type], Some("token=x")).await;
    conforms(&doc, "post", "/oauth/introspect", &unauthenticated);
    let revoked = h
        .call(
            "POST",
            "/oauth/revoke",
            &[form_type],
            Some(&format!("token={}", token.json["access_token"].as_str().expect("token"))),
        )
        .await;
    conforms(&doc, "post", "/oauth/revoke", &revoked);
    let feed = h.call("GET", "/v1/revocations", &[], None).await;
    assert_eq!(feed.json["revocations"].as_array().map(Vec::len), Some(1), "{}", feed.text);
    conforms(&doc, "get", "/v1/revocations", &feed);
    let bad_cursor = h.call("GET", "/v1/revocations?since=nope", &[], None).await;
    conforms(&doc, "get", "/v1/revocations", &bad_cursor);

    // Admin: create an org, read and write its policy, dry runs, audit,
    // revocation, and the errors on the way.
    let policy = "org = \"acme-new\"\n\n[[rule]]\nname = \"deploy\"\nissuer = \"github\"\nrepository = \"acme/web\"\nref = \"refs/heads/main\"\npermissions = [\"deploy\"]\n";
    let create = json!({"org": "acme-new", "policy": policy}).to_string();
    for expected in [StatusCode::CREATED, StatusCode::CONFLICT] {
        let reply = h.call("POST", "/v1/orgs", &[json_type, ("authorization", &root)], Some(&create)).await;
        assert_eq!(reply.status, expected, "{}", reply.text);
        conforms(&doc, "post", "/v1/orgs", &reply);
    }
    let admin_claims = h.github("acme/infra").build();
    let admin = h
        .exchange(
            json!({"token": h.issuer.mint(&admin_claims), "org": "acme-prod", "permissions": ["writ:policy:read"]}),
        )
        .await;
    let admin = bearer(admin.1["token"].as_str().expect("admin token"));
    let forbidden = h.call("POST", "/v1/orgs", &[json_type, ("authorization", &admin)], Some(&create)).await;
    conforms(&doc, "post", "/v1/orgs", &forbidden);
    let org = "/v1/orgs/acme-new";
    let policy_path = "/v1/orgs/{org}/policy";
    for (headers, expected) in [
        (vec![("authorization", root.as_str())], StatusCode::OK),
        (vec![("authorization", root.as_str()), ("accept", "application/toml")], StatusCode::OK),
        (vec![], StatusCode::UNAUTHORIZED),
        (vec![("authorization", admin.as_str())], StatusCode::FORBIDDEN),
    ] {
        let reply = h.call("GET", &format!("{org}/policy"), &headers, None).await;
        assert_eq!(reply.status, expected, "{}", reply.text);
        conforms(&doc, "get", policy_path, &reply);
    }
    let missing = h.call("GET", "/v1/orgs/acme-gone/policy", &[("authorization", &root)], None).await;
    conforms(&doc, "get", policy_path, &missing);
    let toml = ("content-type", "application/toml");
    for (precondition, body, expected) in [
        (None, policy.to_owned(), StatusCode::PRECONDITION_REQUIRED),
        (Some("\"v7\""), policy.to_owned(), StatusCode::PRECONDITION_FAILED),
        (Some("\"v1\""), policy.replace("deploy\"]", "deply\"]"), StatusCode::BAD_REQUEST),
        (Some("\"v1\""), policy.to_owned(), StatusCode::OK),
    ] {
        let mut headers = vec![toml, ("authorization", root.as_str())];
        headers.extend(precondition.map(|p| ("if-match", p)));
        let reply = h.call("PUT", &format!("{org}/policy"), &headers, Some(&body)).await;
        assert_eq!(reply.status, expected, "{}", reply.text);
        conforms(&doc, "put", policy_path, &reply);
    }
    let history = h.call("GET", &format!("{org}/policy/history"), &[("authorization", &root)], None).await;
    conforms(&doc, "get", "/v1/orgs/{org}/policy/history", &history);
    let claims = h.github("acme/web").build();
    for request in [
        json!({"claims": claims, "request": {"permissions": ["deploy"]}}),
        json!({"claims": claims, "request": {"permissions": ["nope"]}}),
    ] {
        let reply = h
            .call(
                "POST",
                &format!("{org}/policy/dry-run"),
                &[json_type, ("authorization", &root)],
                Some(&request.to_string()),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        conforms(&doc, "post", "/v1/orgs/{org}/policy/dry-run", &reply);
    }
    let both = json!({"claims": claims, "token": "x"}).to_string();
    let reply =
        h.call("POST", &format!("{org}/policy/dry-run"), &[json_type, ("authorization", &root)], Some(&both)).await;
    conforms(&doc, "post", "/v1/orgs/{org}/policy/dry-run", &reply);
    for query in ["", "?format=csv", "?outcome=denied", "?outcome=maybe"] {
        let reply = h.call("GET", &format!("/v1/orgs/acme-prod/audit{query}"), &[("authorization", &root)], None).await;
        conforms(&doc, "get", "/v1/orgs/{org}/audit", &reply);
    }
    let audit = h.call("GET", "/v1/orgs/acme-prod/audit", &[("authorization", &root)], None).await;
    assert!(audit.json["records"].as_array().is_some_and(|r| r.len() >= 3), "{}", audit.text);
    for body in [json!({"repository": "acme/web", "reason": "test"}), json!({"jti": "nope"}), json!({})] {
        let reply = h
            .call(
                "POST",
                "/v1/orgs/acme-prod/revocations",
                &[json_type, ("authorization", &root)],
                Some(&body.to_string()),
            )
            .await;
        conforms(&doc, "post", "/v1/orgs/{org}/revocations", &reply);
    }

    // Errors from layers, not handlers.
    let huge = "x".repeat(2 * 1024 * 1024);
    let too_large = h.call("POST", "/v1/exchange", &[json_type], Some(&huge)).await;
    assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE);
    conforms(&doc, "post", "/v1/exchange", &too_large);
    let big_header = "y".repeat(20 * 1024);
    let too_many = h.call("GET", "/healthz", &[("x-padding", &big_header)], None).await;
    assert_eq!(too_many.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    conforms(&doc, "get", "/healthz", &too_many);
}
