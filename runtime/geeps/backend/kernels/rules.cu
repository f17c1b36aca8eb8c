// Fused update rules of the CuPy backend: one pass over the parameters per update.
//
// A parameter-server shard runs them on rows it keeps in device memory
// (GEEPS_SERVER_BACKEND=cupy, geeps/server/rules.py), or the NumPy twins in
// geeps/backend/numpy_backend.py on its host rows, and both must give the same bits.
// NumPy rounds every float32 operation separately, never fuses a multiply into an
// add and keeps subnormals, so these kernels use the
// f32_* operations below, each one PTX instruction rounded to nearest (.rn: never
// contracted into an FMA) and without .ftz: CuPy compiles RawModules with -ftz=true
// appended after our options, under which __fadd_rn & co. become add.rn.ftz.f32 and
// flush subnormals (Adam's v = (1-b2) g g is subnormal for any |g| below ~1e-19).
// The operation order follows the twins line by line; scalars (lr, 1-beta1, bias
// corrections) arrive already rounded to float32 by the same host code.
//
// The tests also compile this file for the CPU (kernels/host.h) and run it there.

#if defined(__CUDA_ARCH__)
__device__ __forceinline__ float f32_add(float a, float b) {
    float r;
    asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
__device__ __forceinline__ float f32_sub(float a, float b) {
    float r;
    asm("sub.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
__device__ __forceinline__ float f32_mul(float a, float b) {
    float r;
    asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
__device__ __forceinline__ float f32_div(float a, float b) {
    float r;
    asm("div.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}
__device__ __forceinline__ float f32_sqrt(float a) {
    float r;
    asm("sqrt.rn.f32 %0, %1;" : "=f"(r) : "f"(a));
    return r;
}
#else
__device__ __forceinline__ float f32_add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float f32_sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float f32_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float f32_div(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ float f32_sqrt(float a) { return __fsqrt_rn(a); }
#endif

// x != 0 on the bits (-0 counts as zero): `x != 0.0f` becomes setp.neu.ftz.f32 under
// -ftz=true, which would take a subnormal weight decay for zero.
__device__ __forceinline__ bool f32_nonzero(float x) {
    return (__float_as_uint(x) & 0x7fffffffu) != 0u;
}

extern "C" __global__ void sgd_update(float* __restrict__ p, const float* __restrict__ g,
                                      long long n, float lr, float wd) {
    const long long step = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        float gi = g[i];
        if (f32_nonzero(wd)) gi = f32_add(gi, f32_mul(wd, p[i]));
        p[i] = f32_sub(p[i], f32_mul(lr, gi));
    }
}

// PyTorch convention: v = mu * v + g; p -= lr * v.
extern "C" __global__ void momentum_update(float* __restrict__ p, const float* __restrict__ g,
                                           float* __restrict__ v, long long n,
                                           float lr, float mu, float wd) {
    const long long step = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        float gi = g[i];
        if (f32_nonzero(wd)) gi = f32_add(gi, f32_mul(wd, p[i]));
        const float vi = f32_add(f32_mul(mu, v[i]), gi);
        v[i] = vi;
        p[i] = f32_sub(p[i], f32_mul(lr, vi));
    }
}

// Bias-corrected Adam (Kingma & Ba, Algorithm 1):
//   m = b1*m + (1-b1)*g;  v = b2*v + ((1-b2)*g)*g
//   p -= (lr * (m*mscale)) / (sqrt(v*vscale) + eps),  mscale = 1/(1-b1^t), vscale = 1/(1-b2^t)
extern "C" __global__ void adam_update(float* __restrict__ p, const float* __restrict__ g,
                                       float* __restrict__ m, float* __restrict__ v,
                                       long long n, float lr, float b1, float one_minus_b1,
                                       float b2, float one_minus_b2, float mscale,
                                       float vscale, float eps, float wd) {
    const long long step = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        float gi = g[i];
        if (f32_nonzero(wd)) gi = f32_add(gi, f32_mul(wd, p[i]));
        const float mi = f32_add(f32_mul(b1, m[i]), f32_mul(one_minus_b1, gi));
        const float vi = f32_add(f32_mul(b2, v[i]), f32_mul(f32_mul(one_minus_b2, gi), gi));
        m[i] = mi;
        v[i] = vi;
        const float num = f32_mul(lr, f32_mul(mi, mscale));
        const float den = f32_add(f32_sqrt(f32_mul(vi, vscale)), eps);
        p[i] = f32_sub(p[i], f32_div(num, den));
    }
}
