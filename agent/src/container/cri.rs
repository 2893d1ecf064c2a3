//! The container runtime's view of a container, over the kubelet's CRI API (containerd,
//! CRI-O): pod identity, image, labels and the security context actually applied.
//!
//! CRI needs no API server, so this works on a node whose API server is unreachable. The
//! verbose `ContainerStatus`/`PodSandboxStatus` answers carry the runtime's OCI spec and the
//! kubelet's request as JSON (containerd: `info["info"]`); the security context is read from
//! the spec where it is ground truth (namespaces, capabilities, mounts) and from the request
//! where only it knows (privileged, added capabilities).

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    ContainerStatusRequest, PodSandboxStatusRequest, VersionRequest, runtime_service_client::RuntimeServiceClient,
};
use serde_json::Value;
use tonic::transport::{Channel, Endpoint, Uri};

/// What the runtime says about one container (or pod sandbox).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeMeta {
    pub id: String,
    pub name: String,
    pub runtime: String,
    pub image: String,
    pub image_digest: String,
    pub labels: BTreeMap<String, String>,
    pub sandbox: bool,
    pub pod: Option<PodMeta>,
    pub security: Security,
    /// The container's first process on the host, when the runtime says.
    pub pid: u32,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodMeta {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Security {
    pub privileged: bool,
    pub host_pid: bool,
    pub host_network: bool,
    pub host_ipc: bool,
    pub capabilities_added: Vec<String>,
    pub host_path_mounts: Vec<String>,
    pub run_as_user: Option<i64>,
    pub read_only_root: bool,
    pub allow_privilege_escalation: bool,
    pub capabilities_effective: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("the runtime does not know {0} (yet)")]
    NotFound(String),
    #[error("CRI call {call} timed out after {timeout:?} (socket {socket})")]
    Timeout { call: &'static str, timeout: Duration, socket: PathBuf },
    #[error("CRI call {call} failed on {socket}: {status}")]
    Call { call: &'static str, socket: PathBuf, status: String },
    #[error("CRI socket {0}: {1}")]
    Connect(PathBuf, String),
}

/// A CRI client on one runtime socket. Cheap to clone; the connection is made lazily and
/// re-made by tonic after a runtime restart.
#[derive(Clone)]
pub struct CriClient {
    socket: PathBuf,
    client: RuntimeServiceClient<Channel>,
    timeout: Duration,
    runtime: String,
}

impl CriClient {
    pub fn new(socket: PathBuf, timeout: Duration) -> Result<Self, CriError> {
        let path = socket.clone();
        // The URI is required by tonic and ignored by the connector.
        let channel = Endpoint::try_from("http://[::1]:0")
            .map_err(|e| CriError::Connect(socket.clone(), e.to_string()))?
            .connect_timeout(timeout)
            .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
            }));
        Ok(Self { socket, client: RuntimeServiceClient::new(channel), timeout, runtime: String::new() })
    }

    /// Asks the runtime its name ("containerd", "cri-o"), which later answers are tagged with.
    pub async fn version(&mut self) -> Result<String, CriError> {
        let mut client = self.client.clone();
        let request = VersionRequest { version: "v1".into() };
        let answer = self.call("Version", client.version(request)).await?;
        self.runtime = match answer.runtime_name.as_str() {
            "cri-o" | "crio" => "cri-o".into(),
            other => other.to_owned(),
        };
        Ok(format!("{} {}", answer.runtime_name, answer.runtime_version))
    }

    async fn call<T>(
        &self,
        call: &'static str,
        fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, CriError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(CriError::Timeout { call, timeout: self.timeout, socket: self.socket.clone() }),
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => Err(CriError::NotFound(status.message().to_owned())),
            Ok(Err(status)) => Err(CriError::Call { call, socket: self.socket.clone(), status: status.to_string() }),
            Ok(Ok(r)) => Ok(r.into_inner()),
        }
    }

    /// Looks `id` up as a container, then as a pod sandbox.
    pub async fn lookup(&self, id: &str) -> Result<RuntimeMeta, CriError> {
        match self.container(id).await {
            Err(CriError::NotFound(_)) => self.sandbox(id).await,
            other => other,
        }
    }

    async fn container(&self, id: &str) -> Result<RuntimeMeta, CriError> {
        let mut client = self.client.clone();
        let request = ContainerStatusRequest { container_id: id.to_owned(), verbose: true };
        let answer = self.call("ContainerStatus", client.container_status(request)).await?;
        let status = answer.status.unwrap_or_default();
        let info = info_json(&answer.info);
        let mut meta = RuntimeMeta {
            id: status.id,
            name: status.metadata.map(|m| m.name).unwrap_or_default(),
            runtime: self.runtime.clone(),
            image: status.image.map(|i| i.image).unwrap_or_default(),
            image_digest: status.image_ref,
            labels: status.labels.into_iter().collect(),
            sandbox: false,
            pod: None,
            security: security(&info),
            pid: pid(&info),
        };
        if let Some(sandbox_id) = info.get("sandboxID").and_then(Value::as_str) {
            // A failure here leaves the pod to the kubelet's labels on the container.
            if let Ok(sandbox) = self.sandbox(sandbox_id).await {
                meta.pod = sandbox.pod;
                // Namespaces are the pod's: a container cannot leave them.
                meta.security.host_pid |= sandbox.security.host_pid;
                meta.security.host_network |= sandbox.security.host_network;
                meta.security.host_ipc |= sandbox.security.host_ipc;
            }
        }
        if meta.pod.is_none() {
            meta.pod = pod_from_labels(&meta.labels);
        }
        Ok(meta)
    }

    async fn sandbox(&self, id: &str) -> Result<RuntimeMeta, CriError> {
        let mut client = self.client.clone();
        let request = PodSandboxStatusRequest { pod_sandbox_id: id.to_owned(), verbose: true };
        let answer = self.call("PodSandboxStatus", client.pod_sandbox_status(request)).await?;
        let status = answer.status.unwrap_or_default();
        let info = info_json(&answer.info);
        let metadata = status.metadata.unwrap_or_default();
        let mut security = security(&info);
        if let Some(options) = status.linux.and_then(|l| l.namespaces).and_then(|n| n.options) {
            // NamespaceMode NODE = 2.
            security.host_network |= options.network == 2;
            security.host_pid |= options.pid == 2;
            security.host_ipc |= options.ipc == 2;
        }
        let labels: BTreeMap<String, String> = status.labels.into_iter().collect();
        Ok(RuntimeMeta {
            id: status.id,
            name: metadata.name.clone(),
            runtime: self.runtime.clone(),
            image: info.get("image").and_then(Value::as_str).unwrap_or_default().to_owned(),
            image_digest: String::new(),
            labels: labels.clone(),
            sandbox: true,
            pod: Some(PodMeta { name: metadata.name, namespace: metadata.namespace, uid: metadata.uid, labels }),
            security,
            pid: pid(&info),
        })
    }
}

