//! The pod watch task: kube's watcher (list, then watch from the list's resourceVersion with
//! bookmarks; relist on 410) behind its default backoff, feeding the store.

use std::{
    collections::HashSet,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use tokio_stream::StreamExt;

use super::{
    metrics::reason,
    owner::OwnerResolver,
    store::{PodFacts, Shared},
};

/// Knobs the tests turn; production uses the defaults.
#[derive(Clone, Debug)]
pub(crate) struct Tuning {
    /// Pods per list page (kube's default, as client-go's).
    pub page_size: u32,
    /// How often deleted pods past retention are evicted and failed owner lookups retried.
    pub sweep_interval: Duration,
    /// How long a failed owner lookup is not repeated.
    pub owner_retry: Duration,
}

impl Tuning {
    pub fn for_retention(retention: Duration) -> Self {
        Self {
            page_size: 500,
            sweep_interval: (retention / 4).clamp(Duration::from_millis(20), Duration::from_secs(5)),
            owner_retry: super::owner::FAILED_TTL,
        }
    }
}

/// Pods re-resolved per sweep when their owner lookup had failed: bounds how long one sweep
/// keeps the watch waiting (each lookup is bounded too, and failed owners are cached).
const OWNER_RETRIES_PER_SWEEP: usize = 16;
/// While the same failure repeats, it is logged again at most this often.
const LOG_EVERY: Duration = Duration::from_secs(300);

pub(crate) struct PodWatch {
    pub shared: Arc<Shared>,
    pub resolver: OwnerResolver,
    pub retention: Duration,
    /// UIDs seen since the current list started (None outside a list).
    listing: Option<HashSet<String>>,
    /// Lists completed.
    lists: u64,
}

impl PodWatch {
    pub fn new(shared: Arc<Shared>, resolver: OwnerResolver, retention: Duration) -> Self {
        Self { shared, resolver, retention, listing: None, lists: 0 }
    }

    pub async fn run(mut self, client: Client, node_name: String, tuning: Tuning) {
        let mut wc = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
        // kube's default, set so it stays: without bookmarks a watch on a quiet node resumes from
        // an old resourceVersion after its timeout, gets 410 and lists again — per node, a
        // load on the API server that grows with the cluster.
        wc.bookmarks = true;
        wc.page_size = Some(tuning.page_size);
        let stream = watcher(Api::<Pod>::all(client), wc).default_backoff();
        let mut stream = std::pin::pin!(stream);
        let mut sweep = tokio::time::interval(tuning.sweep_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                item = stream.next() => match item {
                    Some(Ok(event)) => self.on_event(event).await,
                    Some(Err(e)) => self.on_error(&e),
                    None => {
                        // kube's watcher retries forever; an end would be a bug there.
                        tracing::error!("Kubernetes pod watch ended; pod context is frozen");
                        return;
                    }
                },
                _ = sweep.tick() => self.sweep().await,
            }
        }
    }

    async fn on_event(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => self.listing = Some(HashSet::new()),
            watcher::Event::InitApply(pod) => {
                if let Some(uid) = self.apply(&pod).await
                    && let Some(listing) = &mut self.listing
                {
                    listing.insert(uid);
                }
            }
            watcher::Event::InitDone => {
                // Counted when complete: a list that fails is retried from its start, each try
                // an Init of its own.
                if self.lists > 0 {
                    self.shared.metrics.relists.inc();
                }
                self.lists += 1;
                self.shared.finish_list(self.listing.take().as_ref());
                self.healthy();
            }
            watcher::Event::Apply(pod) => {
                self.apply(&pod).await;
                self.healthy();
            }
            watcher::Event::Delete(pod) => {
                self.delete(&pod).await;
                self.healthy();
            }
        }
    }

    fn healthy(&self) {
        if let Some(errors) = self.shared.mark_healthy() {
            log_recovered(errors);
        }
    }

    /// Stores the pod with its top owner; returns its UID.
    async fn apply(&mut self, pod: &Pod) -> Option<String> {
        let facts = PodFacts::from_pod(pod)?;
        let mut meta = facts.meta;
        let mut pending = false;
        if let Some(owner) = &facts.owner {
            let w = self.resolver.resolve(&meta.namespace, owner).await;
            meta.workload_kind = w.kind;
            meta.workload_name = w.name;
            pending = w.pending;
        }
        let uid = meta.uid.clone();
        self.shared.upsert(meta, facts.owner, pending);
        Some(uid)
    }

    async fn delete(&mut self, pod: &Pod) {
        let Some(facts) = PodFacts::from_pod(pod) else { return };
        if self.shared.contains(&facts.meta.uid) {
            self.shared.mark_deleted(facts.meta, facts.owner, false);
            return;
        }
        // Never seen alive (deleted between list and watch): keep it for late events all the same.
        let mut meta = facts.meta;
        if let Some(owner) = &facts.owner {
            let w = self.resolver.resolve(&meta.namespace, owner).await;
            meta.workload_kind = w.kind;
            meta.workload_name = w.name;
        }
        self.shared.mark_deleted(meta, facts.owner, false);
    }

    fn on_error(&mut self, e: &watcher::Error) {
        let why = classify(e);
        self.shared.metrics.watch_error(why);
        if why == reason::GONE {
            // Routine: the watcher lists again. Not synced until it has.
            tracing::debug!(error = %e, "pod watch resourceVersion expired; listing again");
            self.shared.mark_stale();
            return;
        }
        let cause = describe(e);
        if let Some(suppressed) = self.shared.mark_error(why, cause.clone(), LOG_EVERY) {
            tracing::warn!(
                reason = why,
                error = %cause,
                repeats_since_last_log = suppressed,
                "Kubernetes API: pod watch failing; pod context stays as last seen, retrying with backoff"
            );
        }
    }

    async fn sweep(&mut self) {
        let evicted = self.shared.evict(self.retention);
        if evicted > 0 {
            tracing::debug!(evicted, "deleted pods past retention evicted");
        }
        for (uid, owner) in self.shared.owner_pending(OWNER_RETRIES_PER_SWEEP) {
            let Some(namespace) = self.shared.namespace_of(&uid) else { continue };
            let w = self.resolver.resolve(&namespace, &owner).await;
            self.shared.set_workload(&uid, w.kind, w.name, w.pending);
        }
    }
}

