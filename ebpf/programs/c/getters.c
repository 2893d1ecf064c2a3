// Kernel struct reads for Peregrine's programs, compiled by clang with CO-RE relocations.
//
// rustc cannot emit BTF field relocations, so every read of a kernel struct lives here: clang
// records each field access as a relocation, bpf-linker links this bitcode into the Rust object,
// and aya rewrites the offsets against the running kernel's BTF at load time. Declare only the
// fields read, with preserve_access_index; never hard-code an offset.
//
// The out-structs are declared in task_info.h, mirrored by ebpf/common (size-checked on both
// sides).

#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "task_info.h"

struct qstr {
	union {
		struct {
			__u32 hash;
			__u32 len;
		};
		__u64 hash_len;
	};
	const unsigned char *name;
} __attribute__((preserve_access_index));

struct dentry {
	struct dentry *d_parent;
	struct qstr d_name;
} __attribute__((preserve_access_index));

struct vfsmount {
	struct dentry *mnt_root;
} __attribute__((preserve_access_index));

// fs/mount.h: the vfsmount is embedded; walking across mounts needs the container.
struct mount {
	struct mount *mnt_parent;
	struct dentry *mnt_mountpoint;
	struct vfsmount mnt;
} __attribute__((preserve_access_index));

struct path {
	struct vfsmount *mnt;
	struct dentry *dentry;
} __attribute__((preserve_access_index));

struct super_block {
	__u32 s_dev;
} __attribute__((preserve_access_index));

struct inode {
	unsigned long i_ino;
	struct super_block *i_sb;
} __attribute__((preserve_access_index));

struct file {
	struct path f_path;
	struct inode *f_inode;
} __attribute__((preserve_access_index));

struct linux_binprm {
	struct file *file;
	const char *filename;
} __attribute__((preserve_access_index));

struct fs_struct {
	struct path root;
	struct path pwd;
} __attribute__((preserve_access_index));

struct mm_struct {
	unsigned long arg_start;
	unsigned long arg_end;
	struct file *exe_file;
} __attribute__((preserve_access_index));

struct ns_common {
	unsigned int inum;
} __attribute__((preserve_access_index));

struct uts_namespace { struct ns_common ns; } __attribute__((preserve_access_index));
struct ipc_namespace { struct ns_common ns; } __attribute__((preserve_access_index));
struct mnt_namespace { struct ns_common ns; } __attribute__((preserve_access_index));
struct net { struct ns_common ns; } __attribute__((preserve_access_index));
struct cgroup_namespace { struct ns_common ns; } __attribute__((preserve_access_index));
struct user_namespace { struct ns_common ns; } __attribute__((preserve_access_index));
struct pid_namespace { struct ns_common ns; } __attribute__((preserve_access_index));

struct nsproxy {
	struct uts_namespace *uts_ns;
	struct ipc_namespace *ipc_ns;
	struct mnt_namespace *mnt_ns;
	struct net *net_ns;
	struct cgroup_namespace *cgroup_ns;
} __attribute__((preserve_access_index));

struct upid {
	int nr;
	struct pid_namespace *ns;
} __attribute__((preserve_access_index));

struct pid {
	unsigned int level;
	struct upid numbers[1];
} __attribute__((preserve_access_index));

// kernel_cap_t is `struct { u64 val; }` since 6.3 and `struct { u32 cap[2]; }` before: both
// are 8 little-endian bytes at the field's offset, which is all that is read.
typedef struct { __u64 val; } peregrine_cap_t;

typedef struct { __u32 val; } peregrine_kuid_t;

struct cred {
	peregrine_kuid_t uid;
	peregrine_kuid_t gid;
	peregrine_kuid_t euid;
	peregrine_kuid_t egid;
	peregrine_cap_t cap_permitted;
	peregrine_cap_t cap_effective;
	struct user_namespace *user_ns;
} __attribute__((preserve_access_index));

struct tty_driver {
	int major;
	int minor_start;
} __attribute__((preserve_access_index));

struct tty_struct {
	struct tty_driver *driver;
	int index;
	char name[64];
} __attribute__((preserve_access_index));

typedef struct { int counter; } peregrine_atomic_t;

struct signal_struct {
	peregrine_atomic_t live;
	struct tty_struct *tty;
	int group_exit_code;
} __attribute__((preserve_access_index));

