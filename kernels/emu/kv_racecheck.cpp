// The racecheck's state and the instrumentation's hooks (see kv_racecheck.h). Built WITHOUT -fsanitize=thread, so
// that nothing here calls the hooks again.
#define KV_RACECHECK_IMPL 1
#include "kv_racecheck.h"
#include <dlfcn.h>
#include <unistd.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unordered_map>
#include <unordered_set>

namespace kv_rc
{
bool on = false;
int cur = -1;

namespace
{
int nwarps = 0, nunits = 0, blockThreads = 0;
VC clocks[MaxUnits];
Snap snaps[MaxUnits];   // each unit's clock as last snapshotted (reset whenever the clock changes)
uint32_t clusterSerial = 0;
std::unordered_map<unsigned long long, int> tmaUnits;   // mbarrier address -> unit

// A shared-memory region (a block's dynamic shared memory or the static section) and its shadow, one cell a byte.
struct Region
{
    uintptr_t lo = 0, hi = 0;
    int block = 0;
    bool dynamic = true;
    std::vector<uint32_t> stamp, wclk, rclk;   // rclk: nwarps entries a byte (the epoch of each warp's last read)
    std::vector<uint16_t> wunit;
    std::vector<uint8_t> watomic;
    std::vector<uintptr_t> wpc, rpc;
    std::vector<const char*> wwhat, rwhat;
};
std::vector<Region> regions;

struct Report { std::string kind; int block; unsigned long long offset; bool dynamic; std::string unit, other; uintptr_t pc, otherPc; const char *what, *otherWhat; };
std::vector<Report> pending;
std::unordered_set<std::string> seen;   // one report per (kind, pc, other pc)
long long found = 0;

void touched(int u) { snaps[u].reset(); }
std::string unit_name(int u);
void join(VC& into, const VC& o)
{
    for (int i = 0; i < MaxUnits; i++) into.c[i] = into.c[i] > o.c[i] ? into.c[i] : o.c[i];
}
Region* region_of(uintptr_t a)
{
    for (auto& r : regions)
        if (a - r.lo < r.hi - r.lo) return &r;
    return nullptr;
}
void report(const char* kind, Region& r, size_t idx, int unit, int other, uintptr_t pc, uintptr_t otherPc, const char* what, const char* otherWhat)
{
    std::string key = std::string(kind) + ":" + std::to_string(pc) + ":" + std::to_string(otherPc) + ":" + what;
    if (!seen.insert(key).second) return;
    found++;
    // the units named now: the launch's warps and mbarriers are gone by the time the case's reports are printed
    if (pending.size() < 5) pending.push_back({kind, r.block, (unsigned long long)idx, r.dynamic, unit_name(unit), unit_name(other), pc, otherPc, what, otherWhat});
}
// One access of `bytes` at a by unit u, checked against the clock `check`, recorded with epoch `epoch`.
void access(uintptr_t a, int bytes, bool write, bool atomic, int u, const VC& check, uint32_t epoch, uintptr_t pc, const char* what)
{
    Region* r = region_of(a);
    if (!r) return;
    for (int i = 0; i < bytes; i++)
    {
        const size_t idx = a + i - r->lo;
        if (idx >= r->stamp.size()) return;
        uint32_t* rc = &r->rclk[idx * (size_t)nwarps];
        if (r->stamp[idx] != clusterSerial)
        {
            r->stamp[idx] = clusterSerial;
            r->wunit[idx] = 0xffff; r->wclk[idx] = 0; r->watomic[idx] = 0;
            std::memset(rc, 0, sizeof(uint32_t) * (size_t)nwarps);
        }
        const int wu = r->wunit[idx];
        if (wu != 0xffff && wu != u && r->wclk[idx] > check.c[wu] && !(atomic && r->watomic[idx]))
            report(write ? "write after write" : "read after write", *r, idx, u, wu, pc, r->wpc[idx], what, r->wwhat[idx]);
        if (write)
        {
            for (int v = 0; v < nwarps; v++)
                if (v != u && rc[v] > check.c[v]) report("write after read", *r, idx, u, v, pc, r->rpc[idx], what, r->rwhat[idx]);
            r->wunit[idx] = (uint16_t)u; r->wclk[idx] = epoch; r->watomic[idx] = atomic; r->wpc[idx] = pc; r->wwhat[idx] = what;
        }
        else if (u < nwarps && !atomic)   // an atomic read conflicts with no other atomic (and plain writes check only plain reads)
        {
            rc[u] = epoch;
            r->rpc[idx] = pc; r->rwhat[idx] = what;
        }
    }
}
int tma_unit(unsigned long long bar)
{
    auto it = tmaUnits.find(bar);
    if (it != tmaUnits.end()) return it->second;
    if (nunits >= MaxUnits) { std::fprintf(stderr, "racecheck: more than %d units (warps + mbarriers of TMA copies)\n", MaxUnits); std::abort(); }
    tmaUnits[bar] = nunits;
    return nunits++;
}
std::string unit_name(int u)
{
    char s[128];
    if (u >= nwarps)
    {
        for (auto& [bar, unit] : tmaUnits)
            if (unit == u)
            {
                Region* r = region_of((uintptr_t)bar);
                std::snprintf(s, sizeof s, "the TMA copies completing on the mbarrier at +%llu", r ? (unsigned long long)(bar - r->lo) : bar);
                return s;
            }
        return "a TMA copy";
    }
    const int perBlock = blockThreads / 32;
    std::snprintf(s, sizeof s, "warp %d of block %d of the cluster", u % perBlock, u / perBlock);
    return s;
}
// "function file:line" of a code address, by llvm-symbolizer where it is found, else the module offset.
std::string where(uintptr_t pc)
{
    if (pc == 0) return "the end of the kernel";
    Dl_info info{};
    char off[64];
    uintptr_t rel = pc;
    if (dladdr((void*)pc, &info) && info.dli_fbase) rel = pc - (uintptr_t)info.dli_fbase - 1;   // the call's own address
    std::snprintf(off, sizeof off, "0x%llx", (unsigned long long)rel);
    static int haveSymbolizer = -1;
    if (haveSymbolizer < 0) haveSymbolizer = std::system("command -v llvm-symbolizer-14 >/dev/null 2>&1") == 0;
    if (!haveSymbolizer) return std::string("+") + off;
    std::string cmd = std::string("llvm-symbolizer-14 --obj=/proc/") + std::to_string(getpid()) + "/exe " + off;
    FILE* p = popen(cmd.c_str(), "r");
    if (!p) return std::string("+") + off;
    char fn[512] = "", loc[512] = "";
    if (!std::fgets(fn, sizeof fn, p)) fn[0] = 0;
    if (!std::fgets(loc, sizeof loc, p)) loc[0] = 0;
    pclose(p);
    fn[std::strcspn(fn, "\n")] = 0;
    loc[std::strcspn(loc, "\n")] = 0;
    const char* base = std::strrchr(loc, '/');
    return std::string(fn) + " " + (base ? base + 1 : loc);
}
}   // namespace

void begin_launch(int warps, int threads, const std::vector<std::pair<uintptr_t, size_t>>& dyn, uintptr_t staticLo, uintptr_t staticHi)
{
    if (!on) return;
    if (warps > 64) { std::fprintf(stderr, "racecheck: %d warps a cluster, more than 64\n", warps); std::abort(); }
    nwarps = warps;
    blockThreads = threads;
    regions.clear();
    auto add = [&](uintptr_t lo, size_t bytes, int block, bool dynamic) {
        Region r;
        r.lo = lo; r.hi = lo + bytes; r.block = block; r.dynamic = dynamic;
        r.stamp.assign(bytes, 0); r.wclk.assign(bytes, 0); r.wunit.assign(bytes, 0xffff); r.watomic.assign(bytes, 0);
        r.wpc.assign(bytes, 0); r.rpc.assign(bytes, 0); r.wwhat.assign(bytes, ""); r.rwhat.assign(bytes, "");
        r.rclk.assign(bytes * (size_t)warps, 0);
        regions.push_back(std::move(r));
    };
    for (size_t b = 0; b < dyn.size(); b++)
        if (dyn[b].second) add(dyn[b].first, dyn[b].second, (int)b, true);
    if (staticHi > staticLo) add(staticLo, staticHi - staticLo, 0, false);
    clusterSerial = 0;
}
void begin_cluster()
{
    if (!on) return;
    clusterSerial++;   // every cell stale (reset at its next access)
    nunits = nwarps;
    for (int u = 0; u < MaxUnits; u++) { clocks[u] = VC{}; snaps[u].reset(); }
    for (int u = 0; u < nwarps; u++) clocks[u].c[u] = 1;
    tmaUnits.clear();
}
void end_launch()
{
    regions.clear();
    regions.shrink_to_fit();
}

void plain(uintptr_t a, int bytes, bool write, bool atomic, uintptr_t pc, const char* what)
{
    if (!on || cur < 0) return;
    access(a, bytes, write, atomic, cur, clocks[cur], clocks[cur].c[cur], pc, what);
}
void async_access(uintptr_t a, int bytes, bool write, const Snap& issued, uintptr_t pc, const char* what)
{
    if (!on || cur < 0) return;
    access(a, bytes, write, false, cur, issued ? *issued : clocks[cur], clocks[cur].c[cur], pc, what);
}
Snap snapshot()
{
    if (!on || cur < 0) return nullptr;
    if (!snaps[cur]) snaps[cur] = std::make_shared<const VC>(clocks[cur]);
    return snaps[cur];
}
void release_into(VC& into)
{
    if (!on || cur < 0) return;
    join(into, clocks[cur]);
    clocks[cur].c[cur]++;
    touched(cur);
}
void acquire_from(const VC& from)
{
    if (!on || cur < 0) return;
    join(clocks[cur], from);
    touched(cur);
}
void bar_arrive(Bar& b)
{
    if (!on || cur < 0) return;
    join(b.acc, clocks[cur]);
    b.members[cur >> 6] |= 1ull << (cur & 63);
}
void bar_release(Bar& b)
{
    if (!on) return;
    for (int u = 0; u < MaxUnits; u++)
        if (b.members[u >> 6] >> (u & 63) & 1)
        {
            join(clocks[u], b.acc);
            clocks[u].c[u]++;
            touched(u);
        }
    b = Bar{};
}
void block_exit(uintptr_t lo, int firstWarp, int warps)
{
    if (!on) return;
    Region* r = region_of(lo);
    if (!r) return;
    VC exit{};
    for (int u = firstWarp; u < firstWarp + warps; u++) join(exit, clocks[u]);
    for (size_t idx = 0; idx < r->stamp.size(); idx++)
    {
        if (r->stamp[idx] != clusterSerial) continue;   // not touched in this cluster's run
        const int wu = r->wunit[idx];
        if (wu != 0xffff && r->wclk[idx] > exit.c[wu])
            report("exit after write", *r, idx, firstWarp, wu, 0, r->wpc[idx], "the block's exit", r->wwhat[idx]);
        const uint32_t* rc = &r->rclk[idx * (size_t)nwarps];
        for (int v = 0; v < nwarps; v++)
            if (rc[v] > exit.c[v]) report("exit after read", *r, idx, firstWarp, v, 0, r->rpc[idx], "the block's exit", r->rwhat[idx]);
    }
}

void mbar_complete(MBar& m)
{
    if (!on) return;
    join(m.released, m.acc);
    m.acc = VC{};
}
void tma_write(uintptr_t a, int bytes, unsigned long long bar, MBar& m, const Snap& issued, uintptr_t pc)
{
    if (!on) return;
    const int tu = tma_unit(bar);
    const uint32_t e = ++clocks[tu].c[tu];
    access(a, bytes, true, false, tu, issued ? *issued : VC{}, e, pc, "TMA copy");
    if (m.acc.c[tu] < e) m.acc.c[tu] = e;
}

std::vector<std::string> take_reports()
{
    static long long reported = 0;   // found by the earlier calls
    std::vector<std::string> lines;
    for (auto& r : pending)
    {
        char s[256];
        std::snprintf(s, sizeof s, "race: %s on %s shared memory +%llu of block %d of the cluster: ", r.kind.c_str(),
                      r.dynamic ? "dynamic" : "static", r.offset, r.block);
        lines.push_back(std::string(s) + r.unit + " (" + r.what + " at " + where(r.pc) + ") after " + r.other + " (" +
                        r.otherWhat + " at " + where(r.otherPc) + "), no barrier between them");
    }
    if (found - reported > (long long)pending.size())
        lines.push_back("race: and " + std::to_string(found - reported - (long long)pending.size()) + " more (other pairs of source lines)");
    pending.clear();
    seen.clear();   // the next case reports its own
    reported = found;
    return lines;
}
long long total() { return found; }
}   // namespace kv_rc

