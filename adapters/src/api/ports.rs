//! The REST API's ports: who the caller is and what RBAC lets them do ([`Authorizer`]), and the objects it reads
//! and writes ([`Clusters`]). [`KubeAuthorizer`] and [`KubeClusters`] are the real ones; [`CachedAuthorizer`] keeps
//! decisions briefly.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::Value;
use tsdb_operator_core::api::Access;
use tsdb_operator_core::constants::GROUP;

use crate::answer_cache::{AnswerCache, key};

/// The user the API server authenticated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// User name (`system:serviceaccount:team-a:ci`, `alice`).
    pub username: String,
    /// UID, when the authenticator gives one.
    pub uid: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes (passed on to the SubjectAccessReview).
    pub extra: BTreeMap<String, Vec<String>>,
}

/// A request to the API server failed; its answer is unknown, so nothing is cached.
#[derive(Debug, thiserror::Error)]
#[error("the {what} request to the API server failed: {source}")]
pub struct ReviewError {
    /// `TokenReview` or `SubjectAccessReview`.
    pub what: &'static str,
    /// The client error.
    #[source]
    pub source: kube::Error,
}

/// The port to the API server's authentication and authorisation.
pub trait Authorizer: Send + Sync + 'static {
    /// The user of bearer `token`; `None` when the API server does not accept it.
    fn authenticate(&self, token: &str) -> impl Future<Output = Result<Option<Caller>, ReviewError>> + Send;
    /// Whether `caller` has `access`.
    fn authorize(&self, caller: &Caller, access: &Access) -> impl Future<Output = Result<bool, ReviewError>> + Send;
}

/// `TokenReview` and `SubjectAccessReview` with resource attributes (the operator needs `create` on both).
#[derive(Clone)]
pub struct KubeAuthorizer {
    client: kube::Client,
}

impl KubeAuthorizer {
    /// Reviews through `client`.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

impl Authorizer for KubeAuthorizer {
    async fn authenticate(&self, token: &str) -> Result<Option<Caller>, ReviewError> {
        let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_owned()), ..TokenReviewSpec::default() },
            ..TokenReview::default()
        };
        let reviewed = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|source| ReviewError { what: "TokenReview", source })?;
        let status = reviewed.status.unwrap_or_default();
        Ok(status.user.filter(|_| status.authenticated == Some(true)).map(|user| Caller {
            username: user.username.unwrap_or_default(),
            uid: user.uid,
            groups: user.groups.unwrap_or_default(),
            extra: user.extra.unwrap_or_default(),
        }))
    }

    async fn authorize(&self, caller: &Caller, access: &Access) -> Result<bool, ReviewError> {
        let api: kube::Api<SubjectAccessReview> = kube::Api::all(self.client.clone());
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(caller.username.clone()),
                uid: caller.uid.clone(),
                groups: Some(caller.groups.clone()),
                extra: (!caller.extra.is_empty()).then(|| caller.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(access.verb.to_owned()),
                    group: Some(access.group.to_owned()),
                    version: Some("v1".to_owned()),
                    resource: Some(access.resource.to_owned()),
                    subresource: access.subresource.map(str::to_owned),
                    namespace: access.namespace.clone(),
                    name: access.name.clone(),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let reviewed = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|source| ReviewError { what: "SubjectAccessReview", source })?;
        Ok(reviewed.status.is_some_and(|s| s.allowed))
    }
}

/// How long [`CachedAuthorizer`] keeps answers: an accepted token and an RBAC answer for 30 s (a revoked
/// RoleBinding or token takes effect within it), a refused token for 10 s.
#[derive(Clone, Copy, Debug)]
pub struct CacheTtl {
    /// Accepted tokens and RBAC answers.
    pub positive: Duration,
    /// Refused tokens.
    pub negative: Duration,
}

impl Default for CacheTtl {
    fn default() -> Self {
        Self { positive: Duration::from_secs(30), negative: Duration::from_secs(10) }
    }
}

