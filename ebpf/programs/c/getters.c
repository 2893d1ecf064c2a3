// Kernel struct reads for Peregrine's programs, compiled by clang with CO-RE relocations.
//
// rustc cannot emit BTF field relocations, so every read of a kernel struct lives here: clang
// records each field access as a relocation, bpf-linker links this bitcode into the Rust object,
// and aya rewrites the offsets against the running kernel's BTF at load time. Declare only the
// fields read, with preserve_access_index; never hard-code an offset.

#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

struct mm_struct {
	unsigned long arg_start;
	unsigned long arg_end;
} __attribute__((preserve_access_index));

struct task_struct {
	int tgid;
	struct task_struct *real_parent;
	struct mm_struct *mm;
} __attribute__((preserve_access_index));

// tgid of the current task's real parent (the process that forked it, not a ptracer).
int peregrine_current_parent_tgid(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	return BPF_CORE_READ(task, real_parent, tgid);
}

// Bounds of the current task's argument area (NUL-separated argv in user memory).
// At sched_process_exec this is the new image's area, freshly written by the kernel.
// Returns 0, or -1 when the task has no mm (kernel threads).
int peregrine_current_arg_area(__u64 *start, __u64 *end)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	if (!mm)
		return -1;
	*start = BPF_CORE_READ(mm, arg_start);
	*end = BPF_CORE_READ(mm, arg_end);
	return 0;
}
