// The CUDA driver API calls that src/KernelVL/Cuda/CudaDriver.cs binds, implemented on the host emulator (kv_emu.h):
// built as a shared library (kernels/emu/build-driver.sh) and loaded by CudaBackend.CreateEmulated in place of
// libcuda.so.1, so that the cuda backend's own C# (argument lists, grids, shared-memory sizes, tensor maps, split-K
// plans, fallbacks, the order of launches and temporaries) runs end to end without a GPU, every kernel of kernels/*.cu
// executed by the emulator on host memory (the backend then sits on ILGPU's CPU accelerator, whose buffers are host
// memory). The device it describes is an H100 (compute capability 9.0, 132 multiprocessors, 227 KB of shared memory
// per block), so the backend takes the Hopper paths and plans as it would there.
// What it checks beyond the emulator's own checks: the driver's launch limits (block <= 1024 threads and <= the
// kernel's __launch_bounds__, 1-D blocks as the kernels assume, grid y/z <= 65535, dynamic shared memory above 48 KB
// only after cuFuncSetAttribute allowed it for that function, <= 227 KB), cuTensorMapEncodeTiled's argument rules for
// the maps the emulator implements, and functions looked up in a module whose PTX does not declare them.
// What it cannot check: static shared memory (the real limit is static + dynamic), registers, stream order (launches
// run to completion before they return), device versus host pointers (both are host memory here), and the PTX itself
// (never compiled: the kernels run from their C++ sources).
// A kernel that the emulator finds at fault (a misaligned TMA, a deadlock) aborts the process with its message.
// Launches are serialised (the emulator's state is global); the mode is KV_EMU_MODE (ordered by default).
#define KV_EMU 1
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include "../gemm.cu"
#include "../gemm_sm90.cu"
#include "../attention.cu"
#include "../topk.cu"
#include "../layernorm.cu"
#include "../infonce.cu"

