// Batched row kernels of the CuPy backend (loaded with cupy.RawModule; NumPy twins in
// geeps/backend/numpy_backend.py compute the same function).
//
// Every operation of a recorded sequence moves a whole set of rows with ONE launch,
// using index arrays built once at the end of the virtual iteration. Rows are
// `width` float32 values; a 2-D array of rows has row stride `width`.
//
// Scatter kernels do not use atomics: the planner guarantees the destination rows of
// one launch are distinct, so each element is written by exactly one thread and the
// result is deterministic (the same bits as the NumPy twin).
//
// The tests also compile this file for the CPU (kernels/host.h) and run it there.

// One float32 addition rounded to nearest, subnormals kept, as NumPy adds. CuPy compiles
// with -ftz=true appended after our options, under which __fadd_rn becomes
// add.rn.ftz.f32 (subnormals flushed to zero); explicit PTX is what we asked for.
#if defined(__CUDA_ARCH__)
__device__ __forceinline__ float f32_add(float a, float b) {
    float r;
    asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
#else
__device__ __forceinline__ float f32_add(float a, float b) { return __fadd_rn(a, b); }
#endif

extern "C" __global__ void gather_rows(const float* __restrict__ src,
                                       const long long* __restrict__ idx,
                                       float* __restrict__ out,
                                       long long n, long long width) {
    const long long total = n * width;
    const long long step = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        const long long r = i / width;
        const long long c = i - r * width;
        out[i] = src[idx[r] * width + c];
    }
}

extern "C" __global__ void scatter_rows(float* __restrict__ dst,
                                        const long long* __restrict__ idx,
                                        const float* __restrict__ src,
                                        long long n, long long width) {
    const long long total = n * width;
    const long long step = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        const long long r = i / width;
        const long long c = i - r * width;
        dst[idx[r] * width + c] = src[i];
    }
}

extern "C" __global__ void scatter_add_rows(float* __restrict__ dst,
                                            const long long* __restrict__ idx,
                                            const float* __restrict__ src,
                                            long long n, long long width) {
    const long long total = n * width;
    const long long step = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        const long long r = i / width;
        const long long c = i - r * width;
        const long long j = idx[r] * width + c;
        dst[j] = f32_add(dst[j], src[i]);
    }
}

// dst[didx[r]] = src[sidx[r]]: one launch for a row move whose source and destination
// are both scattered (a read that mixes rows of several pinned segments).
extern "C" __global__ void move_rows(const float* __restrict__ src,
                                     const long long* __restrict__ sidx,
                                     float* __restrict__ dst,
                                     const long long* __restrict__ didx,
                                     long long n, long long width) {
    const long long total = n * width;
    const long long step = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += step) {
        const long long r = i / width;
        const long long c = i - r * width;
        dst[didx[r] * width + c] = src[sidx[r] * width + c];
    }
}
