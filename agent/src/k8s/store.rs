//! The pod store: this node's pods by UID, what the watch task writes and the pipeline reads.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Container, Pod, Probe};

use super::{metrics::K8sMetrics, watch::ErrorLog};

/// What the agent keeps of one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodMeta {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// The top owner: Deployment (through its ReplicaSet), CronJob (through its Job),
    /// DaemonSet, StatefulSet, ... — "Pod" and the pod's name when it has no controller.
    pub workload_kind: String,
    pub workload_name: String,
    /// Containers, init containers and ephemeral (debug) containers.
    pub containers: Vec<ContainerMeta>,
    /// Deleted from the API; kept for `deleted_retention_ms` so late events still resolve.
    pub deleted: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerMeta {
    pub name: String,
    pub image: String,
    /// The `exec.command` of the liveness, readiness and startup probes that have one: what the
    /// kubelet runs in the container, so its execs can be told from a person's.
    pub probe_commands: Vec<Vec<String>>,
}

/// The owner a pod names as its controller (before resolving it to the top).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct OwnerRef {
    pub kind: String,
    pub name: String,
}

/// The pod as read from the API, before its owner is resolved.
pub(crate) struct PodFacts {
    pub meta: PodMeta,
    pub owner: Option<OwnerRef>,
}

impl PodFacts {
    /// None for an object without uid, name or namespace (not a pod the API server would send).
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let md = &pod.metadata;
        let uid = md.uid.clone().filter(|s| !s.is_empty())?;
        let name = md.name.clone().filter(|s| !s.is_empty())?;
        let namespace = md.namespace.clone().filter(|s| !s.is_empty())?;
        let owner = md
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| OwnerRef { kind: o.kind.clone(), name: o.name.clone() });
        let spec = pod.spec.as_ref();
        let mut containers = Vec::new();
        if let Some(spec) = spec {
            for c in spec.init_containers.iter().flatten().chain(spec.containers.iter()) {
                containers.push(container_meta(c));
            }
            for c in spec.ephemeral_containers.iter().flatten() {
                let probes = [&c.liveness_probe, &c.readiness_probe, &c.startup_probe];
                containers.push(ContainerMeta {
                    name: c.name.clone(),
                    image: c.image.clone().unwrap_or_default(),
                    probe_commands: probes.into_iter().filter_map(exec_command).collect(),
                });
            }
        }
        let service_account =
            spec.and_then(|s| s.service_account_name.clone().or_else(|| s.service_account.clone())).unwrap_or_default();
        Some(Self {
            meta: PodMeta {
                uid,
                workload_kind: "Pod".to_owned(),
                workload_name: name.clone(),
                name,
                namespace,
                labels: md.labels.clone().unwrap_or_default(),
                service_account,
                containers,
                deleted: false,
            },
            owner,
        })
    }
}

fn container_meta(c: &Container) -> ContainerMeta {
    let probes = [&c.liveness_probe, &c.readiness_probe, &c.startup_probe];
    ContainerMeta {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        probe_commands: probes.into_iter().filter_map(exec_command).collect(),
    }
}

fn exec_command(probe: &Option<Probe>) -> Option<Vec<String>> {
    probe.as_ref()?.exec.as_ref()?.command.clone().filter(|c| !c.is_empty())
}

pub(crate) struct Entry {
    pub meta: Arc<PodMeta>,
    pub owner: Option<OwnerRef>,
    /// The owner could not be looked up: `meta` names the immediate owner, retried later.
    pub owner_pending: bool,
    pub deleted_at: Option<Instant>,
}

/// Whether the store is current, and the last failure talking to the API server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))] // read by the tests
pub struct K8sState {
    /// A full list has completed and the watch has not failed since.
    pub synced: bool,
    /// A full list has completed at least once (the store holds data, maybe stale).
    pub listed: bool,
    pub pods: usize,
    /// The most recent failure, kept after recovery (`synced` says whether it is current).
    pub last_error: Option<String>,
    /// Failures since the last recovery.
    pub errors_since_recovery: u64,
}

#[derive(Default)]
struct Status {
    last_error: Option<String>,
    errors: u64,
    log: ErrorLog,
}

pub(crate) struct Shared {
    pods: RwLock<HashMap<String, Entry>>,
    listed: AtomicBool,
    healthy: AtomicBool,
    status: Mutex<Status>,
    pub metrics: K8sMetrics,
}

/// This node's pods by UID. Cheap to clone; reads take a std `RwLock` that writers hold only
/// for map updates, never across I/O.
#[derive(Clone)]
pub struct PodStore {
    pub(crate) shared: Arc<Shared>,
}

impl PodStore {
    pub(crate) fn new(metrics: K8sMetrics) -> Self {
        Self {
            shared: Arc::new(Shared {
                pods: RwLock::new(HashMap::new()),
                listed: AtomicBool::new(false),
                healthy: AtomicBool::new(false),
                status: Mutex::new(Status::default()),
                metrics,
            }),
        }
    }

    /// The pod with this UID (also a deleted one, within its retention).
    pub fn get(&self, pod_uid: &str) -> Option<Arc<PodMeta>> {
        self.shared.read().get(pod_uid).map(|e| e.meta.clone())
    }

    /// A full list has completed and the watch has not failed since.
    #[cfg_attr(not(test), allow(dead_code))] // read by the tests
    pub fn synced(&self) -> bool {
        self.shared.listed.load(Ordering::Acquire) && self.shared.healthy.load(Ordering::Acquire)
    }

