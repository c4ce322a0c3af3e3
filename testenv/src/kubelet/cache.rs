//! Watches ConfigMaps and Secrets (all namespaces) and keeps them in memory, the way the kubelet's
//! watch-based ConfigMap/Secret manager does; announces changes so pods can refresh their volumes. Does I/O.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{broadcast, watch};

/// Which kind of object changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    ConfigMap,
    Secret,
}

/// A change: kind, namespace, name.
pub(crate) type Change = (Kind, String, String);

type Key = (String, String);

/// In-memory copies of all ConfigMaps and Secrets.
#[derive(Debug)]
pub(crate) struct ObjectCache {
    config_maps: RwLock<BTreeMap<Key, ConfigMap>>,
    secrets: RwLock<BTreeMap<Key, Secret>>,
    changes: broadcast::Sender<Change>,
    synced: watch::Sender<u8>,
}

impl ObjectCache {
    /// Starts the two watchers.
    pub(crate) fn start(client: &Client) -> Arc<Self> {
        let cache = Arc::new(Self {
            config_maps: RwLock::default(),
            secrets: RwLock::default(),
            changes: broadcast::channel(256).0,
            synced: watch::channel(0).0,
        });
        let cms: Api<ConfigMap> = Api::all(client.clone());
        let secrets: Api<Secret> = Api::all(client.clone());
        tokio::spawn(run(Arc::clone(&cache), cms, Kind::ConfigMap));
        tokio::spawn(run(Arc::clone(&cache), secrets, Kind::Secret));
        cache
    }

    /// Waits until both kinds were listed once.
    pub(crate) async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|n| *n >= 2).await;
    }

    /// Subscribes to changes.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// A ConfigMap.
    pub(crate) fn config_map(&self, namespace: &str, name: &str) -> Option<ConfigMap> {
        let map = self.config_maps.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(&(namespace.to_owned(), name.to_owned())).cloned()
    }

    /// A Secret.
    pub(crate) fn secret(&self, namespace: &str, name: &str) -> Option<Secret> {
        let map = self.secrets.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(&(namespace.to_owned(), name.to_owned())).cloned()
    }
}

trait Cached: kube::Resource + Clone + Sized {
    fn store(cache: &ObjectCache) -> &RwLock<BTreeMap<Key, Self>>;
}

impl Cached for ConfigMap {
    fn store(cache: &ObjectCache) -> &RwLock<BTreeMap<Key, Self>> {
        &cache.config_maps
    }
}

impl Cached for Secret {
    fn store(cache: &ObjectCache) -> &RwLock<BTreeMap<Key, Self>> {
        &cache.secrets
    }
}

async fn run<K>(cache: Arc<ObjectCache>, api: Api<K>, kind: Kind)
where
    K: Cached
        + kube::Resource<DynamicType = ()>
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let mut stream = watcher::watcher(api, watcher::Config::default()).default_backoff().boxed();
    let mut listing: Option<BTreeMap<Key, K>> = None;
    let mut counted = false;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                tracing::debug!(?kind, error = %err, "watch error");
                continue;
            }
        };
        let key_of = |obj: &K| (obj.namespace().unwrap_or_default(), obj.name_any());
        let mut changed = Vec::new();
        match event {
            Event::Init => listing = Some(BTreeMap::new()),
            Event::InitApply(obj) => {
                if let Some(listing) = listing.as_mut() {
                    listing.insert(key_of(&obj), obj);
                }
            }
            Event::InitDone => {
                let fresh = listing.take().unwrap_or_default();
                let mut store = K::store(&cache).write().unwrap_or_else(std::sync::PoisonError::into_inner);
                changed.extend(store.keys().filter(|k| !fresh.contains_key(*k)).cloned());
                changed.extend(fresh.keys().cloned());
                *store = fresh;
                drop(store);
                if !counted {
                    counted = true;
                    cache.synced.send_modify(|n| *n += 1);
                }
            }
            Event::Apply(obj) => {
                let key = key_of(&obj);
                K::store(&cache).write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(key.clone(), obj);
                changed.push(key);
            }
            Event::Delete(obj) => {
                let key = key_of(&obj);
                K::store(&cache).write().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&key);
                changed.push(key);
            }
        }
        for (namespace, name) in changed {
            let _ = cache.changes.send((kind, namespace, name));
        }
    }
}