/// Most answers kept at once; a flood of made-up tokens cannot grow the cache beyond it.
const CACHE_ENTRIES: usize = 4096;

/// An [`Authorizer`] that keeps answers for [`CacheTtl`], keyed by hashes (tokens are never kept). Errors are not
/// kept.
pub struct CachedAuthorizer<A> {
    inner: A,
    ttl: CacheTtl,
    callers: AnswerCache<Option<Caller>>,
    decisions: AnswerCache<bool>,
}

impl<A: Authorizer> CachedAuthorizer<A> {
    /// Caches `inner`'s answers.
    pub fn new(inner: A, ttl: CacheTtl) -> Self {
        Self { inner, ttl, callers: AnswerCache::new(CACHE_ENTRIES), decisions: AnswerCache::new(CACHE_ENTRIES) }
    }
}

impl<A: Authorizer> Authorizer for CachedAuthorizer<A> {
    async fn authenticate(&self, token: &str) -> Result<Option<Caller>, ReviewError> {
        let k = key(&["token", token]);
        if let Some(caller) = self.callers.get(&k) {
            return Ok(caller);
        }
        let caller = self.inner.authenticate(token).await?;
        let ttl = if caller.is_some() { self.ttl.positive } else { self.ttl.negative };
        self.callers.put(k, caller.clone(), ttl);
        Ok(caller)
    }

    async fn authorize(&self, caller: &Caller, access: &Access) -> Result<bool, ReviewError> {
        let groups = caller.groups.join("\u{1}");
        let k = key(&[
            "access",
            &caller.username,
            &groups,
            access.verb,
            access.resource,
            access.subresource.unwrap_or_default(),
            access.namespace.as_deref().unwrap_or_default(),
            access.name.as_deref().unwrap_or_default(),
        ]);
        if let Some(allowed) = self.decisions.get(&k) {
            return Ok(allowed);
        }
        let allowed = self.inner.authorize(caller, access).await?;
        self.decisions.put(k, allowed, self.ttl.positive);
        Ok(allowed)
    }
}

/// What the API server answered to a request that failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// The API server's reason (`NotFound`, `AlreadyExists`, `Invalid`), empty when it did not answer.
    pub reason: String,
    /// Its status code, 0 when it did not answer.
    pub code: u16,
    /// Its message, or the client's error.
    pub message: String,
}

impl From<kube::Error> for Failure {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(status) => {
                Self { reason: status.reason.clone(), code: status.code, message: status.message.clone() }
            }
            other => Self { reason: String::new(), code: 0, message: crate::error_chain(&other) },
        }
    }
}

/// The port to the objects the API serves, as JSON (objects are passed through as the API server stores them, so
/// one the operator cannot read is still listed).
pub trait Clusters: Send + Sync + 'static {
    /// PrometheusClusters in `namespace`.
    fn list(&self, namespace: &str) -> impl Future<Output = Result<Vec<Value>, Failure>> + Send;
    /// One PrometheusCluster.
    fn get(&self, namespace: &str, name: &str) -> impl Future<Output = Result<Value, Failure>> + Send;
    /// Creates `object` (a whole PrometheusCluster); returns it as stored.
    fn create(&self, namespace: &str, object: Value) -> impl Future<Output = Result<Value, Failure>> + Send;
    /// Deletes one PrometheusCluster.
    fn delete(&self, namespace: &str, name: &str) -> impl Future<Output = Result<(), Failure>> + Send;
    /// Sets annotation `key` to `value` on a PrometheusCluster, provided its `resourceVersion` is still `version`.
    fn annotate(
        &self,
        namespace: &str,
        name: &str,
        version: &str,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<(), Failure>> + Send;
    /// All PrometheusClusterSets.
    fn list_sets(&self) -> impl Future<Output = Result<Vec<Value>, Failure>> + Send;
    /// One PrometheusClusterSet.
    fn get_set(&self, name: &str) -> impl Future<Output = Result<Value, Failure>> + Send;
}

