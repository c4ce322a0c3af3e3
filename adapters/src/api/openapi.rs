//! The REST API's OpenAPI 3.1 document, served at [`PATH`] and committed as `docs/openapi.json` (a test fails when
//! the two differ), so that clients can be generated from it.
//!
//! The document is built from the same sources as the API: the table of routes below (a test sends a request to
//! each documented operation and fails on one the router does not have), the CRDs' schemas for the objects the
//! API returns (what the API server itself enforces), and the core's answer types for everything else.

use kube::CustomResourceExt;
use serde_json::Value;
use tsdb_operator_core::api::{BackupAccepted, ErrorBody, RequestState};
use tsdb_operator_core::audit::AuditRecord;
use tsdb_operator_core::crd::{PrometheusCluster, PrometheusClusterSet};
use utoipa::openapi::path::{HttpMethod, Operation, OperationBuilder, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, HeaderBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Ref, RefOr,
    Required, ResponseBuilder, Schema, schema::ArrayBuilder,
};

/// Where the document is served (without authentication: it holds nothing but the API's shape).
pub const PATH: &str = "/api/openapi.json";

const BEARER: &str = "bearer";

/// What an operation answers on success.
#[derive(Clone, Copy)]
enum Answer {
    /// 200 with one object of the component.
    One(&'static str),
    /// 200 with a list of the component.
    List(&'static str),
    /// 201 with the component.
    Created(&'static str),
    /// 202 with the component and a `Location` header.
    Accepted(&'static str),
    /// 204, no body.
    NoContent,
}

/// One operation of the seed's routes (the namespaced routes are derived from it).
struct Op {
    id: &'static str,
    method: HttpMethod,
    /// Path after `/api` (or `/api/namespaces/{namespace}`).
    path: &'static str,
    summary: &'static str,
    body: Option<&'static str>,
    answer: Answer,
    /// Error statuses besides 401, 403 and 503 (every authenticated route has those).
    errors: &'static [(u16, &'static str)],
    /// Whether the route also exists under `/api/namespaces/{namespace}`.
    namespaced: bool,
}

const NOT_FOUND: (u16, &str) = (404, "No such object (or the namespace or name is not a Kubernetes name: 400).");
const BAD_NAME: (u16, &str) = (400, "The namespace or name in the path is not a Kubernetes name.");
const FAILED: (u16, &str) = (500, "The API server failed in a way the caller cannot fix (logged by the operator).");

const OPS: &[Op] = &[
    Op {
        id: "listClusters",
        method: HttpMethod::Get,
        path: "/clusters",
        summary: "List the PrometheusClusters of the namespace (RBAC: list prometheusclusters).",
        body: None,
        answer: Answer::List("PrometheusCluster"),
        errors: &[BAD_NAME, FAILED],
        namespaced: true,
    },
    Op {
        id: "createCluster",
        method: HttpMethod::Post,
        path: "/clusters",
        summary: "Create a PrometheusCluster, checked as the admission webhook checks it (RBAC: create \
                  prometheusclusters).",
        body: Some("CreateBody"),
        answer: Answer::Created("PrometheusCluster"),
        errors: &[
            (
                400,
                "The body is not the seed's {\"name\", \"spec\"} or the spec is refused; the message names every field.",
            ),
            (409, "The name is taken."),
            (413, "The body is larger than 1 MiB."),
            (415, "The Content-Type is not JSON."),
            FAILED,
        ],
        namespaced: true,
    },
    Op {
        id: "getCluster",
        method: HttpMethod::Get,
        path: "/clusters/{name}",
        summary: "Read one PrometheusCluster (RBAC: get prometheusclusters).",
        body: None,
        answer: Answer::One("PrometheusCluster"),
        errors: &[BAD_NAME, NOT_FOUND, FAILED],
        namespaced: true,
    },
    Op {
        id: "deleteCluster",
        method: HttpMethod::Delete,
        path: "/clusters/{name}",
        summary: "Delete a PrometheusCluster (RBAC: delete prometheusclusters).",
        body: None,
        answer: Answer::NoContent,
        errors: &[BAD_NAME, NOT_FOUND, FAILED],
        namespaced: true,
    },
    Op {
        id: "requestBackup",
        method: HttpMethod::Post,
        path: "/clusters/{name}/backup",
        summary: "Request a backup now, as the backup-now annotation does (RBAC: create prometheusclusters/backup).",
        body: None,
        answer: Answer::Accepted("BackupAccepted"),
        errors: &[
            BAD_NAME,
            NOT_FOUND,
            (409, "The cluster has no backup storage (spec.backup), or it kept changing."),
            FAILED,
        ],
        namespaced: true,
    },
    Op {
        id: "getBackupRequest",
        method: HttpMethod::Get,
        path: "/clusters/{name}/backups/{id}",
        summary: "Where a backup request stands (RBAC: get prometheusclusters).",
        body: None,
        answer: Answer::One("RequestState"),
        errors: &[
            BAD_NAME,
            (404, "No such cluster, or the request is not known (only a cluster's latest request is kept)."),
            FAILED,
        ],
        namespaced: true,
    },
    Op {
        id: "getClusterAudit",
        method: HttpMethod::Get,
        path: "/clusters/{name}/audit",
        summary: "The cluster's audit trail, newest first, at most 100 records (RBAC: get prometheusclusters/audit).",
        body: None,
        answer: Answer::List("AuditRecord"),
        errors: &[BAD_NAME],
        namespaced: true,
    },
    Op {
        id: "listClusterSets",
        method: HttpMethod::Get,
        path: "/clustersets",
        summary: "List the PrometheusClusterSets (cluster-scoped; RBAC: list prometheusclustersets).",
        body: None,
        answer: Answer::List("PrometheusClusterSet"),
        errors: &[FAILED],
        namespaced: false,
    },
    Op {
        id: "getClusterSet",
        method: HttpMethod::Get,
        path: "/clustersets/{name}",
        summary: "Read one PrometheusClusterSet (RBAC: get prometheusclustersets).",
        body: None,
        answer: Answer::One("PrometheusClusterSet"),
        errors: &[BAD_NAME, NOT_FOUND, FAILED],
        namespaced: false,
    },
];

/// Every documented operation as (method, path template), the document's own route included (for the tests that
/// compare the document with the router).
#[cfg(test)]
pub(crate) fn operations() -> Vec<(HttpMethod, String)> {
    let doc = document();
    let mut out = Vec::new();
    for (path, item) in &doc.paths.paths {
        let methods = [
            (HttpMethod::Get, item.get.is_some()),
            (HttpMethod::Post, item.post.is_some()),
            (HttpMethod::Delete, item.delete.is_some()),
            (HttpMethod::Put, item.put.is_some()),
            (HttpMethod::Patch, item.patch.is_some()),
        ];
        out.extend(methods.into_iter().filter(|(_, has)| *has).map(|(m, _)| (m, path.clone())));
    }
    out
}

/// The document.
pub fn document() -> OpenApi {
    let mut paths = PathsBuilder::new();
    for op in OPS {
        paths = paths.path(format!("/api{}", op.path), PathItem::new(op.method.clone(), operation(op, false)));
        if op.namespaced {
            let path = format!("/api/namespaces/{{namespace}}{}", op.path);
            paths = paths.path(path, PathItem::new(op.method.clone(), operation(op, true)));
        }
    }
    let document = OperationBuilder::new()
        .operation_id(Some("getOpenApiDocument"))
        .summary(Some("This document (no authentication needed)."))
        .tag("meta")
        .security(SecurityRequirement::default())
        .response(
            "200",
            ResponseBuilder::new().description("The OpenAPI document.").content(
                "application/json",
                ContentBuilder::new().schema(Some(RefOr::T(Schema::Object(utoipa::openapi::Object::new())))).build(),
            ),
        );
    paths = paths.path(PATH, PathItem::new(HttpMethod::Get, document));

    let mut components = ComponentsBuilder::new()
        .security_scheme(BEARER, SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)))
        .schema("CreateBody", create_body());
    for (name, schema) in kube_schemas().into_iter().chain(core_schemas()) {
        components = components.schema(name, object_schema(&schema));
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("tsdb-operator REST API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "The seed's routes act in the operator's --api-namespace; the same routes under \
                     /api/namespaces/{namespace} act in any namespace. Every route but this document needs a \
                     Kubernetes bearer token; the cluster's RBAC decides what its user may do (docs/api.md). Every \
                     error is {\"error\": \"...\"}.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components.build()))
        .security(Some([SecurityRequirement::new::<_, _, &str>(BEARER, [])]))
        .build()
}

fn operation(op: &Op, namespaced: bool) -> Operation {
    let id = if namespaced { format!("{}InNamespace", op.id) } else { op.id.to_owned() };
    let mut builder = OperationBuilder::new()
        .operation_id(Some(id))
        .summary(Some(op.summary))
        .tag(op.path.split('/').nth(1).unwrap_or("api"));
    if namespaced {
        builder = builder.parameter(path_parameter("namespace", "The namespace (any, not only --api-namespace)."));
    } else if op.path.starts_with("/clusters") {
        builder = builder.description(Some("In the operator's --api-namespace."));
    }
    if op.path.contains("{name}") {
        builder = builder.parameter(path_parameter("name", "The object's name."));
    }
    if op.path.contains("{id}") {
        builder = builder.parameter(path_parameter("id", "The request id the backup request answered."));
    }
    if let Some(body) = op.body {
        builder = builder.request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(Required::True))
                .content("application/json", ContentBuilder::new().schema(Some(reference(body))).build())
                .build(),
        ));
    }
    let json = |schema: RefOr<Schema>| ContentBuilder::new().schema(Some(schema)).build();
    let success = match op.answer {
        Answer::One(c) => {
            ("200", ResponseBuilder::new().description("OK.").content("application/json", json(reference(c))))
        }
        Answer::List(c) => (
            "200",
            ResponseBuilder::new().description("OK.").content(
                "application/json",
                json(RefOr::T(Schema::Array(ArrayBuilder::new().items(reference(c)).build()))),
            ),
        ),
        Answer::Created(c) => {
            ("201", ResponseBuilder::new().description("Created.").content("application/json", json(reference(c))))
        }
        Answer::Accepted(c) => (
            "202",
            ResponseBuilder::new()
                .description("Accepted: the backup scheduler starts it.")
                .header("Location", HeaderBuilder::new().description(Some("Where to follow the request.")).build())
                .content("application/json", json(reference(c))),
        ),
        Answer::NoContent => ("204", ResponseBuilder::new().description("Deleted.")),
    };
    builder = builder.response(success.0, success.1);
    let common: [(u16, &str); 3] = [
        (401, "No bearer token, or one the API server does not accept."),
        (403, "RBAC does not grant the caller this route's permission; the message names user, verb and resource."),
        (503, "The API server could not review the caller, or a feature this route needs is off; try again."),
    ];
    let mut errors: Vec<(u16, &str)> = op.errors.iter().copied().chain(common).collect();
    errors.sort_by_key(|(status, _)| *status);
    errors.dedup_by_key(|(status, _)| *status);
    for (status, description) in errors {
        builder = builder.response(
            status.to_string(),
            ResponseBuilder::new().description(description).content("application/json", json(reference("ErrorBody"))),
        );
    }
    builder.build()
}

