//! The field catalogue: every field name a rule may use, in one table.
//!
//! [`FieldId`] is what the agent implements ([`crate::EventView::field`]); [`CATALOGUE`] maps every
//! Falco name (aliases, derived and not-yet-captured fields included) onto those identifiers.
//! A rule that needs a field marked `captured: false` does not compile, and is reported with the
//! field's name. `docs/RULES.md` is checked against this table by a test.

use crate::event::TypeMask;

macro_rules! field_ids {
    ($($(#[$doc:meta])* $id:ident = $name:literal,)*) => {
        /// The fields an event provides. Each is named after the Falco field it carries.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum FieldId {
            $($(#[$doc])* $id,)*
        }

        impl FieldId {
            /// Every identifier.
            pub const ALL: &'static [FieldId] = &[$(FieldId::$id,)*];

            /// The Falco field name.
            pub fn name(self) -> &'static str {
                match self {
                    $(FieldId::$id => $name,)*
                }
            }
        }
    };
}

field_ids! {
    /// `evt.time`: nanoseconds since the Unix epoch.
    EvtTime = "evt.time",
    /// `evt.num`: the agent's per-event sequence number.
    EvtNum = "evt.num",
    /// `evt.res`: `SUCCESS` or the error name (`ECONNREFUSED`, `EINPROGRESS`...).
    EvtRes = "evt.res",
    /// `evt.rawres`: the call's return value (0, or a negative errno).
    EvtRawres = "evt.rawres",
    /// `evt.hostname`: the node name.
    EvtHostname = "evt.hostname",
    /// `proc.pid`.
    ProcPid = "proc.pid",
    /// `proc.name`: the kernel comm (at most 15 characters).
    ProcName = "proc.name",
    /// `proc.exe`: argv[0].
    ProcExe = "proc.exe",
    /// `proc.exepath`: the resolved executable path.
    ProcExepath = "proc.exepath",
    /// `proc.cmdline`: the comm, a space, then argv[1..] joined by spaces.
    ProcCmdline = "proc.cmdline",
    /// `proc.args`: argv[1..] joined by spaces.
    ProcArgs = "proc.args",
    /// `proc.cwd`.
    ProcCwd = "proc.cwd",
    /// `proc.tty`: the controlling terminal's device number, 0 when none.
    ProcTty = "proc.tty",
    /// `proc.sid`: the session id.
    ProcSid = "proc.sid",
    /// `proc.is_exe_upper_layer`: the executable lives in the overlay's writable layer.
    ProcIsExeUpperLayer = "proc.is_exe_upper_layer",
    /// `proc.is_exe_from_memfd`: the executable is a memfd.
    ProcIsExeFromMemfd = "proc.is_exe_from_memfd",
    /// `proc.aname[N]`: ancestor N's comm (N >= 1, 1 = parent).
    ProcAname = "proc.aname",
    /// `proc.apid[N]`: ancestor N's pid.
    ProcApid = "proc.apid",
    /// `proc.aexe[N]`: ancestor N's argv[0].
    ProcAexe = "proc.aexe",
    /// `proc.aexepath[N]`: ancestor N's executable path.
    ProcAexepath = "proc.aexepath",
    /// `proc.acmdline[N]`: ancestor N's `proc.cmdline`.
    ProcAcmdline = "proc.acmdline",
    /// `user.uid`.
    UserUid = "user.uid",
    /// `user.name`.
    UserName = "user.name",
    /// `user.loginuid`: the audit login uid, -1 when unset.
    UserLoginuid = "user.loginuid",
    /// `user.loginname`.
    UserLoginname = "user.loginname",
    /// `group.gid`.
    GroupGid = "group.gid",
    /// `group.name`.
    GroupName = "group.name",
    /// `container.id`: the short (12-character) id, `host` for host processes.
    ContainerId = "container.id",
    /// `container.name`.
    ContainerName = "container.name",
    /// `container.image`: the full image reference.
    ContainerImage = "container.image",
    /// `container.image.repository`.
    ContainerImageRepository = "container.image.repository",
    /// `container.image.tag`.
    ContainerImageTag = "container.image.tag",
    /// `container.image.digest`.
    ContainerImageDigest = "container.image.digest",
    /// `container.privileged`.
    ContainerPrivileged = "container.privileged",
    /// `k8s.ns.name`.
    K8sNsName = "k8s.ns.name",
    /// `k8s.pod.name`.
    K8sPodName = "k8s.pod.name",
    /// `k8s.pod.uid`.
    K8sPodUid = "k8s.pod.uid",
    /// `k8s.pod.labels`: element N (from 0) as `key:value`.
    K8sPodLabels = "k8s.pod.labels",
    /// `k8s.pod.label[key]`: one label's value.
    K8sPodLabel = "k8s.pod.label",
    /// `fd.cip`: the client address.
    FdCip = "fd.cip",
    /// `fd.sip`: the server address.
    FdSip = "fd.sip",
    /// `fd.lip`: the local address.
    FdLip = "fd.lip",
    /// `fd.rip`: the remote address.
    FdRip = "fd.rip",
    /// `fd.cport`: the client port.
    FdCport = "fd.cport",
    /// `fd.sport`: the server port.
    FdSport = "fd.sport",
    /// `fd.lport`: the local port.
    FdLport = "fd.lport",
    /// `fd.rport`: the remote port.
    FdRport = "fd.rport",
    /// `fd.l4proto`: `tcp`, `udp`, `icmp` or `raw`.
    FdL4proto = "fd.l4proto",
    /// `fd.typechar`: `4` (IPv4 socket) or `6` (IPv6 socket).
    FdTypechar = "fd.typechar",
    /// `fd.type`: `ipv4` or `ipv6`.
    FdType = "fd.type",
    /// `fd.name`: the connection tuple `cip:cport->sip:sport`.
    FdName = "fd.name",
    /// `fd.sockfamily`: `ip`.
    FdSockfamily = "fd.sockfamily",
    /// `peregrine.session.id`: Peregrine's session id (the login/exec session the process belongs to).
    PeregrineSessionId = "peregrine.session.id",
    /// `peregrine.net.dest_class`: `loopback`, `link-local`, `imds`, `wireserver`, `pod`,
    /// `service`, `private` or `public`.
    PeregrineNetDestClass = "peregrine.net.dest_class",
    /// `peregrine.net.outcome`: how the connection ended (`success`, `in_progress`, `refused`,
    /// `timeout`, `unreachable`, `error`).
    PeregrineNetOutcome = "peregrine.net.outcome",
    /// `peregrine.net.count`: connections the event stands for (1, or a dedup summary's count).
    PeregrineNetCount = "peregrine.net.count",
    /// `peregrine.net.summary`: the event is a dedup summary of a flow's repeats.
    PeregrineNetSummary = "peregrine.net.summary",
    /// `peregrine.k8s.sa.name`: the pod's service account.
    PeregrineK8sSaName = "peregrine.k8s.sa.name",
    /// `peregrine.k8s.workload.kind`: `Deployment`, `DaemonSet`, `StatefulSet`, `Job`,
    /// `CronJob`, `ReplicaSet` or `Pod`.
    PeregrineK8sWorkloadKind = "peregrine.k8s.workload.kind",
    /// `peregrine.k8s.workload.name`.
    PeregrineK8sWorkloadName = "peregrine.k8s.workload.name",
    /// `peregrine.enrichment`: `complete`, `partial` or `none`.
    PeregrineEnrichment = "peregrine.enrichment",
    /// `peregrine.container.host_pid`: the container shares the host's pid namespace.
    PeregrineContainerHostPid = "peregrine.container.host_pid",
}

/// A field's value type, as rules see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    /// Text.
    Str,
    /// Unsigned integer.
    U64,
    /// Signed integer.
    I64,
    /// `true` / `false`.
    Bool,
    /// IPv4 or IPv6 address.
    Ip,
    /// A port number.
    Port,
    /// An address compared against networks (`fd.net = "10.0.0.0/8"`).
    IpNet,
    /// A list of strings.
    StrList,
}

impl FieldType {
    /// The name used in docs and errors.
    pub fn name(self) -> &'static str {
        match self {
            FieldType::Str => "string",
            FieldType::U64 => "u64",
            FieldType::I64 => "i64",
            FieldType::Bool => "bool",
            FieldType::Ip => "ip",
            FieldType::Port => "port",
            FieldType::IpNet => "ipnet",
            FieldType::StrList => "list of strings",
        }
    }
}

