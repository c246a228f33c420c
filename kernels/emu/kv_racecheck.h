// Racecheck for the host emulator (kv_emu.h): a happens-before detector of shared-memory hazards, deterministic where
// the race and starve schedules find a missing barrier only when some interleaving makes a value wrong.
// kernels/emu/run.sh builds it as a fourth binary: emu_tests.cpp compiled with clang's -fsanitize=thread
// instrumentation (every load and store of the kernels calls __tsan_readN / __tsan_writeN) and KV_RACECHECK, linked
// with kv_racecheck.cpp (built without it), which supplies those hooks (no sanitizer runtime is linked). The
// emulator's own functions are left uninstrumented (KV_EMU_FN) and report the shared memory they touch on a thread's
// behalf themselves (ldmatrix, st.shared, atomics, cp.async, TMA, wgmma). Run with KV_EMU_MODE=racecheck (the ordered
// schedule, copies landing at their wait).
//
// The model (vector clocks, FastTrack-like; the units are the warps of the running cluster, plus one unit per mbarrier
// that TMA copies complete on):
// - a unit's accesses carry its current epoch; a release publishes its clock and starts a new epoch; an acquire joins
//   a published clock into the unit's;
// - barriers (__syncthreads, bar.sync id, warp collectives, the warpgroup's wgmma exchange, barrier.cluster): each
//   arriving warp releases into the barrier; when the last arrives, every participant acquires the join;
// - mbarrier.arrive releases the arriving warp into the barrier's phase; the phase's completion publishes it; a wait
//   that sees the phase complete acquires everything the barrier has published;
// - a cp.async or TMA copy is checked as of its issue (the issuer's clock then) and written when it lands: by the
//   issuing warp at the wait that covers it (cp.async), by its mbarrier's unit, which the barrier's phase releases (TMA);
// - wgmma reads its shared operands as of its issue (checked then), held until the wait that retires it.
// - a block's exit: every access to its shared memory by another unit must be ordered before its warps' exits;
// - an mbarrier's 8 bytes: written by its init, atomically written by each arrival and atomically read by a wait that
//   completes, so an arrival or wait that no barrier orders after the init is a hazard (the one order it needs).
// A hazard: two accesses to a shared byte by different units, at least one a write and not both atomic, that no chain
// of releases and acquires orders. Accesses within one warp are not checked (the kernels are warp-synchronous, lanes
// ordered by their collectives); global memory is not checked. Also not seen: a copy the compiler turns into a memcpy
// or memmove call (a struct copy; zeroing loops stay stores under -fno-builtin-memset); and only the last writer of a
// byte is kept, so of two unordered atomic writes the first is forgotten (a later plain access is checked against the
// second only); one lane's mbarrier wait orders its whole warp.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#if defined(KV_RACECHECK)
// The emulator's functions: not instrumented, and (a sanitizer attribute mismatch) never inlined into the kernels.
#define KV_EMU_FN __attribute__((no_sanitize("thread")))
#define KV_RC(...) __VA_ARGS__
#define KV_RC_PC ((uintptr_t)__builtin_return_address(0))
#else
#define KV_EMU_FN
#define KV_RC(...)
#endif

#if defined(KV_RACECHECK) || defined(KV_RACECHECK_IMPL)
namespace kv_rc
{
constexpr int MaxUnits = 128;   // the warps of a cluster (at most 64) + TMA units
struct VC
{
    uint32_t c[MaxUnits] = {};
};
using Snap = std::shared_ptr<const VC>;
struct Bar   // a barrier's: the join of its arrivals and the warps that arrived
{
    VC acc;
    uint64_t members[MaxUnits / 64] = {};
};
struct MBar   // an mbarrier's: the current phase's arrivals, and what its completed phases published
{
    VC acc, released;
};

extern bool on;
extern int cur;   // the running thread's warp in the cluster; -1: the scheduler

// A launch: the warps of a cluster, the threads of a block, each block's dynamic shared memory, the static section.
void begin_launch(int warps, int threads, const std::vector<std::pair<uintptr_t, size_t>>& dyn, uintptr_t staticLo, uintptr_t staticHi);
void begin_cluster();
void end_launch();

// An access by the running thread's warp (plain: checked and recorded now; async: checked against `issued`, the warp's
// clock when the operation was issued, recorded now). `what` names the operation in a report.
void plain(uintptr_t a, int bytes, bool write, bool atomic, uintptr_t pc, const char* what);
void async_access(uintptr_t a, int bytes, bool write, const Snap& issued, uintptr_t pc, const char* what);
Snap snapshot();   // the running warp's clock

void release_into(VC& into);
void acquire_from(const VC& from);
void bar_arrive(Bar& b);
void bar_release(Bar& b);
void mbar_complete(MBar& m);
// A TMA copy's bytes landing in shared memory at a, completing on the mbarrier at `bar` (state m), issued at `issued`.
void tma_write(uintptr_t a, int bytes, unsigned long long bar, MBar& m, const Snap& issued, uintptr_t pc);

// The last thread of the block whose dynamic shared memory starts at `lo` has exited: every access to it by another
// unit (a remote arrival or DSMEM access of another block of the cluster, a TMA copy landing) must be ordered before
// the exits of the block's warps, or the memory may already belong to the next block on that multiprocessor.
void block_exit(uintptr_t lo, int firstWarp, int warps);

// The hazards found since the last call, one line each (source lines where llvm-symbolizer is found), and their count.
std::vector<std::string> take_reports();
long long total();
}   // namespace kv_rc
#endif