fn path_parameter(name: &str, description: &str) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some(description))
        .schema(Some(RefOr::T(Schema::Object(
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .max_length(Some(253))
                .build(),
        ))))
        .build()
}

fn reference(component: &str) -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(component))
}

/// The seed's create body: a name and a spec.
fn create_body() -> Schema {
    let name = utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .description(Some("The cluster's name (a DNS-1123 label)."))
        .max_length(Some(63));
    utoipa::openapi::ObjectBuilder::new()
        .description(Some("The body of POST /api/clusters, as the seed reads it."))
        .property("name", name)
        .property("spec", reference("PrometheusClusterSpec"))
        .required("name")
        .required("spec")
        .build()
        .into()
}

/// The schemas the API server enforces for the objects the API returns, and the spec on its own (for
/// [`create_body`]).
fn kube_schemas() -> Vec<(String, Value)> {
    let mut cluster = crd_schema(&PrometheusCluster::crd());
    let spec = cluster["properties"]["spec"].take();
    cluster["properties"]["spec"] = serde_json::json!({"$ref": "#/components/schemas/PrometheusClusterSpec"});
    vec![
        ("PrometheusCluster".to_owned(), cluster),
        ("PrometheusClusterSpec".to_owned(), spec),
        ("PrometheusClusterSet".to_owned(), crd_schema(&PrometheusClusterSet::crd())),
    ]
}