/// How a catalogue name reaches the event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Asked for as is.
    Direct(FieldId),
    /// `proc.aname[N]` and kin. Index 0 is the process itself (`self_field`); no index in a
    /// condition means "any ancestor" (from the parent up), in output the list of all.
    Ancestor {
        /// The ancestor field.
        id: FieldId,
        /// The same value for the process itself.
        self_field: FieldId,
    },
    /// A list read element by element from index 0.
    List(FieldId),
    /// A value under a key: `k8s.pod.label[app]`.
    Keyed(FieldId),
    /// Another field at a fixed ancestor level: `proc.pname` is `proc.aname[1]`.
    Alias(FieldId, u32),
    /// Either of two addresses or ports: `fd.ip` is `fd.cip` or `fd.sip` (`!=`: neither).
    Pair(FieldId, FieldId),
    /// One address compared against networks: `fd.snet` is `fd.sip`.
    Net(FieldId),
    /// Either address against networks: `fd.net`.
    NetPair(FieldId, FieldId),
    /// `evt.type`, read through [`crate::EventView::evt_type`].
    EvtType,
    /// A value that never changes for Peregrine events (`evt.dir` is always `<`).
    Constant(&'static str),
    /// Not captured yet. `arg`: the field takes an argument in brackets; `prefix`: every name
    /// under this one (`evt.arg.flags`) belongs to it.
    NotCaptured {
        /// Takes `[...]`.
        arg: bool,
        /// Covers `name.*`.
        prefix: bool,
    },
}