    #[cfg_attr(not(test), allow(dead_code))] // read by the tests
    pub fn state(&self) -> K8sState {
        let status = self.shared.status();
        K8sState {
            synced: self.synced(),
            listed: self.shared.listed.load(Ordering::Acquire),
            pods: self.shared.read().len(),
            last_error: status.last_error.clone(),
            errors_since_recovery: status.errors,
        }
    }
}

impl Shared {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Entry>> {
        // A panic elsewhere while writing leaves a consistent map (each write is one insert or
        // remove), so a poisoned lock is still good to read.
        self.pods.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Entry>> {
        self.pods.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish_counts(&self, pods: usize) {
        self.metrics.pods.set(i64::try_from(pods).unwrap_or(i64::MAX));
    }

    fn publish_synced(&self) {
        let synced = self.listed.load(Ordering::Acquire) && self.healthy.load(Ordering::Acquire);
        self.metrics.synced.set(i64::from(synced));
    }

    pub fn upsert(&self, meta: PodMeta, owner: Option<OwnerRef>, owner_pending: bool) {
        let mut pods = self.write();
        let deleted_at = meta.deleted.then(Instant::now);
        pods.insert(meta.uid.clone(), Entry { meta: Arc::new(meta), owner, owner_pending, deleted_at });
        self.publish_counts(pods.len());
    }

    /// Marks a pod deleted (inserting it when it was never seen, so late events resolve).
    pub fn mark_deleted(&self, meta: PodMeta, owner: Option<OwnerRef>, owner_pending: bool) {
        let mut pods = self.write();
        let now = Instant::now();
        match pods.get_mut(&meta.uid) {
            Some(e) if e.deleted_at.is_some() => {}
            Some(e) => {
                let mut m = (*e.meta).clone();
                m.deleted = true;
                e.meta = Arc::new(m);
                e.deleted_at = Some(now);
            }
            None => {
                let uid = meta.uid.clone();
                let meta = PodMeta { deleted: true, ..meta };
                pods.insert(uid, Entry { meta: Arc::new(meta), owner, owner_pending, deleted_at: Some(now) });
            }
        }
        self.publish_counts(pods.len());
    }

    /// After a full list: pods the store has that the list did not are gone (deleted while the
    /// watch was away). None (a list whose start was not seen) deletes nothing.
    pub fn finish_list(&self, listed: Option<&HashSet<String>>) {
        let mut pods = self.write();
        let now = Instant::now();
        for (uid, e) in pods.iter_mut() {
            if e.deleted_at.is_none() && listed.is_some_and(|l| !l.contains(uid)) {
                let mut m = (*e.meta).clone();
                m.deleted = true;
                e.meta = Arc::new(m);
                e.deleted_at = Some(now);
            }
        }
        self.publish_counts(pods.len());
        drop(pods);
        self.listed.store(true, Ordering::Release);
        self.publish_synced();
    }

    /// Drops deleted pods older than `retention`; returns how many.
    pub fn evict(&self, retention: Duration) -> usize {
        let mut pods = self.write();
        let before = pods.len();
        pods.retain(|_, e| e.deleted_at.is_none_or(|t| t.elapsed() < retention));
        self.publish_counts(pods.len());
        before - pods.len()
    }

    /// Pods whose owner lookup failed, at most `max`.
    pub fn owner_pending(&self, max: usize) -> Vec<(String, OwnerRef)> {
        self.read()
            .iter()
            .filter(|(_, e)| e.owner_pending && e.deleted_at.is_none())
            .filter_map(|(uid, e)| Some((uid.clone(), e.owner.clone()?)))
            .take(max)
            .collect()
    }

    /// Sets a pod's resolved workload, if it is still there.
    pub fn set_workload(&self, uid: &str, kind: String, name: String, pending: bool) {
        let mut pods = self.write();
        if let Some(e) = pods.get_mut(uid) {
            if e.meta.workload_kind != kind || e.meta.workload_name != name {
                let mut m = (*e.meta).clone();
                m.workload_kind = kind;
                m.workload_name = name;
                e.meta = Arc::new(m);
            }
            e.owner_pending = pending;
        }
    }

    pub fn contains(&self, uid: &str) -> bool {
        self.read().contains_key(uid)
    }

    pub fn namespace_of(&self, uid: &str) -> Option<String> {
        self.read().get(uid).map(|e| e.meta.namespace.clone())
    }

    /// Evidence the watch works (an event, or a watch request answered 2xx).
    /// Some(errors since the last recovery) when this recovery is to be logged.
    pub fn mark_healthy(&self) -> Option<u64> {
        if self.healthy.swap(true, Ordering::AcqRel) {
            return None;
        }
        self.publish_synced();
        let mut status = self.status();
        let errors = std::mem::take(&mut status.errors);
        status.log.recovered(Instant::now()).then_some(errors)
    }

    /// Not current until the next full list (resourceVersion expired), without an error.
    pub fn mark_stale(&self) {
        self.healthy.store(false, Ordering::Release);
        self.publish_synced();
    }

    /// Records a failure; Some(failures not logged since the last line) when it is to be
    /// logged now (see [`ErrorLog`]).
    pub fn mark_error(&self, why: &'static str, message: String, log_every: Duration) -> Option<u64> {
        self.healthy.store(false, Ordering::Release);
        self.publish_synced();
        let mut status = self.status();
        status.last_error = Some(message);
        status.errors += 1;
        status.log.should_log(why, Instant::now(), log_every)
    }
}