/// The schema the API server enforces for a kind (its CRD's served version).
fn crd_schema(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    let version = crd.spec.versions.iter().find(|v| v.served).or(crd.spec.versions.first());
    let schema = version.and_then(|v| v.schema.as_ref()).and_then(|s| s.open_api_v3_schema.as_ref());
    serde_json::to_value(schema).unwrap_or_default()
}

/// Schemas of the core's answer types and of what they refer to, by name.
fn core_schemas() -> Vec<(String, Value)> {
    let mut generator = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas".into())
        .into_generator();
    generator.subschema_for::<ErrorBody>();
    generator.subschema_for::<BackupAccepted>();
    generator.subschema_for::<RequestState>();
    generator.subschema_for::<AuditRecord>();
    let mut named: Vec<(String, Value)> = generator.take_definitions(true).into_iter().collect();
    for (name, schema) in &mut named {
        if name == "AuditRecord"
            && let Some(properties) = schema["properties"].as_object_mut()
        {
            let id = serde_json::json!({"type": "string", "description": "The record's id (its eventId)."});
            properties.insert("id".to_owned(), id);
        }
    }
    named
}

/// A JSON schema as the document's type. Every keyword the document uses survives the conversion (a test compares
/// the two); one that would not is left out rather than failing the document.
fn object_schema(schema: &Value) -> RefOr<Schema> {
    serde_json::from_value(normalized(schema.clone())).unwrap_or_default()
}