/// Which events a field can have a value on (Falco's own semantics: an exec has no `fd.*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Events {
    /// Every event type.
    All,
    /// Connection events only (`connect`, `accept`, `listen`).
    Network,
}

impl Events {
    pub(crate) fn mask(self) -> TypeMask {
        match self {
            Events::All => TypeMask::ALL,
            Events::Network => TypeMask::NETWORK,
        }
    }
}

/// One catalogue entry.
#[derive(Clone, Copy, Debug)]
pub struct FieldDef {
    /// The Falco field name.
    pub name: &'static str,
    /// Value type.
    pub ty: FieldType,
    /// How it reaches the event (and whether it does at all).
    pub access: Access,
    /// Event types it may have a value on.
    pub events: Events,
    /// What it means.
    pub meaning: &'static str,
}

impl FieldDef {
    /// Whether Peregrine captures this field (rules using it compile).
    pub fn captured(&self) -> bool {
        !matches!(self.access, Access::NotCaptured { .. })
    }
}

use Access::*;
use Events::{All, Network};
use FieldType::*;

const fn f(
    name: &'static str,
    ty: FieldType,
    access: Access,
    events: Events,
    meaning: &'static str,
) -> FieldDef {
    FieldDef {
        name,
        ty,
        access,
        events,
        meaning,
    }
}

const NC: Access = NotCaptured {
    arg: false,
    prefix: false,
};
const NC_ARG: Access = NotCaptured {
    arg: true,
    prefix: false,
};
const NC_PREFIX: Access = NotCaptured {
    arg: true,
    prefix: true,
};

