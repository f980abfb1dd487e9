//! The route table and its OpenAPI document, built from one list.
//!
//! Every endpoint is registered through [`documented`], with
//! `utoipa_axum`'s `routes!`: a handler is routed at the method and path
//! of its own `#[utoipa::path]` annotation, and that annotation is its
//! entry in the document. A route cannot be added without being
//! documented, and the two cannot disagree on a path or a method
//! (tests/openapi.rs checks that `app.rs` routes nothing else).
//!
//! Schemas of the wire types come from `#[derive(ToSchema)]` on the types
//! the handlers serialize. A few bodies embed types owned by `writ-core`
//! or by storage, which must not depend on utoipa (core stays free of
//! HTTP concerns, storage is its own layer); their schemas are written
//! out in [`schemas`], and tests/openapi.rs checks real responses against
//! them.

use std::sync::OnceLock;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::{admin, revocation, routes};

/// Security scheme: a writ admin token (`aud` = `<public_url>/admin`).
pub const ADMIN_TOKEN: &str = "admin_token";
/// Security scheme: the operator root credential (`writ_root_…`).
pub const ROOT_CREDENTIAL: &str = "root_credential";
/// Security scheme: an introspection client (`[[introspection.clients]]`).
pub const INTROSPECTION_CLIENT: &str = "introspection_client";

/// The name of the one error schema, referenced by every error response.
pub const ERROR_SCHEMA: &str = "ErrorBody";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "writ",
        description = "Trades a CI job's OIDC identity for a short-lived deploy token limited to one org, named permissions and, optionally, named apps or machines.\n\nEvery error, from every endpoint, has one JSON shape: `ErrorBody`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "exchange", description = "OIDC token in, writ token out (also: narrowing a writ token)"),
        (name = "discovery", description = "What verifiers and CI clients need to know about this server"),
        (name = "revocation", description = "RFC 7009 revocation, RFC 7662 introspection, the revocation feed"),
        (name = "admin", description = "Org policies, dry runs, audit log and revocation (docs/admin.md)"),
        (name = "health", description = "Liveness and readiness"),
    )
)]
struct ApiDoc;

/// Adds the three credentials the API knows.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut admin = Http::new(HttpAuthScheme::Bearer);
        admin.bearer_format = Some("JWT".to_owned());
        admin.description = Some(
            "A writ admin token: a writ token with only `writ:` permissions and `aud` = `<public_url>/admin`, obtained by OIDC exchange. It acts on its own org only.".to_owned(),
        );
        components.add_security_scheme(ADMIN_TOKEN, SecurityScheme::Http(admin));
        let mut root = Http::new(HttpAuthScheme::Bearer);
        root.description = Some(
            "The operator root credential, `writ_root_<43 base64url characters>` (`writ credential new`); the server holds only its SHA-256.".to_owned(),
        );
        components.add_security_scheme(ROOT_CREDENTIAL, SecurityScheme::Http(root));
        let mut client = Http::new(HttpAuthScheme::Basic);
        client.description = Some(
            "An introspection client of the server config (`[[introspection.clients]]`): client id and secret, form-urlencoded as RFC 6749 §2.3.1 asks.".to_owned(),
        );
        components.add_security_scheme(INTROSPECTION_CLIENT, SecurityScheme::Http(client));
    }
}

/// Adds the errors that the router's layers, not the handlers, produce to
/// every operation: they too have the one error shape. Applied in
/// [`openapi`], once every route has its operation.
struct LayerResponses;

impl Modify for LayerResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name(ERROR_SCHEMA))).build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for operation in operations.into_iter().flatten() {
                let responses = &mut operation.responses.responses;
                let mut add = |status: &str, description: &str| {
                    responses.entry(status.to_owned()).or_insert_with(|| error(description).into());
                };
                if operation.request_body.is_some() {
                    add("413", "The request body is larger than the server accepts (`[limits] max_body_bytes`)");
                }
                add("408", "The request took longer than the server's timeout to arrive and be answered");
                add(
                    "429",
                    "`temporarily_unavailable`: too many requests from this client address (`[limits] requests_per_second_per_client`), or on the exchange endpoints too many exchanges for this repository (`[limits] exchanges_per_minute_per_repository`); retry after `Retry-After` seconds",
                );
                add("431", "The request headers add up to more than 16 KiB");
                add("500", "Internal error: `server_error` and the request id; the cause is in the server's log only");
            }
        }
    }
}