/// containerd and CRI-O put their verbose answer, JSON, under "info".
fn info_json(info: &std::collections::HashMap<String, String>) -> Value {
    info.get("info").and_then(|s| serde_json::from_str(s).ok()).unwrap_or(Value::Null)
}

fn pid(info: &Value) -> u32 {
    info.get("pid").and_then(Value::as_u64).and_then(|p| u32::try_from(p).ok()).unwrap_or(0)
}

/// kubelet labels every container with its pod; enough when the sandbox cannot be asked.
fn pod_from_labels(labels: &BTreeMap<String, String>) -> Option<PodMeta> {
    let get = |k: &str| labels.get(k).cloned();
    Some(PodMeta {
        name: get("io.kubernetes.pod.name")?,
        namespace: get("io.kubernetes.pod.namespace").unwrap_or_default(),
        uid: get("io.kubernetes.pod.uid").unwrap_or_default(),
        labels: BTreeMap::new(),
    })
}

/// The security context from a verbose answer: `config` is the kubelet's CRI request,
/// `runtimeSpec` the OCI spec the runtime handed to runc.
fn security(info: &Value) -> Security {
    let config_sc = info.pointer("/config/linux/security_context").unwrap_or(&Value::Null);
    let spec = info.get("runtimeSpec").unwrap_or(&Value::Null);
    let namespaces: Vec<&str> = spec
        .pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|n| n.get("type").and_then(Value::as_str)).collect())
        .unwrap_or_default();
    // Without a spec there is no saying which namespaces are the host's.
    let has_spec = spec.is_object();
    let host = |ns: &str| has_spec && !namespaces.contains(&ns);
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array).map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default()
    };
    let effective = strings(spec.pointer("/process/capabilities/effective"));
    let host_path_mounts = info
        .pointer("/config/mounts")
        .and_then(Value::as_array)
        .map(|mounts| {
            mounts
                .iter()
                .filter_map(|m| m.get("host_path").and_then(Value::as_str))
                // The kubelet's own pod volumes (secrets, config maps, emptyDir, token).
                .filter(|p| !p.starts_with("/var/lib/kubelet/pods/"))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Security {
        // CRI-O reports "privileged" at the top of its info.
        privileged: config_sc.get("privileged").and_then(Value::as_bool).unwrap_or(false)
            || info.get("privileged").and_then(Value::as_bool).unwrap_or(false),
        host_pid: host("pid"),
        host_network: host("network"),
        host_ipc: host("ipc"),
        capabilities_added: strings(config_sc.pointer("/capabilities/add_capabilities")),
        host_path_mounts,
        run_as_user: config_sc
            .pointer("/run_as_user/value")
            .and_then(Value::as_i64)
            .or_else(|| spec.pointer("/process/user/uid").and_then(Value::as_i64)),
        read_only_root: spec.pointer("/root/readonly").and_then(Value::as_bool).unwrap_or(false),
        allow_privilege_escalation: has_spec
            && !spec.pointer("/process/noNewPrivileges").and_then(Value::as_bool).unwrap_or(false),
        capabilities_effective: effective.iter().filter_map(|c| capability_bit(c)).fold(0, |acc, bit| acc | (1 << bit)),
    }
}

/// Linux capability names (include/uapi/linux/capability.h), in bit order.
const CAPABILITIES: [&str; 41] = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
    "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
    "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
    "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
    "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
    "CHECKPOINT_RESTORE",
];

