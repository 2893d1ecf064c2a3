//! A pod's top owner: its controller, followed one level up where Kubernetes puts one workload
//! under another (ReplicaSet → Deployment, Job → CronJob).

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{apps::v1::ReplicaSet, batch::v1::Job},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Api, Client};

use super::{metrics::K8sMetrics, store::OwnerRef};

/// Bound on cached lookups; a node runs a few hundred pods at most, owned by fewer workloads.
const CACHE_CAPACITY: usize = 4096;
/// ReplicaSets and Jobs keep their owner for life (adoption is rare), but a bound on staleness
/// costs one GET per workload per TTL.
const RESOLVED_TTL: Duration = Duration::from_secs(600);
/// After a failed lookup, pods of the same owner do not wait on the API server again for this
/// long: one timeout per owner, not one per pod.
pub(crate) const FAILED_TTL: Duration = Duration::from_secs(30);

/// The outcome for one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Workload {
    pub kind: String,
    pub name: String,
    /// The lookup failed: this is the immediate owner, and it is worth asking again.
    pub pending: bool,
}

type Key = (&'static str, String, String);

struct Cached {
    /// None: the lookup failed.
    top: Option<OwnerRef>,
    expires: Instant,
    seq: u64,
}

pub(crate) struct OwnerResolver {
    client: Client,
    timeout: Duration,
    failed_ttl: Duration,
    metrics: K8sMetrics,
    cache: HashMap<Key, Cached>,
    /// Insertion order for eviction; an entry whose seq no longer matches was replaced.
    order: VecDeque<(Key, u64)>,
    seq: u64,
}

impl OwnerResolver {
    /// `failed_ttl`: how long a failed owner is not asked again ([`FAILED_TTL`] but in tests).
    pub fn new(client: Client, timeout: Duration, failed_ttl: Duration, metrics: K8sMetrics) -> Self {
        Self { client, timeout, failed_ttl, metrics, cache: HashMap::new(), order: VecDeque::new(), seq: 0 }
    }

    /// The top owner of a pod in `namespace` whose controller is `owner`; waits at most one
    /// lookup timeout.
    pub async fn resolve(&mut self, namespace: &str, owner: &OwnerRef) -> Workload {
        let kind: &'static str = match owner.kind.as_str() {
            "ReplicaSet" => "ReplicaSet",
            "Job" => "Job",
            _ => return Workload { kind: owner.kind.clone(), name: owner.name.clone(), pending: false },
        };
        let key = (kind, namespace.to_owned(), owner.name.clone());
        let now = Instant::now();
        if let Some(c) = self.cache.get(&key).filter(|c| c.expires > now) {
            return match &c.top {
                Some(top) => Workload { kind: top.kind.clone(), name: top.name.clone(), pending: false },
                None => Workload { kind: owner.kind.clone(), name: owner.name.clone(), pending: true },
            };
        }
        let looked_up = tokio::time::timeout(self.timeout, self.controller_of(kind, namespace, &owner.name)).await;
        let (top, ttl) = match looked_up {
            Ok(Ok(Some(parent))) => (Some(parent), RESOLVED_TTL),
            Ok(Ok(None)) => (Some(owner.clone()), RESOLVED_TTL),
            Ok(Err(kube::Error::Api(status))) if status.code == 404 => {
                // Gone (the pod outlived it, or it was deleted in a rollout): the immediate owner
                // is the best answer there will be.
                self.metrics.owner_lookups_failed.inc();
                tracing::debug!(kind, namespace, name = %owner.name, "owner not found; using it as the workload");
                (Some(owner.clone()), self.failed_ttl)
            }
            Ok(Err(e)) => {
                self.metrics.owner_lookups_failed.inc();
                tracing::debug!(kind, namespace, name = %owner.name, error = %e, "owner lookup failed");
                (None, self.failed_ttl)
            }
            Err(_) => {
                self.metrics.owner_lookups_failed.inc();
                tracing::debug!(kind, namespace, name = %owner.name, timeout = ?self.timeout, "owner lookup timed out");
                (None, self.failed_ttl)
            }
        };
        let workload = match &top {
            Some(t) => Workload { kind: t.kind.clone(), name: t.name.clone(), pending: false },
            None => Workload { kind: owner.kind.clone(), name: owner.name.clone(), pending: true },
        };
        self.insert(key, top, now + ttl);
        workload
    }

    /// The controller of a ReplicaSet or Job; None when it has none (it is the top).
    async fn controller_of(
        &self,
        kind: &'static str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<OwnerRef>, kube::Error> {
        let meta = if kind == "ReplicaSet" {
            Api::<ReplicaSet>::namespaced(self.client.clone(), namespace).get(name).await?.metadata
        } else {
            Api::<Job>::namespaced(self.client.clone(), namespace).get(name).await?.metadata
        };
        Ok(controller(&meta))
    }

    fn insert(&mut self, key: Key, top: Option<OwnerRef>, expires: Instant) {
        while self.cache.len() >= CACHE_CAPACITY {
            let Some((old, seq)) = self.order.pop_front() else { break };
            if self.cache.get(&old).is_some_and(|c| c.seq == seq) {
                self.cache.remove(&old);
            }
        }
        self.seq += 1;
        self.order.push_back((key.clone(), self.seq));
        self.cache.insert(key, Cached { top, expires, seq: self.seq });
        // Replaced entries leave their old order slot behind; keep the queue from growing.
        if self.order.len() > 2 * CACHE_CAPACITY {
            let cache = &self.cache;
            self.order.retain(|(k, s)| cache.get(k).is_some_and(|c| c.seq == *s));
        }
    }
}

fn controller(meta: &ObjectMeta) -> Option<OwnerRef> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| OwnerRef { kind: o.kind.clone(), name: o.name.clone() })
}
