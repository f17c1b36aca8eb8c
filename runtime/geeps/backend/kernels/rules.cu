// Fused update rules of the CuPy backend: one pass over the parameters per update.
//
// They must compute bit for bit what the NumPy twins in geeps/backend_numpy.py compute
// (the servers run the twins). NumPy rounds every float32 operation separately and
// never fuses a multiply into an add, so these kernels use the explicitly rounded
// intrinsics (__fmul_rn, __fadd_rn, ...): nvcc may not contract them into FMAs.
// The operation order follows the twins line by line; scalars (lr, 1-beta1, bias
// corrections) arrive already rounded to float32 by the same host code.

extern "C" __global__ void sgd_update(float* __restrict__ p, const float* __restrict__ g,
                                      long long n, float lr, float wd) {
    const long long step = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        float gi = g[i];
        if (wd != 0.0f) gi = __fadd_rn(gi, __fmul_rn(wd, p[i]));
        p[i] = __fsub_rn(p[i], __fmul_rn(lr, gi));
    }
}

// PyTorch convention: v = mu * v + g; p -= lr * v.
extern "C" __global__ void momentum_update(float* __restrict__ p, const float* __restrict__ g,
                                           float* __restrict__ v, long long n,
                                           float lr, float mu, float wd) {
    const long long step = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        float gi = g[i];
        if (wd != 0.0f) gi = __fadd_rn(gi, __fmul_rn(wd, p[i]));
        const float vi = __fadd_rn(__fmul_rn(mu, v[i]), gi);
        v[i] = vi;
        p[i] = __fsub_rn(p[i], __fmul_rn(lr, vi));
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
        if (wd != 0.0f) gi = __fadd_rn(gi, __fmul_rn(wd, p[i]));
        const float mi = __fadd_rn(__fmul_rn(b1, m[i]), __fmul_rn(one_minus_b1, gi));
        const float vi = __fadd_rn(__fmul_rn(b2, v[i]),
                                   __fmul_rn(__fmul_rn(one_minus_b2, gi), gi));
        m[i] = mi;
        v[i] = vi;
        const float num = __fmul_rn(lr, __fmul_rn(mi, mscale));
        const float den = __fadd_rn(__fsqrt_rn(__fmul_rn(vi, vscale)), eps);
        p[i] = __fsub_rn(p[i], __fdiv_rn(num, den));
    }
}