/// Every route of the API, each registered together with its operation in
/// the OpenAPI document. The one place to add an endpoint.
fn documented() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(routes::exchange_json))
        .routes(routes!(routes::exchange_form))
        .routes(routes!(routes::openid_configuration))
        .routes(routes!(routes::jwks))
        .routes(routes!(routes::audience))
        .routes(routes!(revocation::oauth_revoke))
        .routes(routes!(revocation::introspect))
        .routes(routes!(revocation::feed))
        .routes(routes!(admin::create_org))
        .routes(routes!(admin::get_policy, admin::put_policy))
        .routes(routes!(admin::policy_history))
        .routes(routes!(admin::dry_run))
        .routes(routes!(admin::audit))
        .routes(routes!(admin::revoke))
        .routes(routes!(routes::healthz))
        .routes(routes!(routes::metrics))
        .routes(routes!(routes::readyz))
        .routes(routes!(openapi_json))
}

/// The routes of every endpoint, without state, fallback or layers
/// ([`crate::app::router`] adds those).
pub fn routes() -> Router<AppState> {
    documented().into()
}

/// The OpenAPI 3.1 document of every endpoint.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = documented().into_openapi();
    LayerResponses.modify(&mut doc);
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

/// The document as served: built once, on first request.
fn document() -> Bytes {
    static DOCUMENT: OnceLock<Bytes> = OnceLock::new();
    DOCUMENT
        .get_or_init(|| {
            // Plain data with string keys: serializing it cannot fail.
            Bytes::from(serde_json::to_vec(&openapi()).expect("the OpenAPI document serializes"))
        })
        .clone()
}

/// `GET /openapi.json`: this document, generated from the handlers, for
/// client generators and schema-driven fuzzers.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "discovery",
    responses((status = 200, description = "The OpenAPI 3.1 document of every endpoint", content_type = "application/json")),
)]
pub async fn openapi_json() -> Response {
    let mut response = document().into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    response
}