struct task_struct {
	int pid;
	int tgid;
	int exit_code;
	__u64 start_boottime;
	struct task_struct *real_parent;
	struct task_struct *group_leader;
	struct mm_struct *mm;
	struct fs_struct *fs;
	struct nsproxy *nsproxy;
	struct pid *thread_pid;
	struct cred *cred;
	struct signal_struct *signal;
	peregrine_kuid_t loginuid;
	unsigned int sessionid;
} __attribute__((preserve_access_index));

static __always_inline struct task_struct *current_task(void)
{
	return (struct task_struct *)bpf_get_current_task();
}

// Start of the process (its thread group leader), in boot-time ns: with the tgid, the key that
// tells a process from a later one that reuses its pid. /proc/<pid>/stat's starttime is the
// same value in clock ticks.
static __always_inline __u64 process_start(struct task_struct *task)
{
	return BPF_CORE_READ(task, group_leader, start_boottime);
}

// tgid of the current task's real parent (the process that forked it, not a ptracer).
int peregrine_current_parent_tgid(void)
{
	return BPF_CORE_READ(current_task(), real_parent, tgid);
}

// Bounds of the current task's argument area (NUL-separated argv in user memory).
// At sched_process_exec this is the new image's area, freshly written by the kernel.
// Returns 0, or -1 when the task has no mm (kernel threads).
int peregrine_current_arg_area(__u64 *start, __u64 *end)
{
	struct mm_struct *mm = BPF_CORE_READ(current_task(), mm);
	if (!mm)
		return -1;
	*start = BPF_CORE_READ(mm, arg_start);
	*end = BPF_CORE_READ(mm, arg_end);
	return 0;
}

// Walks `path` up to the process root `root`, crossing mount points, writing the components
// leaf first, each NUL-terminated ("bin\0usr\0"): user space reverses them. Bounded in depth
// and bytes; sets PEREGRINE_PATH_TRUNCATED when either bound was hit, PEREGRINE_PATH_ABSOLUTE
// when the walk ended at the root.
static __always_inline void walk_path(struct path *path, struct path *root, struct peregrine_path *out)
{
	struct dentry *dentry = BPF_CORE_READ(path, dentry);
	struct vfsmount *vfsmnt = BPF_CORE_READ(path, mnt);
	struct dentry *root_dentry = BPF_CORE_READ(root, dentry);
	struct vfsmount *root_mnt = BPF_CORE_READ(root, mnt);
	struct mount *mnt = (struct mount *)((char *)vfsmnt - bpf_core_field_offset(struct mount, mnt));
	__u32 off = 0;
	__u16 flags = 0;

	out->len = 0;
	out->depth = 0;
	if (!dentry || !vfsmnt) {
		out->flags = PEREGRINE_PATH_TRUNCATED;
		return;
	}
	for (int i = 0; i < PEREGRINE_PATH_DEPTH; i++) {
		if (dentry == root_dentry && vfsmnt == root_mnt) {
			flags |= PEREGRINE_PATH_ABSOLUTE;
			break;
		}
		struct dentry *parent = BPF_CORE_READ(dentry, d_parent);
		struct dentry *mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
		if (dentry == mnt_root || dentry == parent) {
			struct mount *up = BPF_CORE_READ(mnt, mnt_parent);
			if (!up || up == mnt) {
				// The global root, above the process root (a chroot we left, or none).
				flags |= PEREGRINE_PATH_ABSOLUTE;
				break;
			}
			dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
			mnt = up;
			vfsmnt = (struct vfsmount *)((char *)up + bpf_core_field_offset(struct mount, mnt));
			continue;
		}
		off &= (PEREGRINE_PATH_CAP - 1);
		if (off > PEREGRINE_PATH_CAP - PEREGRINE_NAME_MAX) {
			flags |= PEREGRINE_PATH_TRUNCATED;
			break;
		}
		const unsigned char *name = BPF_CORE_READ(dentry, d_name.name);
		long n = bpf_probe_read_kernel_str(&out->buf[off], PEREGRINE_NAME_MAX, name);
		if (n <= 0) {
			flags |= PEREGRINE_PATH_TRUNCATED;
			break;
		}
		off += n;
		out->depth++;
		dentry = parent;
	}
	if (!(flags & PEREGRINE_PATH_ABSOLUTE))
		flags |= PEREGRINE_PATH_TRUNCATED;
	out->len = off & (PEREGRINE_PATH_CAP - 1);
	out->flags = flags;
}