/// Every field, captured or not.
pub const CATALOGUE: &[FieldDef] = &[
    // evt.*
    f(
        "evt.type",
        Str,
        EvtType,
        All,
        "Event type: `execve`, `connect`, `accept` (`listen` later). Every exec is `execve`, execveat included.",
    ),
    f(
        "evt.dir",
        Str,
        Constant("<"),
        All,
        "Event direction: always `<` (Peregrine reports the exit side of calls).",
    ),
    f(
        "evt.time",
        U64,
        Direct(FieldId::EvtTime),
        All,
        "Event time, nanoseconds since the Unix epoch (Falco prints a clock time; Peregrine the number).",
    ),
    f(
        "evt.rawtime",
        U64,
        Alias(FieldId::EvtTime, 0),
        All,
        "Same as `evt.time`.",
    ),
    f(
        "evt.num",
        U64,
        Direct(FieldId::EvtNum),
        All,
        "The agent's per-event sequence number (never 0).",
    ),
    f(
        "evt.res",
        Str,
        Direct(FieldId::EvtRes),
        All,
        "`SUCCESS` or the error name (`EINPROGRESS`, `ECONNREFUSED`...). Always `SUCCESS` for execs.",
    ),
    f(
        "evt.rawres",
        I64,
        Direct(FieldId::EvtRawres),
        All,
        "Return value: 0 or a negative errno.",
    ),
    f(
        "evt.hostname",
        Str,
        Direct(FieldId::EvtHostname),
        All,
        "The node's name.",
    ),
    f(
        "evt.arg",
        Str,
        NC_PREFIX,
        All,
        "System call arguments (`evt.arg.flags`, `evt.arg[0]`...).",
    ),
    f(
        "evt.rawarg",
        Str,
        NC_PREFIX,
        All,
        "Raw system call arguments.",
    ),
    f(
        "evt.args",
        Str,
        NC,
        All,
        "All system call arguments as text.",
    ),
    f("evt.buffer", Str, NC, All, "I/O buffer contents."),
    f(
        "evt.is_open_read",
        Bool,
        NC,
        All,
        "Open for reading (file events).",
    ),
    f(
        "evt.is_open_write",
        Bool,
        NC,
        All,
        "Open for writing (file events).",
    ),
    f(
        "evt.is_open_exec",
        Bool,
        NC,
        All,
        "Open with exec permission (file events).",
    ),
    f("evt.category", Str, NC, All, "Event category."),
    // proc.*
    f(
        "proc.pid",
        I64,
        Direct(FieldId::ProcPid),
        All,
        "Process id (host pid namespace).",
    ),
    f(
        "proc.ppid",
        I64,
        Alias(FieldId::ProcApid, 1),
        All,
        "Parent process id (same as `proc.apid[1]`).",
    ),
    f(
        "proc.name",
        Str,
        Direct(FieldId::ProcName),
        All,
        "The kernel comm: the executable's file name cut to 15 characters (or what the process set with prctl).",
    ),
    f(
        "proc.exe",
        Str,
        Direct(FieldId::ProcExe),
        All,
        "argv[0], as the caller passed it (`./run.sh`, `bash`, `/usr/bin/curl`).",
    ),
    f(
        "proc.exepath",
        Str,
        Direct(FieldId::ProcExepath),
        All,
        "The executable's resolved path.",
    ),
    f(
        "proc.cmdline",
        Str,
        Direct(FieldId::ProcCmdline),
        All,
        "`proc.name`, a space, then argv[1..] joined by spaces (argv[0] is NOT included).",
    ),
    f(
        "proc.args",
        Str,
        Direct(FieldId::ProcArgs),
        All,
        "argv[1..] joined by spaces (no index form).",
    ),
    f(
        "proc.cwd",
        Str,
        Direct(FieldId::ProcCwd),
        All,
        "Current working directory.",
    ),
    f(
        "proc.tty",
        U64,
        Direct(FieldId::ProcTty),
        All,
        "Controlling terminal device number, 0 when none.",
    ),
    f(
        "proc.sid",
        I64,
        Direct(FieldId::ProcSid),
        All,
        "Session id.",
    ),
    f(
        "proc.is_exe_upper_layer",
        Bool,
        Direct(FieldId::ProcIsExeUpperLayer),
        All,
        "The executable is in the container overlay's writable (upper) layer.",
    ),
    f(
        "proc.is_exe_from_memfd",
        Bool,
        Direct(FieldId::ProcIsExeFromMemfd),
        All,
        "The executable is a memfd (fileless execution).",
    ),
    f(
        "proc.pname",
        Str,
        Alias(FieldId::ProcAname, 1),
        All,
        "Parent's comm (`proc.aname[1]`).",
    ),
    f(
        "proc.pexe",
        Str,
        Alias(FieldId::ProcAexe, 1),
        All,
        "Parent's argv[0] (`proc.aexe[1]`).",
    ),
    f(
        "proc.pexepath",
        Str,
        Alias(FieldId::ProcAexepath, 1),
        All,
        "Parent's executable path (`proc.aexepath[1]`).",
    ),
    f(
        "proc.pcmdline",
        Str,
        Alias(FieldId::ProcAcmdline, 1),
        All,
        "Parent's `proc.cmdline` (`proc.acmdline[1]`).",
    ),
    f(
        "proc.aname",
        Str,
        Ancestor {
            id: FieldId::ProcAname,
            self_field: FieldId::ProcName,
        },
        All,
        "Ancestor N's comm (`[0]` self, `[1]` parent...). Without index: matches if any ancestor (parent and up) matches.",
    ),
    f(
        "proc.apid",
        I64,
        Ancestor {
            id: FieldId::ProcApid,
            self_field: FieldId::ProcPid,
        },
        All,
        "Ancestor N's pid. Without index: any ancestor.",
    ),
    f(
        "proc.aexe",
        Str,
        Ancestor {
            id: FieldId::ProcAexe,
            self_field: FieldId::ProcExe,
        },
        All,
        "Ancestor N's argv[0]. Without index: any ancestor.",
    ),
    f(
        "proc.aexepath",
        Str,
        Ancestor {
            id: FieldId::ProcAexepath,
            self_field: FieldId::ProcExepath,
        },
        All,
        "Ancestor N's executable path. Without index: any ancestor.",
    ),
    f(
        "proc.acmdline",
        Str,
        Ancestor {
            id: FieldId::ProcAcmdline,
            self_field: FieldId::ProcCmdline,
        },
        All,
        "Ancestor N's `proc.cmdline`. Without index: any ancestor.",
    ),
    f("proc.env", Str, NC_ARG, All, "Environment variables."),
    f(
        "proc.aenv",
        Str,
        NC_ARG,
        All,
        "Ancestors' environment variables.",
    ),
    f(
        "proc.vpid",
        I64,
        NC,
        All,
        "Pid in the process's own pid namespace.",
    ),
    f(
        "proc.pvpid",
        I64,
        NC,
        All,
        "Parent pid in the process's own pid namespace.",
    ),
    f("proc.sname", Str, NC, All, "Session leader's comm."),
    f(
        "proc.vpgid",
        I64,
        NC,
        All,
        "Process group id (own namespace).",
    ),
    f(
        "proc.vpgid.name",
        Str,
        NC,
        All,
        "Process group leader's comm.",
    ),
    f(
        "proc.vpgid.exe",
        Str,
        NC,
        All,
        "Process group leader's argv[0].",
    ),
    f(
        "proc.vpgid.exepath",
        Str,
        NC,
        All,
        "Process group leader's executable path.",
    ),
    f(
        "proc.is_vpgid_leader",
        Bool,
        NC,
        All,
        "The process leads its process group.",
    ),
    f(
        "proc.is_sid_leader",
        Bool,
        NC,
        All,
        "The process leads its session.",
    ),
    f(
        "proc.duration",
        U64,
        NC,
        All,
        "Nanoseconds since the process started.",
    ),
    f(
        "proc.ppid.duration",
        U64,
        NC,
        All,
        "Nanoseconds since the parent started.",
    ),
    f("proc.exe_ino", U64, NC, All, "Executable inode number."),
    f(
        "proc.exe_ino.ctime",
        U64,
        NC,
        All,
        "Executable inode change time.",
    ),
    f(
        "proc.exe_ino.mtime",
        U64,
        NC,
        All,
        "Executable inode modification time.",
    ),
    f(
        "proc.exe_ino.ctime_duration_proc_start",
        U64,
        NC,
        All,
        "Executable ctime to process start.",
    ),
    f("proc.aargs", Str, NC_ARG, All, "Ancestors' `proc.args`."),
    f(
        "proc.exeline",
        Str,
        NC,
        All,
        "`proc.exe` then the arguments.",
    ),
    f("proc.cmdnargs", U64, NC, All, "Number of arguments."),
    f(
        "proc.cmdlenargs",
        U64,
        NC,
        All,
        "Total length of the arguments.",
    ),
    f(
        "proc.loginshellid",
        I64,
        NC,
        All,
        "Pid of the oldest shell ancestor.",
    ),
    f(
        "proc.is_exe_writable",
        Bool,
        NC,
        All,
        "The executable is writable by the process's user.",
    ),
    f(
        "proc.is_exe_lower_layer",
        Bool,
        NC,
        All,
        "The executable is in the overlay's lower layer.",
    ),
    f(
        "thread.cap_permitted",
        Str,
        NC,
        All,
        "Permitted capabilities.",
    ),
    f(
        "thread.cap_effective",
        Str,
        NC,
        All,
        "Effective capabilities.",
    ),
    f(
        "thread.cap_inheritable",
        Str,
        NC,
        All,
        "Inheritable capabilities.",
    ),
    f("thread.tid", I64, NC, All, "Thread id."),
    f(
        "thread.vtid",
        I64,
        NC,
        All,
        "Thread id in its own pid namespace.",
    ),
    // user.* / group.*
    f(
        "user.uid",
        U64,
        Direct(FieldId::UserUid),
        All,
        "Real user id.",
    ),
    f(
        "user.name",
        Str,
        Direct(FieldId::UserName),
        All,
        "User name (resolved in the process's own root filesystem when possible).",
    ),
    f(
        "user.loginuid",
        I64,
        Direct(FieldId::UserLoginuid),
        All,
        "Audit login uid, -1 when unset.",
    ),
    f(
        "user.loginname",
        Str,
        Direct(FieldId::UserLoginname),
        All,
        "Name of the login uid.",
    ),
    f("user.homedir", Str, NC, All, "Home directory."),
    f("user.shell", Str, NC, All, "Login shell."),
    f(
        "group.gid",
        U64,
        Direct(FieldId::GroupGid),
        All,
        "Real group id.",
    ),
    f(
        "group.name",
        Str,
        Direct(FieldId::GroupName),
        All,
        "Group name.",
    ),
    // container.*
    f(
        "container.id",
        Str,
        Direct(FieldId::ContainerId),
        All,
        "Short container id (12 characters), `host` for host processes.",
    ),
    f(
        "container.name",
        Str,
        Direct(FieldId::ContainerName),
        All,
        "Container name.",
    ),
    f(
        "container.image",
        Str,
        Direct(FieldId::ContainerImage),
        All,
        "Full image reference.",
    ),
    f(
        "container.image.repository",
        Str,
        Direct(FieldId::ContainerImageRepository),
        All,
        "Image repository (`docker.io/library/nginx`).",
    ),
    f(
        "container.image.tag",
        Str,
        Direct(FieldId::ContainerImageTag),
        All,
        "Image tag.",
    ),
    f(
        "container.image.digest",
        Str,
        Direct(FieldId::ContainerImageDigest),
        All,
        "Image digest.",
    ),
    f(
        "container.privileged",
        Bool,
        Direct(FieldId::ContainerPrivileged),
        All,
        "Privileged container.",
    ),
    f("container.start_ts", U64, NC, All, "Container start time."),
    f("container.mounts", Str, NC, All, "Container mounts."),
    f("container.mount", Str, NC_ARG, All, "One container mount."),
    f(
        "container.mount.dest",
        Str,
        NC_ARG,
        All,
        "A mount by destination.",
    ),
    f(
        "container.mount.source",
        Str,
        NC_ARG,
        All,
        "A mount by source.",
    ),
    f("container.type", Str, NC, All, "Container runtime type."),
    f("container.info", Str, NC, All, "Legacy output placeholder."),
    // k8s.*
    f(
        "k8s.ns.name",
        Str,
        Direct(FieldId::K8sNsName),
        All,
        "Pod namespace.",
    ),
    f(
        "k8s.pod.name",
        Str,
        Direct(FieldId::K8sPodName),
        All,
        "Pod name.",
    ),
    f(
        "k8s.pod.uid",
        Str,
        Direct(FieldId::K8sPodUid),
        All,
        "Pod uid.",
    ),
    f(
        "k8s.pod.labels",
        StrList,
        List(FieldId::K8sPodLabels),
        All,
        "Pod labels, each `key:value`. Operators: `in` (all labels in the set), `intersects` (any), `exists`.",
    ),
    f(
        "k8s.pod.label",
        Str,
        Keyed(FieldId::K8sPodLabel),
        All,
        "One pod label's value: `k8s.pod.label[app]`.",
    ),
    // fd.* (connections)
    f(
        "fd.cip",
        Ip,
        Direct(FieldId::FdCip),
        Network,
        "Client address.",
    ),
    f(
        "fd.sip",
        Ip,
        Direct(FieldId::FdSip),
        Network,
        "Server address.",
    ),
    f(
        "fd.lip",
        Ip,
        Direct(FieldId::FdLip),
        Network,
        "Local address.",
    ),
    f(
        "fd.rip",
        Ip,
        Direct(FieldId::FdRip),
        Network,
        "Remote address.",
    ),
    f(
        "fd.ip",
        Ip,
        Pair(FieldId::FdCip, FieldId::FdSip),
        Network,
        "Client or server address: `=`/`in` match either, `!=` neither.",
    ),
    f(
        "fd.cport",
        Port,
        Direct(FieldId::FdCport),
        Network,
        "Client port.",
    ),
    f(
        "fd.sport",
        Port,
        Direct(FieldId::FdSport),
        Network,
        "Server port.",
    ),
    f(
        "fd.lport",
        Port,
        Direct(FieldId::FdLport),
        Network,
        "Local port.",
    ),
    f(
        "fd.rport",
        Port,
        Direct(FieldId::FdRport),
        Network,
        "Remote port.",
    ),
    f(
        "fd.port",
        Port,
        Pair(FieldId::FdCport, FieldId::FdSport),
        Network,
        "Client or server port: `=`/`in`/`<`... match either, `!=` neither.",
    ),
    f(
        "fd.net",
        IpNet,
        NetPair(FieldId::FdCip, FieldId::FdSip),
        Network,
        "Client or server address in a network (`fd.net = \"10.0.0.0/8\"`); `!=`: neither.",
    ),
    f(
        "fd.cnet",
        IpNet,
        Net(FieldId::FdCip),
        Network,
        "Client address in a network.",
    ),
    f(
        "fd.snet",
        IpNet,
        Net(FieldId::FdSip),
        Network,
        "Server address in a network.",
    ),
    f(
        "fd.lnet",
        IpNet,
        Net(FieldId::FdLip),
        Network,
        "Local address in a network.",
    ),
    f(
        "fd.rnet",
        IpNet,
        Net(FieldId::FdRip),
        Network,
        "Remote address in a network.",
    ),
    f(
        "fd.l4proto",
        Str,
        Direct(FieldId::FdL4proto),
        Network,
        "`tcp`, `udp`, `icmp` or `raw`.",
    ),
    f(
        "fd.typechar",
        Str,
        Direct(FieldId::FdTypechar),
        Network,
        "`4` (IPv4 socket) or `6` (IPv6 socket).",
    ),
    f(
        "fd.type",
        Str,
        Direct(FieldId::FdType),
        Network,
        "`ipv4` or `ipv6`.",
    ),
    f(
        "fd.name",
        Str,
        Direct(FieldId::FdName),
        Network,
        "Connection tuple `cip:cport->sip:sport`. File paths are NOT captured (no file events).",
    ),
    f(
        "fd.sockfamily",
        Str,
        Direct(FieldId::FdSockfamily),
        Network,
        "`ip`.",
    ),
    f(
        "fd.sip.name",
        Str,
        NC,
        Network,
        "DNS name the server address was resolved from.",
    ),
    f(
        "fd.cip.name",
        Str,
        NC,
        Network,
        "DNS name of the client address.",
    ),
    f(
        "fd.lip.name",
        Str,
        NC,
        Network,
        "DNS name of the local address.",
    ),
    f(
        "fd.rip.name",
        Str,
        NC,
        Network,
        "DNS name of the remote address.",
    ),
    f("fd.num", I64, NC, All, "File descriptor number."),
    f("fd.connected", Bool, NC, All, "The socket is connected."),
    f(
        "fd.name_changed",
        Bool,
        NC,
        All,
        "The fd name changed in this event.",
    ),
    f(
        "fd.directory",
        Str,
        NC,
        All,
        "Directory of the file (file events).",
    ),
    f(
        "fd.filename",
        Str,
        NC,
        All,
        "File name without directory (file events).",
    ),
    f(
        "fd.nameraw",
        Str,
        NC,
        All,
        "File name as passed (file events).",
    ),
    f("fd.dev", U64, NC, All, "Device number of the file."),
    f("fd.ino", U64, NC, All, "Inode of the file."),
    // peregrine.* (Peregrine's own)
    f(
        "peregrine.session.id",
        Str,
        Direct(FieldId::PeregrineSessionId),
        All,
        "Peregrine's session id: groups the processes of one login or `kubectl exec` session.",
    ),
    f(
        "peregrine.net.dest_class",
        Str,
        Direct(FieldId::PeregrineNetDestClass),
        Network,
        "Destination class: `loopback`, `link-local`, `imds`, `wireserver`, `pod`, `service`, `private`, `public`.",
    ),
    f(
        "peregrine.net.outcome",
        Str,
        Direct(FieldId::PeregrineNetOutcome),
        Network,
        "Connection outcome: `success`, `in_progress`, `refused`, `timeout`, `unreachable`, `error`.",
    ),
    f(
        "peregrine.net.count",
        U64,
        Direct(FieldId::PeregrineNetCount),
        Network,
        "Connections the event stands for: 1, or for a dedup summary how many more the flow made in the window (`peregrine.net.count > 100`: a burst).",
    ),
    f(
        "peregrine.net.summary",
        Bool,
        Direct(FieldId::PeregrineNetSummary),
        Network,
        "The event is a dedup summary (`network.tcp_dedup_ms`) of repeats of a flow already reported; `peregrine.net.summary = false` keeps a rule to first contacts.",
    ),
    f(
        "peregrine.k8s.sa.name",
        Str,
        Direct(FieldId::PeregrineK8sSaName),
        All,
        "The pod's service account.",
    ),
    f(
        "peregrine.k8s.workload.kind",
        Str,
        Direct(FieldId::PeregrineK8sWorkloadKind),
        All,
        "Owning workload kind (`Deployment`, `DaemonSet`, ...; `Pod` when none).",
    ),
    f(
        "peregrine.k8s.workload.name",
        Str,
        Direct(FieldId::PeregrineK8sWorkloadName),
        All,
        "Owning workload name.",
    ),
    f(
        "peregrine.enrichment",
        Str,
        Direct(FieldId::PeregrineEnrichment),
        All,
        "How much context the agent attached: `complete`, `partial`, `none`.",
    ),
    f(
        "peregrine.container.host_pid",
        Bool,
        Direct(FieldId::PeregrineContainerHostPid),
        All,
        "The container shares the host's pid namespace.",
    ),
];

