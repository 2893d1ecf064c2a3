// Out-structs the C getters fill, mirrored field for field by ebpf/common/src/lib.rs
// (TaskInfo, PathBuf, ForkInfo, ExitInfo). Sizes are asserted on both sides.
#ifndef PEREGRINE_TASK_INFO_H
#define PEREGRINE_TASK_INFO_H

#include <linux/types.h>

#define PEREGRINE_PATH_CAP 1024   // bytes of path components kept; a power of two
#define PEREGRINE_NAME_MAX 256    // longest component read (NAME_MAX + NUL)
#define PEREGRINE_PATH_DEPTH 40   // components walked at most

#define PEREGRINE_PATH_TRUNCATED 1
#define PEREGRINE_PATH_ABSOLUTE 2

struct peregrine_path {
	__u16 len;    // bytes of buf used: NUL-terminated components, leaf first
	__u16 depth;  // components in buf
	__u16 flags;  // PEREGRINE_PATH_*
	__u16 _pad;
	char buf[PEREGRINE_PATH_CAP];
};

struct peregrine_task_info {
	__u64 start_ns;         // process (group leader) start, boot-time ns
	__u64 parent_start_ns;
	__u64 cap_effective;
	__u64 cap_permitted;
	__u32 parent_tgid;
	__u32 vpid;             // pid in the task's own pid namespace
	__u32 uid, gid, euid, egid;
	__u32 loginuid, sessionid;  // (u32)-1 when unset
	__u32 ns_pid, ns_mnt, ns_net, ns_uts, ns_ipc, ns_user, ns_cgroup;
	__u32 tty_nr;
	char tty_name[32];
	struct peregrine_path exe;
	struct peregrine_path cwd;
};

struct peregrine_fork_info {
	__u64 child_start_ns;
	__u64 parent_start_ns;
	__u32 child_tgid;
	__u32 parent_tgid;
	__u32 forker_tgid;
	__u32 _pad;
};

struct peregrine_exit_info {
	__u64 start_ns;
	__u32 tgid;
	__s32 exit_code;  // wait status: exit status << 8 | core flag 0x80 | signal
};

// A socket's endpoints, filled by peregrine_sock_tuple. Ports in host order; addresses in
// network order, IPv4 in the first 4 bytes.
struct peregrine_tuple {
	__u16 family;
	__u16 sport;
	__u16 dport;
	__u16 protocol;
	__s32 error;
	__u32 _pad;
	__u8 saddr[16];
	__u8 daddr[16];
};

_Static_assert(sizeof(struct peregrine_tuple) == 48, "tuple");
_Static_assert(sizeof(struct peregrine_path) == 8 + PEREGRINE_PATH_CAP, "peregrine_path");
_Static_assert(sizeof(struct peregrine_task_info) == 32 + 16 * 4 + 32 + 2 * (8 + PEREGRINE_PATH_CAP), "task_info");
_Static_assert(sizeof(struct peregrine_fork_info) == 32, "fork_info");
_Static_assert(sizeof(struct peregrine_exit_info) == 16, "exit_info");

struct peregrine_file_key {
	__u64 dev;
	__u64 ino;
};
_Static_assert(sizeof(struct peregrine_file_key) == 16, "mirrors peregrine_common::FileKey");

#endif