namespace
{
constexpr int kOk = 0, kInvalidValue = 1, kNotFound = 500, kInvalidHandle = 400, kLaunchOutOfResources = 701;
constexpr int kSharedOptIn = 232448;   // 227 KB: sm_90's largest dynamic shared memory per block
constexpr int kSharedDefault = 49152;  // 48 KB: without cuFuncSetAttribute

// Calls kernel k with its arguments read from cuLaunchKernel's params: params[i] points at argument i's bytes, of the
// type the kernel declares (top-level const dropped: a tensor map passed by value reads as kv_tensor_map).
template <class... A, std::size_t... I>
void call(void (*k)(A...), void** params, std::index_sequence<I...>)
{
    k(*static_cast<std::remove_cv_t<A>*>(params[I])...);
}

struct Entry
{
    const char* name;
    void (*launch)(kv_dim3 grid, unsigned threads, size_t shared, void** params, unsigned cluster);
    long long launches;
};

template <class... A>
void call_all(void (*k)(A...), void** params)
{
    call(k, params, std::index_sequence_for<A...>{});
}

template <auto K>
void launch(kv_dim3 grid, unsigned threads, size_t shared, void** params, unsigned cluster)
{
    kv_emu_launch(grid, threads, shared, [params] { call_all(K, params); }, cluster);
}

#define KV_ENTRY(name) Entry{#name, &launch<&name>, 0}
Entry entries[] = {
    KV_ENTRY(attention_forward_d64), KV_ENTRY(attention_forward_d64_v2), KV_ENTRY(attention_backward_delta),
    KV_ENTRY(attention_backward_dkdv_d64), KV_ENTRY(attention_backward_dq_d64), KV_ENTRY(attention_forward_d64_wgmma),
    KV_ENTRY(gemm_bf16), KV_ENTRY(gemm_bf16_tn), KV_ENTRY(convert_bf16_kmajor), KV_ENTRY(split_tf32_kmajor),
    KV_ENTRY(gemm_splitk_reduce), KV_ENTRY(gemm_f32x3), KV_ENTRY(gemm_bf16_wgmma), KV_ENTRY(gemm_bf16_wgmma_tma), KV_ENTRY(gemm_bf16_wgmma_tma_x2),
    KV_ENTRY(gemm_tf32x3_wgmma_tma), KV_ENTRY(topk_tc_f16_wgmma), KV_ENTRY(topk_tc_f16_wgmma_x4),
    KV_ENTRY(infonce_diag), KV_ENTRY(infonce_forward_tiles), KV_ENTRY(infonce_combine), KV_ENTRY(sum_scaled_f64),
    KV_ENTRY(infonce_backward_tiles), KV_ENTRY(infonce_backward_diag), KV_ENTRY(infonce_diag_of),
    KV_ENTRY(infonce_stats_tiles), KV_ENTRY(infonce_backward_tiles_of),
    KV_ENTRY(layernorm_forward), KV_ENTRY(layernorm_backward_dx), KV_ENTRY(layernorm_backward_params_partial),
    KV_ENTRY(layernorm_backward_params_combine), KV_ENTRY(kv_spin), KV_ENTRY(kv_l2_flush),
    KV_ENTRY(topk_chunks), KV_ENTRY(topk_chunks_f16), KV_ENTRY(topk_merge), KV_ENTRY(topk_f16_queries),
    KV_ENTRY(topk_f16_max_norm), KV_ENTRY(topk_tc_f16), KV_ENTRY(topk_f16_rescore),
};

// Each kernel's __launch_bounds__ (the block size it was compiled for: a larger launch fails on the device), from
// kernels/*.cu by build-driver.sh (launch_bounds.inc); kernels without one take up to 1024 threads.
struct Bound { const char* name; unsigned threads; };
#define KV_BOUND(name, threads, ...) Bound{#name, (unsigned)(threads)},
const Bound bounds[] = {
#include "launch_bounds.inc"
};
unsigned maxThreads(const char* name)
{
    for (auto& b : bounds)
        if (std::strcmp(b.name, name) == 0) return b.threads;
    return 1024;
}

// A module: the entries its image declares (".entry NAME(" in the PTX the backend loads), and a function handle per
// entry looked up, carrying that function's own dynamic shared memory limit (as cuFuncSetAttribute sets it).
struct Function
{
    Entry* entry;
    int maxShared;
    unsigned maxThreads;
};
struct Module
{
    std::vector<std::string> names;
    std::vector<std::unique_ptr<Function>> functions;
};

std::mutex launches;
std::map<std::string, int> registerOverrides;   // cuFuncGetAttribute's NUM_REGS answers set by kv_emu_set_registers
thread_local const char* lastError = "";
int fail(int code, const char* what)
{
    lastError = what;
    std::fprintf(stderr, "kv_emu driver: %s\n", what);
    return code;
}

// The schedule as in emu_tests: KV_EMU_MODE (ordered, race, starve) and KV_EMU_SEED, read when the library loads.
const bool modeSet = [] {
    kv_emu_set_mode(std::getenv("KV_EMU_MODE"));
    if (const char* seed = std::getenv("KV_EMU_SEED")) kv_emu_rng ^= std::strtoull(seed, nullptr, 10) * 0x2545f4914f6cdd1dull;
    return true;
}();

struct Event { double ms; };
double nowMs()
{
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

extern "C"
{
// Present only in this library: CudaDriver.IsEmulator.
int kv_emu_driver() { return 1; }
// How many times kernel `name` ran since the library loaded (-1: no such kernel): tests check that a path ran.
long long kv_emu_launch_count(const char* name)
{
    std::lock_guard<std::mutex> lock(launches);
    for (auto& e : entries)
        if (std::strcmp(e.name, name) == 0) return e.launches;
    return -1;
}

int cuInit(unsigned) { return kOk; }
int cuDriverGetVersion(int* v) { *v = 12080; return kOk; }
int cuGetErrorString(int code, const char** s)
{
    *s = code == kOk ? "no error" : lastError;
    return kOk;
}
int cuCtxSetCurrent(void*) { return kOk; }
int cuCtxGetDevice(int* d) { *d = 0; return kOk; }
int cuDeviceGetAttribute(int* v, int attribute, int)
{
    switch (attribute)
    {
    case 75: *v = 9; return kOk;     // compute capability major
    case 76: *v = 0; return kOk;     // minor
    case 16: *v = 132; return kOk;   // multiprocessors
    default: return fail(kInvalidValue, "cuDeviceGetAttribute: an attribute the emulated driver does not describe");
    }
}
// Modules: every kernel is compiled in; the image (the backend's PTX) is read only for the entries it declares, so that
// a function looked up in the wrong module is not found, as on the device. (A CUBIN image would declare none.)
int cuModuleLoadDataEx(void** module, const void* image, unsigned, int*, void**)
{
    if (!image) return fail(kInvalidValue, "cuModuleLoadDataEx: no image");
    auto* m = new Module();
    const std::string text(static_cast<const char*>(image));
    for (size_t at = text.find(".entry "); at != std::string::npos; at = text.find(".entry ", at + 1))
    {
        size_t start = at + 7, end = text.find('(', start);
        if (end != std::string::npos) m->names.push_back(text.substr(start, end - start));
    }
    *module = m;
    return kOk;
}
int cuModuleUnload(void* module)
{
    delete static_cast<Module*>(module);
    return kOk;
}
int cuModuleGetFunction(void** f, void* module, const char* name)
{
    auto* m = static_cast<Module*>(module);
    if (!m) return fail(kInvalidHandle, "cuModuleGetFunction: no module");
    if (std::find(m->names.begin(), m->names.end(), name) == m->names.end()) return fail(kNotFound, "cuModuleGetFunction: no such entry in this module");
    for (auto& fn : m->functions)
        if (std::strcmp(fn->entry->name, name) == 0) { *f = fn.get(); return kOk; }
    for (auto& e : entries)
        if (std::strcmp(e.name, name) == 0)
        {
            m->functions.push_back(std::make_unique<Function>(Function{&e, kSharedDefault, maxThreads(name)}));
            *f = m->functions.back().get();
            return kOk;
        }
    return fail(kNotFound, "cuModuleGetFunction: the module declares it, but kernels/*.cu has no such kernel (fake_driver.cpp's table)");
}
// CU_FUNC_ATTRIBUTE_NUM_REGS (4) only. The emulator allocates no registers: it answers what ptxas gives the kernels
// whose correctness depends on the count (top-k version 3's setmaxnreg split: 168, NVRTC 12.5 sm_90a) and 128 for the
// others; kv_emu_set_registers overrides an entry's answer (a test of the backend's guard).
int cuFuncGetAttribute(int* value, int attribute, void* f)
{
    if (attribute != 4) return fail(kInvalidValue, "cuFuncGetAttribute: only NUM_REGS is emulated");
    auto* fn = static_cast<Function*>(f);
    if (!fn || !value) return fail(kInvalidValue, "cuFuncGetAttribute: no function");
    auto it = registerOverrides.find(fn->entry->name);
    *value = it != registerOverrides.end() ? it->second : std::strncmp(fn->entry->name, "topk_tc_f16_wgmma", 17) == 0 ? 168 : 128;
    return kOk;
}
void kv_emu_set_registers(const char* entry, int registers)
{
    if (registers <= 0) registerOverrides.erase(entry);
    else registerOverrides[entry] = registers;
}
int cuFuncSetAttribute(void* f, int attribute, int value)
{
    if (attribute != 8) return fail(kInvalidValue, "cuFuncSetAttribute: only MAX_DYNAMIC_SHARED_SIZE_BYTES is emulated");
    if (value < 0 || value > kSharedOptIn) return fail(kInvalidValue, "cuFuncSetAttribute: more dynamic shared memory than a block may have");
    static_cast<Function*>(f)->maxShared = value < kSharedDefault ? kSharedDefault : value;
    return kOk;
}
}  // extern "C"

namespace
{
// The launch checks of cuLaunchKernel and cuLaunchKernelEx; then the emulator runs it (clusters of `cluster` blocks along x).
int launchChecked(const char* call, void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned shared,
                  void** params, void** extra, unsigned cluster)
{
    static thread_local std::string what;
    auto failIn = [&](int code, const char* why) { what = std::string(call) + ": " + why; return fail(code, what.c_str()); };
    auto* fn = static_cast<Function*>(f);
    if (!fn) return failIn(kInvalidHandle, "no function");
    Entry* e = fn->entry;
    if (extra) return failIn(kInvalidValue, "extra is not emulated");
    if (gx == 0 || gy == 0 || gz == 0 || gx > 0x7fffffffu || gy > 65535 || gz > 65535) return failIn(kInvalidValue, "grid outside the limits");
    if (by != 1 || bz != 1) return failIn(kInvalidValue, "the kernels take 1-D blocks");
    if (bx == 0 || bx > 1024 || bx % 32) return failIn(kInvalidValue, "block of 1..1024 threads, whole warps");
    if (bx > fn->maxThreads) return failIn(kLaunchOutOfResources, "more threads than the kernel's __launch_bounds__");
    if ((int)shared > fn->maxShared) return failIn(kInvalidValue, "more dynamic shared memory than cuFuncSetAttribute allowed");
    if (cluster == 0 || cluster > 8 || gx % cluster) return failIn(kInvalidValue, "a cluster of 1..8 blocks along x that divides the grid's x");
    std::lock_guard<std::mutex> lock(launches);
    e->launch({gx, gy, gz}, bx, shared, params, cluster);
    e->launches++;
    return kOk;
}

// cuda.h's CUlaunchConfig and CUlaunchAttribute (id 4: CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION, value.clusterDim).
struct LaunchAttribute { int id; char pad[4]; unsigned x, y, z; char rest[52]; };
struct LaunchConfig { unsigned gx, gy, gz, bx, by, bz, shared; void* stream; LaunchAttribute* attrs; unsigned numAttrs; };
static_assert(sizeof(LaunchAttribute) == 72 && sizeof(LaunchConfig) == 56, "cuda.h's layouts");
// The cluster dimension a config asks for (1 without the attribute); 0 where it is not one the emulator runs.
unsigned clusterOf(const LaunchConfig* c)
{
    unsigned x = 1;
    for (unsigned i = 0; i < c->numAttrs; i++)
    {
        const auto& a = c->attrs[i];
        if (a.id != 4) return 0;
        if (a.y != 1 || a.z != 1) return 0;
        x = a.x;
    }
    return x;
}
}  // namespace

extern "C"
{
int cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned shared,
                   void*, void** params, void** extra)
{
    return launchChecked("cuLaunchKernel", f, gx, gy, gz, bx, by, bz, shared, params, extra, 1);
}
int cuLaunchKernelEx(const LaunchConfig* c, void* f, void** params, void** extra)
{
    if (!c || (c->numAttrs && !c->attrs)) return fail(kInvalidValue, "cuLaunchKernelEx: no config");
    unsigned cluster = clusterOf(c);
    if (!cluster) return fail(kInvalidValue, "cuLaunchKernelEx: an attribute other than a cluster dimension (x, 1, 1)");
    return launchChecked("cuLaunchKernelEx", f, c->gx, c->gy, c->gz, c->bx, c->by, c->bz, c->shared, params, extra, cluster);
}
// An H100's answer, from the limits of one multiprocessor (228 KB of shared memory, 1 KB of it reserved per block;
// 2048 threads; 32 blocks) times its 132 multiprocessors, over the cluster's size. Registers are not modelled (the
// emulator has no register allocation): a real driver may answer less, and it also keeps a cluster inside one GPC,
// which this ignores. Only the launch's speed depends on the answer (the backends size persistent grids by it) and
// whether a cluster kernel is declared available (none resident: not available).
int cuOccupancyMaxActiveClusters(int* n, void* f, const LaunchConfig* c)
{
    auto* fn = static_cast<Function*>(f);
    if (!fn || !c) return fail(kInvalidValue, "cuOccupancyMaxActiveClusters: no function or config");
    unsigned cluster = clusterOf(c);
    if (!cluster || cluster > 8) return fail(kInvalidValue, "cuOccupancyMaxActiveClusters: not a cluster dimension (x <= 8, 1, 1)");
    if ((int)c->shared > fn->maxShared) return fail(kInvalidValue, "cuOccupancyMaxActiveClusters: more dynamic shared memory than cuFuncSetAttribute allowed");
    if (c->bx == 0 || c->bx > 1024 || c->by != 1 || c->bz != 1) return fail(kInvalidValue, "cuOccupancyMaxActiveClusters: a block of 1..1024 threads along x");
    if ((int)c->bx > fn->maxThreads) { *n = 0; return kOk; }
    constexpr unsigned kSms = 132, kSharedPerSm = 233472, kReservedPerBlock = 1024, kThreadsPerSm = 2048, kBlocksPerSm = 32;
    unsigned perSm = kBlocksPerSm;
    perSm = std::min(perSm, kThreadsPerSm / c->bx);
    perSm = std::min(perSm, kSharedPerSm / (c->shared + kReservedPerBlock));
    *n = (int)(kSms * perSm / cluster);
    return kOk;
}
int cuStreamSynchronize(void*) { return kOk; }   // launches run to completion before they return
int cuEventCreate(void** e, unsigned) { *e = new Event{0}; return kOk; }
int cuEventRecord(void* e, void*) { static_cast<Event*>(e)->ms = nowMs(); return kOk; }
int cuEventSynchronize(void*) { return kOk; }
// Every launch has run by the time it returns, so a recorded event is complete; kv_emu_set_pending_event_queries makes
// the next n queries answer CUDA_ERROR_NOT_READY instead (a test of the timing harness's queued path).
int pendingEventQueries = 0;
int cuEventQuery(void*)
{
    if (pendingEventQueries > 0) { pendingEventQueries--; return 600; }
    return kOk;
}
void kv_emu_set_pending_event_queries(int n) { pendingEventQueries = n; }
int cuEventDestroy_v2(void* e) { delete static_cast<Event*>(e); return kOk; }
int cuEventElapsedTime(float* ms, void* a, void* b)
{
    *ms = (float)(static_cast<Event*>(b)->ms - static_cast<Event*>(a)->ms);
    return kOk;
}
// The maps the emulator implements: rank 3, no interleave, the 128B swizzle, zero fill; f16 / bf16 / f32 elements.
int cuTensorMapEncodeTiled(kv_tensor_map* map, int dataType, unsigned rank, void* address, const unsigned long long* dims,
                           const unsigned long long* strides, const unsigned* box, const unsigned* elementStrides,
                           int interleave, int swizzle, int, int oobFill)
{
    if ((uintptr_t)map % 64) return fail(kInvalidValue, "cuTensorMapEncodeTiled: the map is not 64-byte aligned");
    unsigned elem = dataType == 6 || dataType == 9 ? 2 : dataType == 7 ? 4 : 0;
    if (!elem || rank != 3 || interleave != 0 || swizzle != 3 || oobFill != 0)
        return fail(kInvalidValue, "cuTensorMapEncodeTiled: not a map the emulator implements (rank 3, 128B swizzle, zero fill)");
    for (int i = 0; i < 3; i++)
        if (dims[i] == 0 || dims[i] > (1ull << 32) || box[i] == 0 || box[i] > 256 || elementStrides[i] != 1)
            return fail(kInvalidValue, "cuTensorMapEncodeTiled: a dimension, box or element stride outside the limits");
    if ((uintptr_t)address % 16 || strides[0] % 16 || strides[1] % 16 || box[0] * elem != 128)
        return fail(kInvalidValue, "cuTensorMapEncodeTiled: address or strides not 16-byte aligned, or a box row not 128 bytes");
    kv_emu_encode_tensor_map(map, address, dims, strides, box, elem);
    return kOk;
}
}