fn log_recovered(errors: u64) {
    tracing::info!(errors, "Kubernetes API: pod watch working again");
}

/// The metric reason for a watcher failure.
fn classify(e: &watcher::Error) -> &'static str {
    match e {
        watcher::Error::InitialListFailed(c) | watcher::Error::WatchStartFailed(c) | watcher::Error::WatchFailed(c) => {
            match c {
                kube::Error::Api(status) => by_code(status.code),
                kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
                    reason::UNREACHABLE
                }
                _ => reason::OTHER,
            }
        }
        watcher::Error::WatchError(status) => by_code(status.code),
        _ => reason::OTHER,
    }
}

/// One line naming the step that failed and the root cause: kube's Display of an API error
/// carries the whole Status in Debug form, and of a connection error only its outer layer
/// ("client error (Connect)"), not why.
fn describe(e: &watcher::Error) -> String {
    let (step, client) = match e {
        watcher::Error::InitialListFailed(c) => ("listing pods", c),
        watcher::Error::WatchStartFailed(c) => ("starting the pod watch", c),
        watcher::Error::WatchFailed(c) => ("reading the pod watch", c),
        watcher::Error::WatchError(status) => {
            return format!("pod watch: HTTP {} {}: {}", status.code, status.reason, status.message);
        }
        other => return other.to_string(),
    };
    if let kube::Error::Api(status) = client {
        return format!("{step}: HTTP {} {}: {}", status.code, status.reason, status.message);
    }
    let mut line = format!("{step}: {client}");
    let mut source = std::error::Error::source(client);
    while let Some(s) = source {
        let text = s.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    line
}

fn by_code(code: u16) -> &'static str {
    match code {
        401 => reason::UNAUTHORIZED,
        403 => reason::FORBIDDEN,
        410 => reason::GONE,
        _ => reason::API_ERROR,
    }
}

/// Rate limit for the failure log. A new kind of failure is logged at once, the same one again
/// only after `every`, so neither a steady failure nor a watch that flaps (answers, then fails)
/// logs once per retry. Recovery is logged only after a logged failure; a failure after a
/// watch that had worked for [`STABLE_AFTER`] is news and logged at once.
#[derive(Debug, Default)]
pub(crate) struct ErrorLog {
    reason: Option<&'static str>,
    last_logged: Option<Instant>,
    suppressed: u64,
    logged_since_recovery: bool,
    recovered_at: Option<Instant>,
}

/// A watch that has worked this long is considered recovered for good.
const STABLE_AFTER: Duration = Duration::from_secs(60);

impl ErrorLog {
    /// Some(number of failures not logged since the last line) when this one should be logged.
    pub fn should_log(&mut self, why: &'static str, now: Instant, every: Duration) -> Option<u64> {
        let was_stable = self.recovered_at.take().is_some_and(|r| now.duration_since(r) >= STABLE_AFTER);
        let due =
            was_stable || self.reason != Some(why) || self.last_logged.is_none_or(|t| now.duration_since(t) >= every);
        if due {
            self.reason = Some(why);
            self.last_logged = Some(now);
            self.logged_since_recovery = true;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }

    /// Whether the recovery is to be logged.
    pub fn recovered(&mut self, now: Instant) -> bool {
        self.recovered_at = Some(now);
        std::mem::take(&mut self.logged_since_recovery)
    }
}

/// A tower layer under the kube client that sees each pod watch request and its answer: a
/// watch answered 2xx is the only sign of a recovered watch on a node where no pod changes
/// (kube's watcher does not report bookmarks), and each watch after the first is a restart.
#[derive(Clone)]
pub(crate) struct ObserveLayer {
    shared: Arc<Shared>,
    watches: Arc<AtomicU64>,
}

impl ObserveLayer {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared, watches: Arc::new(AtomicU64::new(0)) }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner, layer: self.clone() }
    }
}

pub(crate) struct Observe<S> {
    inner: S,
    layer: ObserveLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for Observe<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let uri = req.uri();
        let is_watch =
            uri.path().ends_with("/pods") && uri.query().is_some_and(|q| q.split('&').any(|p| p == "watch=true"));
        if is_watch && self.layer.watches.fetch_add(1, Ordering::Relaxed) > 0 {
            self.layer.shared.metrics.watch_restarts.inc();
        }
        let answer = self.inner.call(req);
        let shared = self.layer.shared.clone();
        Box::pin(async move {
            let res = answer.await?;
            if is_watch
                && res.status().is_success()
                && let Some(errors) = shared.mark_healthy()
            {
                log_recovered(errors);
            }
            Ok(res)
        })
    }
}