fn capability_bit(name: &str) -> Option<u32> {
    let bare = name.strip_prefix("CAP_").unwrap_or(name);
    CAPABILITIES.iter().position(|c| c.eq_ignore_ascii_case(bare)).and_then(|i| u32::try_from(i).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shape of containerd 1.6's verbose ContainerStatus info (trimmed from a real answer).
    fn containerd_info(privileged: bool, namespaces: &[&str]) -> Value {
        let ns: Vec<Value> = namespaces.iter().map(|t| serde_json::json!({"type": t})).collect();
        serde_json::json!({
            "sandboxID": "d0bd",
            "pid": 4711,
            "config": {
                "metadata": {"name": "web"},
                "linux": {"security_context": {
                    "privileged": privileged,
                    "capabilities": {"add_capabilities": ["NET_ADMIN"]},
                    "run_as_user": {"value": 1000}
                }},
                "mounts": [
                    {"container_path": "/host", "host_path": "/etc"},
                    {"container_path": "/var/run/secrets", "host_path": "/var/lib/kubelet/pods/u/volumes/x"}
                ]
            },
            "runtimeSpec": {
                "process": {"noNewPrivileges": true, "user": {"uid": 1000},
                            "capabilities": {"effective": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_ADMIN", "CAP_BOGUS"]}},
                "root": {"readonly": true},
                "linux": {"namespaces": ns}
            }
        })
    }

    #[test]
    fn security_context_from_a_containerd_answer() {
        let s = security(&containerd_info(false, &["pid", "ipc", "uts", "mount", "network"]));
        assert_eq!(
            s,
            Security {
                privileged: false,
                host_pid: false,
                host_network: false,
                host_ipc: false,
                capabilities_added: vec!["NET_ADMIN".into()],
                host_path_mounts: vec!["/etc".into()],
                run_as_user: Some(1000),
                read_only_root: true,
                allow_privilege_escalation: false,
                capabilities_effective: (1 << 0) | (1 << 5) | (1 << 12),
            }
        );
        let s = security(&containerd_info(true, &["ipc", "uts", "mount"]));
        assert!(s.privileged && s.host_pid && s.host_network && !s.host_ipc);
        assert_eq!(pid(&containerd_info(true, &[])), 4711);
    }

    #[test]
    fn nothing_is_inferred_without_a_spec() {
        let s = security(&Value::Null);
        assert_eq!(s, Security::default());
        // Garbage in the info map is not an error, just no information.
        let mut info = std::collections::HashMap::new();
        info.insert("info".to_owned(), "{not json".to_owned());
        assert_eq!(info_json(&info), Value::Null);
    }

    #[test]
    fn capability_names() {
        assert_eq!(capability_bit("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(capability_bit("sys_resource"), Some(24));
        assert_eq!(capability_bit("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(capability_bit("CAP_NOPE"), None);
    }

    #[test]
    fn pod_from_kubelet_labels() {
        let labels: BTreeMap<String, String> = [
            ("io.kubernetes.pod.name", "web-1"),
            ("io.kubernetes.pod.namespace", "shop"),
            ("io.kubernetes.pod.uid", "u-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let pod = pod_from_labels(&labels).unwrap_or_default();
        assert_eq!((pod.name.as_str(), pod.namespace.as_str(), pod.uid.as_str()), ("web-1", "shop", "u-1"));
        assert_eq!(pod_from_labels(&BTreeMap::new()), None);
    }
}