/// Schemas of response parts whose types live in `writ-core` or storage,
/// which do not depend on utoipa. Only the document uses these types;
/// tests/openapi.rs checks real responses against them.
pub mod schemas {
    use std::borrow::Cow;

    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Schema, Type};
    use utoipa::{PartialSchema, ToSchema};

    /// The schema of a policy given inline (`POST /v1/orgs`): TOML text,
    /// JSON text, or a JSON object.
    pub fn policy_source() -> Schema {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("TOML text (or JSON text with `format` json)")),
            )
            .item(ObjectBuilder::new().schema_type(Type::Object).description(Some("The policy as a JSON object")))
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .description(Some("An optional first policy: TOML text, JSON text (with `format`), or a JSON object"))
            .into()
    }

    /// Provenance of the CI job that obtained a token, in GitHub's
    /// vocabulary whatever the issuer; unknown fields are left out.
    #[derive(ToSchema)]
    #[schema(as = CiProvenance)]
    pub struct CiProvenanceSchema {
        /// The OIDC issuer URL of the subject token.
        pub issuer: Option<String>,
        /// `owner/name` (GitLab: the project path).
        #[schema(example = "acme/web")]
        pub repository: Option<String>,
        /// The repository's immutable id (GitLab: project id).
        pub repository_id: Option<String>,
        /// The owner's name (GitLab: the namespace path).
        pub repository_owner: Option<String>,
        /// The owner's immutable id (GitLab: namespace id).
        pub repository_owner_id: Option<String>,
        /// The git ref the job ran on.
        #[schema(rename = "ref", example = "refs/heads/main")]
        pub ref_: Option<String>,
        /// The commit the job ran on.
        pub sha: Option<String>,
        /// The workflow file and ref (GitLab: `ci_config_ref_uri`).
        pub workflow_ref: Option<String>,
        /// The deployment environment, when the job declared one.
        pub environment: Option<String>,
        /// The workflow run id (GitLab: pipeline id).
        pub run_id: Option<String>,
        /// The run attempt.
        pub run_attempt: Option<String>,
        /// Who triggered the run.
        pub actor: Option<String>,
    }

    /// One of writ's public signing keys (an Ed25519 JWK, RFC 8037).
    #[derive(ToSchema)]
    #[schema(as = Jwk)]
    pub struct JwkSchema {
        /// Key type: `OKP`.
        #[schema(example = "OKP")]
        pub kty: String,
        /// Curve: `Ed25519`.
        #[schema(example = "Ed25519")]
        pub crv: String,
        /// The public key, base64url.
        pub x: String,
        /// Key id, as in the `kid` header of tokens it signs.
        pub kid: String,
        /// `EdDSA`.
        #[schema(example = "EdDSA")]
        pub alg: String,
        /// `sig`.
        #[schema(rename = "use", example = "sig")]
        pub use_: String,
    }

    /// writ's public signing keys (RFC 7517), including a key published
    /// before it starts signing; newest first.
    #[derive(ToSchema)]
    #[schema(as = Jwks)]
    pub struct JwksSchema {
        /// The keys.
        pub keys: Vec<JwkSchema>,
    }

    /// One finding about a policy, pointing at the offending value.
    #[derive(ToSchema)]
    #[schema(as = Diagnostic)]
    pub struct DiagnosticSchema {
        /// `error` (the policy is refused) or `warning` (accepted).
        #[schema(example = "error")]
        pub severity: String,
        /// What is wrong, one lowercase sentence.
        pub message: String,
        /// 1-based line of the offending value.
        pub line: u64,
        /// 1-based column (in characters) of the offending value.
        pub column: u64,
        /// The rule it concerns, when it concerns one.
        pub rule: Option<String>,
        /// How to fix it, e.g. the nearest valid name.
        pub help: Option<String>,
    }

    /// One condition of a rule that did not hold, or a requested
    /// permission, app or machine the rule does not grant. Written by
    /// hand: each kind (`type`) has its own further fields, so the object
    /// is open.
    pub struct FailureSchema;

    impl PartialSchema for FailureSchema {
        fn schema() -> RefOr<Schema> {
            let string = |description: &str| {
                ObjectBuilder::new().schema_type(Type::String).description(Some(description.to_owned()))
            };
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .description(Some(
                    "One condition of a rule that did not hold, or a requested permission, app or machine the rule does not grant. Each kind has its own further fields (`claim`, `wanted`, `got`, `permission`, …).",
                ))
                .property("type", string("The kind of failure, e.g. `claim`, `workflow`, `permission_not_granted`"))
                .required("type")
                .property("message", string("The failure as a sentence"))
                .required("message")
                .additional_properties(Some(AdditionalProperties::FreeForm(true)))
                .into()
        }
    }

    impl ToSchema for FailureSchema {
        fn name() -> Cow<'static, str> {
            Cow::Borrowed("Failure")
        }
    }

    /// How one rule fared.
    #[derive(ToSchema)]
    #[schema(as = RuleOutcome)]
    pub struct RuleOutcomeSchema {
        /// The rule's name.
        pub rule: String,
        /// All of the rule's conditions held.
        pub matched: bool,
        /// What failed, in rule order.
        pub failures: Vec<FailureSchema>,
    }

    /// The result of a dry run: the decision the exchange would make now,
    /// with its full explanation. Nothing is issued, consumed or audited.
    #[derive(ToSchema)]
    #[schema(as = DryRunResult)]
    pub struct DryRunResultSchema {
        /// `granted` or `denied`.
        #[schema(example = "granted")]
        pub decision: String,
        /// The org.
        pub org: String,
        /// The policy version evaluated; `null` for a candidate policy.
        pub policy_version: Option<i64>,
        /// The configured issuer the claims were taken from.
        pub issuer: String,
        /// Always `false`: a dry run consumes no token.
        pub consumed: bool,
        /// Always `false`: a dry run issues nothing.
        pub issued: bool,
        /// Granted: the rule that grants.
        pub rule: Option<String>,
        /// Granted: the permissions the token would get.
        pub permissions: Option<Vec<String>>,
        /// Granted: apps the token would be limited to (empty: none).
        pub apps: Option<Vec<String>>,
        /// Granted: machines the token would be limited to (empty: none).
        pub machines: Option<Vec<String>>,
        /// Granted: the token's lifetime in seconds.
        pub ttl_s: Option<u64>,
        /// Granted: repository and owner ids that would be pinned.
        #[schema(value_type = Option<Vec<Object>>)]
        pub new_pins: Option<Vec<serde_json::Value>>,
        /// Denied: `invalid_grant`, `invalid_scope` or `invalid_target`.
        pub kind: Option<String>,
        /// Denied: one sentence.
        pub message: Option<String>,
        /// Every rule's outcome (granted: the granting rule last).
        pub explanation: Vec<RuleOutcomeSchema>,
    }

    /// One audited decision. Fields that a denial before verification
    /// cannot know are `null`; no field ever holds a token.
    #[derive(ToSchema)]
    #[schema(as = AuditRecord)]
    pub struct AuditRecordSchema {
        /// UUIDv7: unique and ordered by time.
        #[schema(format = "uuid")]
        pub id: String,
        /// When the decision was made, Unix seconds.
        pub time: i64,
        /// `time` in RFC 3339.
        pub time_rfc3339: String,
        /// The request id, as in logs and error bodies.
        pub request_id: String,
        /// The org the caller asked for.
        pub org: String,
        /// `granted` or `denied`.
        #[schema(example = "granted")]
        pub outcome: String,
        /// The RFC 6749 error code of a denial.
        pub error: Option<String>,
        /// The rule that granted the token.
        pub rule: Option<String>,
        /// The subject token's issuer URL, once verified.
        pub issuer: Option<String>,
        /// The subject token's `sub`.
        pub subject: Option<String>,
        /// The subject token's `jti`.
        pub subject_jti: Option<String>,
        /// CI provenance: repository (`owner/name`).
        pub repository: Option<String>,
        /// CI provenance: repository id.
        pub repository_id: Option<String>,
        /// CI provenance: git ref.
        #[schema(rename = "ref")]
        pub ref_: Option<String>,
        /// CI provenance: environment.
        pub environment: Option<String>,
        /// CI provenance: workflow ref.
        pub workflow_ref: Option<String>,
        /// CI provenance: run id.
        pub run_id: Option<String>,
        /// CI provenance: actor.
        pub actor: Option<String>,
        /// Permissions the caller asked for (empty: none named).
        pub requested_permissions: Vec<String>,
        /// Apps the caller asked for.
        pub requested_apps: Vec<String>,
        /// Machines the caller asked for.
        pub requested_machines: Vec<String>,
        /// Permissions granted (empty on denial).
        pub granted_permissions: Vec<String>,
        /// Apps granted; `null`: not limited by app (or denied).
        pub granted_apps: Option<Vec<String>>,
        /// Machines granted; `null`: not limited by machine (or denied).
        pub granted_machines: Option<Vec<String>>,
        /// The issued token's `jti`.
        pub token_jti: Option<String>,
        /// The issued token's expiry, Unix seconds.
        pub token_expires_at: Option<i64>,
        /// The decision's explanation (per rule, per failed condition).
        #[schema(value_type = Option<Vec<Object>>)]
        pub explanation: Option<Vec<serde_json::Value>>,
        /// The client's address as the server saw it.
        pub client_addr: Option<String>,
    }
}
