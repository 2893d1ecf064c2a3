//! What the running kernel offers, probed once at start and reported in the started status
//! event and as `peregrine_agent_kernel_feature{feature}`: nodes differ (AKS images run 5.15 to
//! 6.8; the Ubuntu FIPS kernel has no BPF ring buffer; this machine has no kprobes), and an
//! operator should see from the SIEM which node sees what.
//!
//! The probes load trivial programs or maps (aya's feature probes) and read kernel interfaces;
//! each answers available, or unavailable with the reason. A probe that cannot tell says so.

use std::path::Path;

use aya::{
    maps::MapType,
    programs::{LsmAttachType, ProgramType},
    sys::{is_map_supported, is_program_supported},
};

/// One probed feature: its name and either "available" or "unavailable: <why>".
pub type Feature = (&'static str, String);

const AVAILABLE: &str = "available";

fn verdict(ok: Result<bool, String>, missing: &str) -> String {
    match ok {
        Ok(true) => AVAILABLE.to_owned(),
        Ok(false) => format!("unavailable: {missing}"),
        Err(e) => format!("unavailable: {e}"),
    }
}

/// Whether a trivial program of type `t` loads. A load refused with an unexpected error (this
/// sandbox answers fentry and LSM loads with EPERM even as root) is unavailable too: what
/// cannot be loaded cannot be used; the error is kept in the verdict.
fn program(t: ProgramType) -> Result<bool, String> {
    match is_program_supported(t) {
        Ok(ok) => Ok(ok),
        Err(e) => {
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                why = format!("{why}: {s}");
                source = s.source();
            }
            Err(format!("the kernel refused the probe program ({why})"))
        }
    }
}

/// Probes every feature the sensor uses or could use, in a fixed order.
pub fn probe(btf_path: &Path) -> Vec<Feature> {
    let ring = is_map_supported(MapType::RingBuf).map_err(|e| e.to_string());
    // Loading an LSM program needs only the type; running it needs `bpf` among the active LSMs.
    let lsm_active = std::fs::read_to_string("/sys/kernel/security/lsm")
        .map(|s| s.split(',').any(|l| l.trim() == "bpf"))
        .map_err(|e| format!("cannot tell whether BPF LSM is active (/sys/kernel/security/lsm: {e})"));
    let lsm = match (program(ProgramType::Lsm(LsmAttachType::Mac)), lsm_active) {
        (Ok(true), Ok(true)) => Ok(true),
        (Ok(true), Ok(false)) => Err("BPF LSM built in but not active (add `bpf` to the lsm= boot parameter)".into()),
        (Ok(false), _) => Ok(false),
        (Err(e), _) | (Ok(true), Err(e)) => Err(e),
    };
    vec![
        ("btf", verdict(Ok(btf_path.is_file()), "no kernel BTF (CONFIG_DEBUG_INFO_BTF)")),
        ("ring_buffer", verdict(ring, "no BPF ring buffer (kernel < 5.8, or a FIPS build without it)")),
        ("tracepoint", verdict(program(ProgramType::TracePoint), "tracepoint programs refused")),
        ("raw_tracepoint", verdict(program(ProgramType::RawTracePoint), "raw tracepoint programs refused")),
        ("cgroup_sock_addr", verdict(program(ProgramType::CgroupSockAddr), "cgroup socket programs refused")),
        (
            "kprobe",
            verdict(
                Ok(Path::new("/sys/bus/event_source/devices/kprobe/type").exists()),
                "no kprobe PMU (CONFIG_KPROBES off)",
            ),
        ),
        ("fentry", verdict(program(ProgramType::Tracing), "BPF trampolines (fentry/fexit) refused")),
        ("lsm", verdict(lsm, "BPF LSM programs refused")),
    ]
}

pub fn is_available(verdict: &str) -> bool {
    verdict == AVAILABLE
}

/// The verdict on the feature `name` among the probed `features` ("not probed" if absent).
pub fn verdict_of<'a>(features: &'a [Feature], name: &str) -> &'a str {
    features.iter().find(|(n, _)| *n == name).map_or("not probed", |(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the test kernel itself: the features the sensor needs are there, and every probe
    /// answers with a verdict of the documented form.
    #[test]
    fn probes_answer_for_every_feature() {
        let features = probe(Path::new("/sys/kernel/btf/vmlinux"));
        let names: Vec<&str> = features.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["btf", "ring_buffer", "tracepoint", "raw_tracepoint", "cgroup_sock_addr", "kprobe", "fentry", "lsm"]);
        for (name, v) in &features {
            assert!(v == AVAILABLE || v.starts_with("unavailable: "), "{name}: {v}");
        }
        // Cross-checked with the kernel's own interface, independently of the probe.
        let kprobe_pmu = Path::new("/sys/bus/event_source/devices/kprobe").exists();
        assert_eq!(is_available(&features[5].1), kprobe_pmu, "{:?}", features[5]);
        for needed in &features[..5] {
            assert!(is_available(&needed.1), "the sensor's own hooks need {needed:?}");
        }
    }
}