/// The catalogue entry for a field name as written in a rule (without any `[arg]`).
pub fn lookup(name: &str) -> Option<&'static FieldDef> {
    if let Some(def) = CATALOGUE.iter().find(|d| d.name == name) {
        return Some(def);
    }
    // `evt.arg.flags` belongs to `evt.arg`.
    CATALOGUE.iter().find(|d| {
        matches!(d.access, NotCaptured { prefix: true, .. })
            && name.len() > d.name.len()
            && name.starts_with(d.name)
            && name.as_bytes().get(d.name.len()) == Some(&b'.')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_id_is_reachable_under_its_own_name() {
        for id in FieldId::ALL {
            let def = lookup(id.name()).unwrap_or_else(|| panic!("{} not in catalogue", id.name()));
            let ok = match def.access {
                Direct(d) | List(d) | Keyed(d) => d == *id,
                Ancestor { id: d, .. } => d == *id,
                _ => false,
            };
            assert!(ok, "{} maps elsewhere", id.name());
        }
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in CATALOGUE.iter().enumerate() {
            for b in &CATALOGUE[i + 1..] {
                assert_ne!(a.name, b.name);
            }
        }
    }

    #[test]
    fn prefix_fields_cover_their_children() {
        assert_eq!(lookup("evt.arg.flags").map(|d| d.name), Some("evt.arg"));
        assert!(lookup("evt.argx").is_none());
        assert!(lookup("nope.field").is_none());
    }
}