/// The real [`Clusters`]: the API server, with the operator's credentials (the caller was authorised first).
#[derive(Clone)]
pub struct KubeClusters {
    client: kube::Client,
}

impl KubeClusters {
    /// Through `client`.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    fn clusters(&self, namespace: &str) -> kube::Api<DynamicObject> {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(GROUP, "v1", "PrometheusCluster"),
            tsdb_operator_core::api::CLUSTERS,
        );
        kube::Api::namespaced_with(self.client.clone(), namespace, &ar)
    }

    fn sets(&self) -> kube::Api<DynamicObject> {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(GROUP, "v1", "PrometheusClusterSet"),
            tsdb_operator_core::api::CLUSTER_SETS,
        );
        kube::Api::all_with(self.client.clone(), &ar)
    }
}

fn to_json(object: &DynamicObject) -> Result<Value, Failure> {
    serde_json::to_value(object).map_err(|e| Failure { reason: String::new(), code: 0, message: e.to_string() })
}

async fn list_all(api: &kube::Api<DynamicObject>) -> Result<Vec<Value>, Failure> {
    let mut items = Vec::new();
    let mut params = kube::api::ListParams::default().limit(500);
    // Bounded: at most 1,000 pages of 500.
    for _ in 0..1000 {
        let page = api.list(&params).await?;
        for item in &page.items {
            items.push(to_json(item)?);
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    Ok(items)
}

impl Clusters for KubeClusters {
    async fn list(&self, namespace: &str) -> Result<Vec<Value>, Failure> {
        list_all(&self.clusters(namespace)).await
    }

    async fn get(&self, namespace: &str, name: &str) -> Result<Value, Failure> {
        to_json(&self.clusters(namespace).get(name).await?)
    }

    async fn create(&self, namespace: &str, object: Value) -> Result<Value, Failure> {
        let object: DynamicObject = serde_json::from_value(object).map_err(|e| Failure {
            reason: "BadRequest".into(),
            code: 400,
            message: e.to_string(),
        })?;
        to_json(&self.clusters(namespace).create(&PostParams::default(), &object).await?)
    }

    async fn delete(&self, namespace: &str, name: &str) -> Result<(), Failure> {
        self.clusters(namespace).delete(name, &DeleteParams::default()).await?;
        Ok(())
    }

    async fn annotate(
        &self,
        namespace: &str,
        name: &str,
        version: &str,
        key: &str,
        value: &str,
    ) -> Result<(), Failure> {
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": version, "annotations": { key: value } }
        });
        self.clusters(namespace).patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        Ok(())
    }

    async fn list_sets(&self) -> Result<Vec<Value>, Failure> {
        list_all(&self.sets()).await
    }

    async fn get_set(&self, name: &str) -> Result<Value, Failure> {
        to_json(&self.sets().get(name).await?)
    }
}

/// A shared port is a port.
impl<T: Clusters> Clusters for std::sync::Arc<T> {
    async fn list(&self, namespace: &str) -> Result<Vec<Value>, Failure> {
        (**self).list(namespace).await
    }
    async fn get(&self, namespace: &str, name: &str) -> Result<Value, Failure> {
        (**self).get(namespace, name).await
    }
    async fn create(&self, namespace: &str, object: Value) -> Result<Value, Failure> {
        (**self).create(namespace, object).await
    }
    async fn delete(&self, namespace: &str, name: &str) -> Result<(), Failure> {
        (**self).delete(namespace, name).await
    }
    async fn annotate(
        &self,
        namespace: &str,
        name: &str,
        version: &str,
        key: &str,
        value: &str,
    ) -> Result<(), Failure> {
        (**self).annotate(namespace, name, version, key, value).await
    }
    async fn list_sets(&self) -> Result<Vec<Value>, Failure> {
        (**self).list_sets().await
    }
    async fn get_set(&self, name: &str) -> Result<Value, Failure> {
        (**self).get_set(name).await
    }
}