static __always_inline __u32 ns_inum_of_pid(struct task_struct *task)
{
	struct pid *pid = BPF_CORE_READ(task, thread_pid);
	unsigned int level = BPF_CORE_READ(pid, level);
	// numbers[] is a flexible array in the kernel: index it by the task's own level, which
	// gives the namespace the task lives in (not pid_ns_for_children).
	struct upid *upid = &pid->numbers[0];
	struct upid up;
	if (bpf_core_read(&up, sizeof(up), (char *)upid + level * bpf_core_type_size(struct upid)))
		return 0;
	return BPF_CORE_READ(up.ns, ns.inum);
}

static __always_inline __u32 vpid_of(struct task_struct *task)
{
	struct pid *pid = BPF_CORE_READ(task, thread_pid);
	unsigned int level = BPF_CORE_READ(pid, level);
	struct upid up;
	if (bpf_core_read(&up, sizeof(up), (char *)&pid->numbers[0] + level * bpf_core_type_size(struct upid)))
		return 0;
	return up.nr;
}

// Everything an exec record says about the process besides argv and the executed file name.
int peregrine_exec_task_info(struct peregrine_task_info *info)
{
	struct task_struct *task = current_task();
	struct cred *cred = BPF_CORE_READ(task, cred);
	struct nsproxy *ns = BPF_CORE_READ(task, nsproxy);
	struct signal_struct *signal = BPF_CORE_READ(task, signal);

	info->start_ns = process_start(task);
	info->parent_tgid = BPF_CORE_READ(task, real_parent, tgid);
	info->parent_start_ns = BPF_CORE_READ(task, real_parent, group_leader, start_boottime);
	info->vpid = vpid_of(task);
	info->uid = BPF_CORE_READ(cred, uid.val);
	info->gid = BPF_CORE_READ(cred, gid.val);
	info->euid = BPF_CORE_READ(cred, euid.val);
	info->egid = BPF_CORE_READ(cred, egid.val);
	bpf_core_read(&info->cap_effective, sizeof(info->cap_effective), &cred->cap_effective);
	bpf_core_read(&info->cap_permitted, sizeof(info->cap_permitted), &cred->cap_permitted);
	if (bpf_core_field_exists(task->loginuid)) {
		info->loginuid = BPF_CORE_READ(task, loginuid.val);
		info->sessionid = BPF_CORE_READ(task, sessionid);
	} else {
		info->loginuid = (__u32)-1;
		info->sessionid = (__u32)-1;
	}
	info->ns_pid = ns_inum_of_pid(task);
	info->ns_mnt = BPF_CORE_READ(ns, mnt_ns, ns.inum);
	info->ns_net = BPF_CORE_READ(ns, net_ns, ns.inum);
	info->ns_uts = BPF_CORE_READ(ns, uts_ns, ns.inum);
	info->ns_ipc = BPF_CORE_READ(ns, ipc_ns, ns.inum);
	info->ns_cgroup = BPF_CORE_READ(ns, cgroup_ns, ns.inum);
	info->ns_user = BPF_CORE_READ(cred, user_ns, ns.inum);

	struct tty_struct *tty = BPF_CORE_READ(signal, tty);
	info->tty_nr = 0;
	info->tty_name[0] = 0;
	if (tty) {
		int major = BPF_CORE_READ(tty, driver, major);
		int minor = BPF_CORE_READ(tty, driver, minor_start) + BPF_CORE_READ(tty, index);
		// /proc/<pid>/stat's tty_nr encoding (new_encode_dev).
		info->tty_nr = (minor & 0xff) | ((__u32)major << 8) | (((__u32)minor & ~0xffu) << 12);
		bpf_probe_read_kernel_str(info->tty_name, sizeof(info->tty_name), &tty->name[0]);
	}

	struct fs_struct *fs = BPF_CORE_READ(task, fs);
	struct path root = BPF_CORE_READ(fs, root);
	struct path pwd = BPF_CORE_READ(fs, pwd);
	struct file *exe = BPF_CORE_READ(task, mm, exe_file);
	if (exe) {
		struct path exe_path = BPF_CORE_READ(exe, f_path);
		walk_path(&exe_path, &root, &info->exe);
	} else {
		info->exe.len = 0;
		info->exe.depth = 0;
		info->exe.flags = PEREGRINE_PATH_TRUNCATED;
	}
	walk_path(&pwd, &root, &info->cwd);
	return 0;
}