/// `schema` in OpenAPI 3.1's keywords that the document's types hold, meaning the same: `const: x` is `enum: [x]`;
/// Kubernetes' int-or-string (no `type`) is `anyOf` integer or string; OpenAPI 3.0's `nullable` is a `"null"` type;
/// a whole number is an integer.
pub(crate) fn normalized(mut schema: Value) -> Value {
    match &mut schema {
        Value::Object(fields) => {
            if let Some(value) = fields.remove("const") {
                fields.insert("enum".to_owned(), Value::Array(vec![value]));
            }
            if fields.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
                && !fields.contains_key("type")
                && !fields.contains_key("anyOf")
            {
                let either = serde_json::json!([{"type": "integer"}, {"type": "string"}]);
                fields.insert("anyOf".to_owned(), either);
            }
            if fields.get("nullable") == Some(&Value::Bool(true)) {
                fields.remove("nullable");
                match fields.get_mut("type") {
                    Some(Value::String(kind)) => {
                        let kind = Value::String(std::mem::take(kind));
                        fields.insert("type".to_owned(), Value::Array(vec![kind, "null".into()]));
                    }
                    _ => {
                        if let Some(Value::Array(either)) = fields.get_mut("anyOf") {
                            either.push(serde_json::json!({"type": "null"}));
                        }
                    }
                }
            }
            for (_, value) in fields.iter_mut() {
                *value = normalized(value.take());
            }
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                *item = normalized(item.take());
            }
        }
        Value::Number(n) => {
            // A bound the CRD holds as `10000.0` is the integer 10000.
            if let Some(whole) = n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9e15) {
                #[allow(clippy::cast_possible_truncation)] // whole and in range
                let whole = whole as i64;
                if n.as_i64().is_none() && n.as_u64().is_none() {
                    return Value::from(whole);
                }
            }
        }
        _ => {}
    }
    schema
}

#[cfg(test)]
pub(crate) fn schemas_as_given() -> Vec<(String, Value)> {
    kube_schemas().into_iter().chain(core_schemas()).collect()
}