// The instrumentation's hooks (what the sanitizer runtime would provide): only shared memory is looked at.
extern "C"
{
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
#define KV_RC_HOOK(n)                                                                                                                        \
    void __tsan_read##n(void* p) { kv_rc::plain((uintptr_t)p, n, false, false, (uintptr_t)__builtin_return_address(0), "read"); }           \
    void __tsan_write##n(void* p) { kv_rc::plain((uintptr_t)p, n, true, false, (uintptr_t)__builtin_return_address(0), "write"); }          \
    void __tsan_unaligned_read##n(void* p) { kv_rc::plain((uintptr_t)p, n, false, false, (uintptr_t)__builtin_return_address(0), "read"); } \
    void __tsan_unaligned_write##n(void* p) { kv_rc::plain((uintptr_t)p, n, true, false, (uintptr_t)__builtin_return_address(0), "write"); }
KV_RC_HOOK(1)
KV_RC_HOOK(2)
KV_RC_HOOK(4)
KV_RC_HOOK(8)
KV_RC_HOOK(16)
#undef KV_RC_HOOK
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}
}

// Atomics: the instrumentation routes them here even in the emulator's uninstrumented functions (and in the standard
// library's reference counts); they only do the operation (the emulator reports its shared-memory atomics itself).
extern "C"
{
int __tsan_atomic32_load(const volatile int* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); }
void __tsan_atomic32_store(volatile int* a, int v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); }
int __tsan_atomic32_fetch_add(volatile int* a, int v, int) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }
int __tsan_atomic32_fetch_sub(volatile int* a, int v, int) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); }
int __tsan_atomic32_exchange(volatile int* a, int v, int) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); }
int __tsan_atomic32_compare_exchange_val(volatile int* a, int c, int v, int, int)
{
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return c;
}
int __tsan_atomic32_compare_exchange_strong(volatile int* a, int* c, int v, int, int) { return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); }
int __tsan_atomic32_compare_exchange_weak(volatile int* a, int* c, int v, int, int) { return __atomic_compare_exchange_n(a, c, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST); }
long __tsan_atomic64_load(const volatile long* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); }
void __tsan_atomic64_store(volatile long* a, long v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); }
long __tsan_atomic64_fetch_add(volatile long* a, long v, int) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }
long __tsan_atomic64_fetch_sub(volatile long* a, long v, int) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); }
long __tsan_atomic64_compare_exchange_val(volatile long* a, long c, long v, int, int)
{
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return c;
}
void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void __tsan_atomic_signal_fence(int) {}
}