// The new child of a fork, if it is a process (not a thread). Returns 1 when `out` was filled.
int peregrine_fork_info(struct task_struct *parent, struct task_struct *child, struct peregrine_fork_info *out)
{
	int child_pid = BPF_CORE_READ(child, pid);
	int child_tgid = BPF_CORE_READ(child, tgid);
	// CLONE_THREAD makes the child share the parent's thread group: a thread, not a process.
	if (child_pid != child_tgid)
		return 0;
	out->child_tgid = child_tgid;
	out->child_start_ns = BPF_CORE_READ(child, start_boottime);
	out->parent_tgid = BPF_CORE_READ(child, real_parent, tgid);
	out->parent_start_ns = BPF_CORE_READ(child, real_parent, group_leader, start_boottime);
	out->forker_tgid = BPF_CORE_READ(parent, tgid);
	return 1;
}

// At sched_process_exit (current = the exiting thread): fills `out` and returns 1 only for the
// process's last thread, whose exit ends the process; 0 for the others.
int peregrine_exit_info(struct peregrine_exit_info *out)
{
	struct task_struct *task = current_task();
	struct signal_struct *signal = BPF_CORE_READ(task, signal);
	// signal->live is decremented before the tracepoint fires; zero means the group is dead.
	// (The tracepoint's own group_dead field exists only since 6.16.)
	if (BPF_CORE_READ(signal, live.counter) != 0)
		return 0;
	out->tgid = BPF_CORE_READ(task, tgid);
	out->start_ns = process_start(task);
	int code = BPF_CORE_READ(signal, group_exit_code);
	if (code == 0)
		code = BPF_CORE_READ(task, exit_code);
	out->exit_code = code;
	return 1;
}

// ---- sockets ----

struct in6_addr {
	__u8 in6_u[16];
} __attribute__((preserve_access_index));

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	int sk_err;
	__u16 sk_protocol;
} __attribute__((preserve_access_index));

struct socket {
	struct sock *sk;
} __attribute__((preserve_access_index));

// `struct file` again, under CO-RE's "___" flavour naming: only private_data is read here.
struct file___sock {
	void *private_data;
} __attribute__((preserve_access_index));

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));

struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));

struct task_struct___files {
	struct files_struct *files;
} __attribute__((preserve_access_index));

// Start time (boot ns) of the current process: with the tgid, the key of the process cache.
__u64 peregrine_current_start_ns(void)
{
	return process_start(current_task());
}

