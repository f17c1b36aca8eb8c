// host.h: the CUDA sources of geeps/backend/kernels compiled for the CPU with g++.
//
//     g++ -std=c++17 -O2 -shared -fPIC -ffp-contract=off host_module.cpp   (geeps.backend.hostcuda)
//
// where host_module.cpp is `#include "host.h"`, then a .cu file, then one
// GEEPS_HOST_EXPORT(kernel) per kernel. Each export is a C function that runs the
// kernel over a launch grid, as cudaLaunchKernel would, with its arguments passed as
// an array of pointers to their values (CUDA's `void** args`):
//
//     int geeps_launch_<kernel>(const unsigned grid[3], const unsigned block[3], void** args);
//     int geeps_signature_<kernel>(char* kinds, int* sizes, int cap);   // the parameter types
//
// What is emulated, and how:
// - __global__, __device__, __host__, __forceinline__: plain (inline) functions.
// - blockIdx, threadIdx, blockDim, gridDim: per-OS-thread globals set by the launch, which
//   runs every (block, thread) of the grid one after another: z, y, x of the blocks,
//   then z, y, x of the threads. Kernels whose threads never read what another thread
//   of the same launch wrote (every geeps kernel: grid-stride loops over distinct
//   elements) compute what they compute on a GPU. Kernels that need threads to run
//   concurrently (__syncthreads, shared memory, warp intrinsics) are not supported:
//   those names are left undefined, so such a kernel fails to compile here.
// - atomicAdd and friends: the read-modify-write done serially (threads do not overlap).
// - __float_as_uint, __uint_as_float: the bits, unchanged.
// - __fadd_rn, __fsub_rn, __fmul_rn, __fdiv_rn, __fsqrt_rn, __fmaf_rn: IEEE float32
//   operations rounded to nearest. The build uses -ffp-contract=off and no fast-math,
//   so nothing is fused or reassociated, and subnormals are kept (x86-64 SSE arithmetic,
//   FLT_EVAL_METHOD 0, checked below), which is NumPy's float32 arithmetic too.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <type_traits>
#include <utility>

#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
#error "geeps host kernels need float arithmetic evaluated in float (FLT_EVAL_METHOD 0)"
#endif
#if defined(__FAST_MATH__)
#error "geeps host kernels must not be built with -ffast-math (it breaks IEEE rounding)"
#endif

#define GEEPS_HOST 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// __restrict__ is a g++ keyword already.

struct uint3 { unsigned int x, y, z; };
struct dim3 { unsigned int x, y, z; };

static thread_local uint3 blockIdx;
static thread_local uint3 threadIdx;
static thread_local dim3 blockDim;
static thread_local dim3 gridDim;

// ---- intrinsics ------------------------------------------------------------------------
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fsqrt_rn(float a) { return std::sqrt(a); }
static inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
static inline unsigned int __float_as_uint(float x) {
    unsigned int u;
    std::memcpy(&u, &x, sizeof u);
    return u;
}
static inline float __uint_as_float(unsigned int u) {
    float x;
    std::memcpy(&x, &u, sizeof x);
    return x;
}

template <class T> static inline T geeps_host_atomic_add(T* p, T v) {
    const T old = *p;
    *p = old + v;
    return old;
}
static inline float atomicAdd(float* p, float v) { return geeps_host_atomic_add(p, v); }
static inline double atomicAdd(double* p, double v) { return geeps_host_atomic_add(p, v); }
static inline int atomicAdd(int* p, int v) { return geeps_host_atomic_add(p, v); }
static inline unsigned int atomicAdd(unsigned int* p, unsigned int v) {
    return geeps_host_atomic_add(p, v);
}
static inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    return geeps_host_atomic_add(p, v);
}
template <class T> static inline T atomicExch(T* p, T v) {
    const T old = *p;
    *p = v;
    return old;
}
template <class T> static inline T atomicMax(T* p, T v) {
    const T old = *p;
    if (v > old) *p = v;
    return old;
}
template <class T> static inline T atomicMin(T* p, T v) {
    const T old = *p;
    if (v < old) *p = v;
    return old;
}
template <class T> static inline T atomicCAS(T* p, T compare, T v) {
    const T old = *p;
    if (old == compare) *p = v;
    return old;
}

// ---- launches --------------------------------------------------------------------------
namespace geeps_host {

// 'p' pointer, 'f' floating point, 'i' signed integer, 'u' unsigned integer or bool.
template <class T> constexpr char kind() {
    return std::is_pointer<T>::value ? 'p'
         : std::is_floating_point<T>::value ? 'f'
         : std::is_same<T, bool>::value ? 'u'
         : std::is_integral<T>::value ? (std::is_signed<T>::value ? 'i' : 'u')
         : '?';
}

template <class... A, std::size_t... I>
inline void call(void (*k)(A...), void** args, std::index_sequence<I...>) {
    k(*static_cast<A*>(args[I])...);
}

template <class... A>
int launch(void (*k)(A...), const unsigned* grid, const unsigned* block, void** args) {
    gridDim = dim3{grid[0], grid[1], grid[2]};
    blockDim = dim3{block[0], block[1], block[2]};
    if (!grid[0] || !grid[1] || !grid[2] || !block[0] || !block[1] || !block[2])
        return 1;   // CUDA refuses an empty launch (cudaErrorInvalidConfiguration)
    for (unsigned bz = 0; bz < grid[2]; ++bz)
        for (unsigned by = 0; by < grid[1]; ++by)
            for (unsigned bx = 0; bx < grid[0]; ++bx) {
                blockIdx = uint3{bx, by, bz};
                for (unsigned tz = 0; tz < block[2]; ++tz)
                    for (unsigned ty = 0; ty < block[1]; ++ty)
                        for (unsigned tx = 0; tx < block[0]; ++tx) {
                            threadIdx = uint3{tx, ty, tz};
                            call(k, args, std::index_sequence_for<A...>{});
                        }
            }
    return 0;
}

template <class... A>
int signature(void (*)(A...), char* kinds, int* sizes, int cap) {
    const char k[] = {kind<A>()..., 0};
    const int s[] = {static_cast<int>(sizeof(A))..., 0};
    const int n = static_cast<int>(sizeof...(A));
    for (int i = 0; i < n && i < cap; ++i) {
        kinds[i] = k[i];
        sizes[i] = s[i];
    }
    return n;
}

}  // namespace geeps_host

#define GEEPS_HOST_EXPORT(name)                                                          \
    extern "C" int geeps_launch_##name(const unsigned* grid, const unsigned* block,      \
                                       void** args) {                                    \
        return geeps_host::launch(name, grid, block, args);                             \
    }                                                                                    \
    extern "C" int geeps_signature_##name(char* kinds, int* sizes, int cap) {            \
        return geeps_host::signature(name, kinds, sizes, cap);                          \
    }