// The socket's addresses, ports (host order) and protocol (not its error: see
// peregrine_sock_error). Returns the address family (AF_INET 2, AF_INET6 10), or 0 when
// unreadable. Called several times per connection, so the IPv4 endpoints, ports and family
// (the head of sock_common) come in one read, picked apart at their relocated offsets.
int peregrine_sock_tuple(__u64 skaddr, struct peregrine_tuple *out)
{
	struct sock *sk = (struct sock *)skaddr;
	if (!sk)
		return 0;
	const __u32 o_daddr = bpf_core_field_offset(sk->__sk_common.skc_daddr);
	const __u32 o_saddr = bpf_core_field_offset(sk->__sk_common.skc_rcv_saddr);
	const __u32 o_dport = bpf_core_field_offset(sk->__sk_common.skc_dport);
	const __u32 o_num = bpf_core_field_offset(sk->__sk_common.skc_num);
	const __u32 o_family = bpf_core_field_offset(sk->__sk_common.skc_family);
	unsigned short family;
	__be32 s, d;
	__u8 head[32];
	// The offsets are load-time constants: the verifier keeps one branch.
	if (o_family + 2 <= sizeof(head) && o_daddr + 4 <= sizeof(head) && o_saddr + 4 <= sizeof(head) &&
	    o_dport + 2 <= sizeof(head) && o_num + 2 <= sizeof(head)) {
		if (bpf_probe_read_kernel(head, o_family + 2, &sk->__sk_common))
			return 0;
		__builtin_memcpy(&family, head + o_family, 2);
		__builtin_memcpy(&d, head + o_daddr, 4);
		__builtin_memcpy(&s, head + o_saddr, 4);
		__be16 dport;
		__builtin_memcpy(&dport, head + o_dport, 2);
		out->dport = __builtin_bswap16(dport);
		__builtin_memcpy(&out->sport, head + o_num, 2);
	} else {
		family = BPF_CORE_READ(sk, __sk_common.skc_family);
		d = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		s = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		out->dport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
		out->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	}
	out->family = family;
	out->protocol = BPF_CORE_READ(sk, sk_protocol);
	out->error = 0;
	if (family == 2) {
		__builtin_memcpy(out->saddr, &s, 4);
		__builtin_memcpy(out->daddr, &d, 4);
	} else if (family == 10) {
		bpf_core_read(out->saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(out->daddr, 16, &sk->__sk_common.skc_v6_daddr);
	}
	return family;
}

struct inet_sock {
	__be16 inet_sport;
} __attribute__((preserve_access_index));

// The socket's local port (host order) from inet_sport, which outlives the close: by the time
// the state tracepoint reports TCP_CLOSE the bind hash has been left and skc_num is 0.
__u16 peregrine_sock_sport(__u64 skaddr)
{
	struct inet_sock *inet = (struct inet_sock *)skaddr;
	return inet ? __builtin_bswap16(BPF_CORE_READ(inet, inet_sport)) : 0;
}

// The socket's pending error (errno): why a connect failed.
int peregrine_sock_error(__u64 skaddr)
{
	struct sock *sk = (struct sock *)skaddr;
	return sk ? BPF_CORE_READ(sk, sk_err) : 0;
}

// The socket behind fds[fd] (the fd already checked against the table's size), or 0.
static __always_inline __u64 fd_table_sock(struct file **fds, int fd)
{
	struct file___sock *f = 0;
	if (bpf_core_read(&f, sizeof(f), &fds[fd]) || !f)
		return 0;
	struct socket *sock = BPF_CORE_READ(f, private_data);
	if (!sock)
		return 0;
	return (__u64)BPF_CORE_READ(sock, sk);
}

// The `struct sock *` behind file descriptor `fd` of the current task (accept's new socket),
// or 0. Bounded by the fd table's size. Every step is a probe read: any kernel.
__u64 peregrine_fd_sock(int fd)
{
	struct task_struct___files *task = (struct task_struct___files *)bpf_get_current_task();
	struct files_struct *files = BPF_CORE_READ(task, files);
	struct fdtable *fdt = BPF_CORE_READ(files, fdt);
	unsigned int max = BPF_CORE_READ(fdt, max_fds);
	if (fd < 0 || (unsigned int)fd >= max)
		return 0;
	return fd_table_sock(BPF_CORE_READ(fdt, fd), fd);
}

// The same walk from the task's BTF pointer (kernels >= 5.11): the verifier knows the types,
// so task->files->fdt and the table's size and array are plain loads instead of four helper
// calls, which were most of an accept's cost. The array's slots and what follows are
// pointers the verifier does not type (`struct file **`, `void *`): probe reads still.
// `fdt` is __rcu: on kernels built with clang the verifier (>= 6.3) takes it as possibly
// NULL and refuses a load through it unchecked.
__u64 peregrine_fd_sock_btf(int fd)
{
	struct task_struct___files *task = (struct task_struct___files *)bpf_get_current_task_btf();
	struct files_struct *files = task->files;
	if (!files)
		return 0;
	struct fdtable *fdt = files->fdt;
	if (!fdt)
		return 0;
	unsigned int max = fdt->max_fds;
	if (fd < 0 || (unsigned int)fd >= max)
		return 0;
	return fd_table_sock(fdt->fd, fd);
}

// The file an exec is about to run, as (device, inode): the LSM hook's deny-map key.
int peregrine_bprm_file(void *bprm_ptr, struct peregrine_file_key *out)
{
	struct linux_binprm *bprm = bprm_ptr;
	struct inode *inode = BPF_CORE_READ(bprm, file, f_inode);

	out->ino = BPF_CORE_READ(inode, i_ino);
	out->dev = BPF_CORE_READ(inode, i_sb, s_dev);
	return out->ino != 0;
}

// The name given to execve, for the denial record; the length copied (with the NUL), or < 0.
int peregrine_bprm_filename(void *bprm_ptr, char *buf, __u32 size)
{
	struct linux_binprm *bprm = bprm_ptr;

	return bpf_probe_read_kernel_str(buf, size, BPF_CORE_READ(bprm, filename));
}
