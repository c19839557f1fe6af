/* AlphaAdam's step for fp32 CPU tensors: two passes over memory per tensor, all tensors in one call.
 *
 * The update is the one of ``_single_tensor_alphaadam`` (alphaadam.py), element by element, in fp32 with the
 * scalars rounded to fp32 as torch rounds Python floats:
 *
 *     g    = sign * g                                  (sign = -1 under maximize)
 *     phi  = 1(m_prev * g > 0)   [async]   /   1(m * g > 0)   [sync]   /   1   [none, or full first step]
 *     m    = lerp(m_prev, g, 1 - beta1)                (torch's lerp formula)
 *     v    = v * beta2 + ((1 - beta2) * g) * g
 *     u    = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps)   computed as (m * (1/bc1)) / (sqrt(v) * (1/sqrt(bc2)) + eps):
 *                                                      one division instead of three, within an ulp or two
 *     pass A: sum u^2, sum (phi u)^2, sum phi          (accumulated in fp32 blocks of BLOCK, then in fp64)
 *     alpha from the sums (norm / count / none, clamp, 1 when the mask is empty)
 *     pass B: p = p * decay - lr * (alpha * (phi * u)); m, v written back
 *
 * Pass A reads m, v, g and writes nothing (it is compute-bound on AVX2 with three divisions: the reciprocals
 * make it memory-bound); pass B reads p, g, m, v again and writes p, m, v: 10 reads/writes
 * per element. Work is split over ``threads`` POSIX threads: a tensor of at least SPLIT_MIN elements is cut
 * into one contiguous slice per thread (each thread's slice is read by pass A and pass B on the same core, so
 * the second pass finds it in cache where it fits); smaller tensors go whole to one thread each.
 *
 * Entry points (``mode``): STEP runs pass A, alpha and pass B per tensor; SUMS only pass A (the caller adds the
 * sums over shards); APPLY only pass B with the caller's alpha and decay. ``momentum_free`` (APPLY only) is the
 * step of AdaPM's blocks without a first moment: u = g / (sqrt(v) / sqrt(bc2) + eps), one pass, m not touched.
 * Built by ``_native.py`` with -O3 -ffp-contract=off -fno-math-errno (no FMA contraction: the same roundings as
 * the eager reference).
 */

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 2048
#define SPLIT_MIN (1 << 16)
#define APPLY_CHUNK (1 << 14)
#define MAX_THREADS 256

enum { MODE_STEP = 0, MODE_SUMS = 1, MODE_APPLY = 2 };
enum { MASK_ASYNC = 0, MASK_SYNC = 1, MASK_NONE = 2 };
enum { ALPHA_NORM = 0, ALPHA_COUNT = 1, ALPHA_NONE = 2 };

typedef struct {
    double lr, beta1, beta2, eps, weight_decay, alpha_max; /* alpha_max <= 0: no clamp */
    int32_t mask, alpha, first_step_full, maximize, threads, mode;
    int32_t momentum_free; /* APPLY only: no first moment (m unused), u = g / (sqrt(v) / sqrt(bc2) + eps) */
} Options;

typedef struct {
    int64_t n;
    float *const *p;
    const float *const *g;
    float *const *m;
    float *const *v;
    const int64_t *numel;       /* local element count of each tensor */
    const double *whole_numel;  /* the whole (unsharded) tensor's count, for alpha="count" */
    const double *steps;        /* each tensor's step t, already incremented */
    const Options *opt;
    double *sums;               /* out [n][3]: STEP / SUMS */
    float *alpha;               /* out [n] (STEP) / in [n] (APPLY) */
    const float *decay;         /* in [n] (APPLY) */
    int threads;
    const int64_t *owner;       /* [n]: the thread of a whole tensor, -1 for split tensors */
    double *partial;            /* [n][threads][3]: per-thread sums of split tensors */
    atomic_int barrier_count;
    atomic_int barrier_sense;
    atomic_int go;              /* 0 while threads start, 1 to run, -1 to abort (a thread failed to start) */
} Job;

typedef struct {
    float w, one_minus_w, beta2, one_minus_beta2, bc2_sqrt, inv_bc1, inv_bc2_sqrt, eps, sign;
    int full, async_mask, small_weight;
} Scalars;

static Scalars scalars_for(const Job *job, int64_t i) {
    const Options *o = job->opt;
    double step = job->steps[i];
    Scalars s;
    s.w = (float)(1.0 - o->beta1);
    s.one_minus_w = 1.0f - s.w;
    s.small_weight = fabsf(s.w) < 0.5f;
    s.beta2 = (float)o->beta2;
    s.one_minus_beta2 = (float)(1.0 - o->beta2);
    s.bc2_sqrt = (float)sqrt(1.0 - pow(o->beta2, step));
    s.inv_bc1 = 1.0f / (float)(1.0 - pow(o->beta1, step));
    s.inv_bc2_sqrt = 1.0f / s.bc2_sqrt;
    s.eps = (float)o->eps;
    s.sign = o->maximize ? -1.0f : 1.0f;
    s.full = o->mask == MASK_NONE || (o->first_step_full && step == 1.0);
    s.async_mask = o->mask == MASK_ASYNC;
    return s;
}

/* torch's lerp: start + w * (end - start) for |w| < 0.5, else end - (end - start) * (1 - w). The kernels below
 * are inlined with the mode flags as constants (``small_weight``, ``async_mask``), so that the element loops have
 * no branches and vectorize. */
#define INLINE static inline __attribute__((always_inline))

INLINE float lerp(float start, float end, const Scalars *s, const int small_weight) {
    return small_weight ? start + s->w * (end - start) : end - (end - start) * s->one_minus_w;
}

/* phi as 0/1: sign agreement of ``source`` and ``g``, or 1 everywhere when ``full`` (no branch) */
INLINE float agreement(float source, float gk, int full) { return (float)((source * gk > 0.0f) | full); }

/* one element of step t: the new moments, the direction u and the mask phi (the update rule at the top) */
typedef struct {
    float m, v, u, phi;
} Element;

INLINE Element element(const Scalars *restrict s, float m_prev, float v_prev, float g_raw, const int async_mask,
                       const int small_weight) {
    Element e;
    const float gk = s->sign * g_raw;
    e.m = lerp(m_prev, gk, s, small_weight);
    e.v = v_prev * s->beta2 + (s->one_minus_beta2 * gk) * gk;
    e.u = (e.m * s->inv_bc1) / (sqrtf(e.v) * s->inv_bc2_sqrt + s->eps);
    e.phi = agreement(async_mask ? m_prev : e.m, gk, s->full);
    return e;
}

INLINE void sums_norm_kernel(const Scalars *restrict s, const float *restrict m, const float *restrict v,
                             const float *restrict g, int64_t lo, int64_t hi, double out[3],
                             const int async_mask, const int small_weight) {
    double total_u = 0.0, total_masked = 0.0, total_phi = 0.0;
    for (int64_t start = lo; start < hi; start += BLOCK) {
        const int64_t end = start + BLOCK < hi ? start + BLOCK : hi;
        float sum_u = 0.0f, sum_masked = 0.0f, sum_phi = 0.0f;
#pragma omp simd reduction(+ : sum_u, sum_masked, sum_phi)
        for (int64_t k = start; k < end; k++) {
            const Element e = element(s, m[k], v[k], g[k], async_mask, small_weight);
            const float masked = e.phi * e.u;
            sum_u += e.u * e.u;
            sum_masked += masked * masked;
            sum_phi += e.phi;
        }
        total_u += sum_u;
        total_masked += sum_masked;
        total_phi += sum_phi;
    }
    out[0] = total_u, out[1] = total_masked, out[2] = total_phi;
}

/* alpha "count" / "none": only sum phi; v is not read */
INLINE void sums_count_kernel(const Scalars *restrict s, const float *restrict m, const float *restrict g,
                              int64_t lo, int64_t hi, double out[3], const int async_mask,
                              const int small_weight) {
    double total_phi = 0.0;
    const float sign = s->sign;
    const int full = s->full;
    for (int64_t start = lo; start < hi; start += BLOCK) {
        const int64_t end = start + BLOCK < hi ? start + BLOCK : hi;
        float sum_phi = 0.0f;
#pragma omp simd reduction(+ : sum_phi)
        for (int64_t k = start; k < end; k++) {
            const float gk = sign * g[k];
            const float m_prev = m[k];
            sum_phi += agreement(async_mask ? m_prev : lerp(m_prev, gk, s, small_weight), gk, full);
        }
        total_phi += sum_phi;
    }
    out[0] = 0.0, out[1] = 0.0, out[2] = total_phi;
}

INLINE void apply_kernel(const Scalars *restrict s, float *restrict p, float *restrict m, float *restrict v,
                         const float *restrict g, int64_t lo, int64_t hi, float lr, float alpha, float decay,
                         const int async_mask, const int small_weight) {
#pragma omp simd
    for (int64_t k = lo; k < hi; k++) {
        const Element e = element(s, m[k], v[k], g[k], async_mask, small_weight);
        p[k] = p[k] * decay - lr * (alpha * (e.phi * e.u));
        m[k] = e.m;
        v[k] = e.v;
    }
}

/* AdaPM's blocks without momentum: u = g / (sqrt(v / bc2) + eps), never masked; v written back, m not used */
INLINE void apply_momentum_free_kernel(const Scalars *restrict s, float *restrict p, float *restrict v,
                                       const float *restrict g, int64_t lo, int64_t hi, float lr, float alpha,
                                       float decay) {
    const float sign = s->sign, beta2 = s->beta2, one_minus_beta2 = s->one_minus_beta2, bc2_sqrt = s->bc2_sqrt,
                eps = s->eps;
#pragma omp simd
    for (int64_t k = lo; k < hi; k++) {
        const float gk = sign * g[k];
        const float v_new = v[k] * beta2 + (one_minus_beta2 * gk) * gk;
        const float u = gk / (sqrtf(v_new) / bc2_sqrt + eps);
        p[k] = p[k] * decay - lr * (alpha * u);
        v[k] = v_new;
    }
}

/* one call of a kernel with the two mode flags as compile-time constants */
#define DISPATCH(call, async_mask, small_weight)                       \
    do {                                                               \
        if (async_mask) {                                              \
            if (small_weight) call(1, 1); else call(1, 0);             \
        } else {                                                       \
            if (small_weight) call(0, 1); else call(0, 0);             \
        }                                                              \
    } while (0)

/* pass A over [lo, hi) of tensor i: out = (sum u^2, sum (phi u)^2, sum phi) */
static void range_sums(const Job *job, int64_t i, int64_t lo, int64_t hi, double out[3]) {
    const Scalars s = scalars_for(job, i);
    const float *m = job->m[i], *v = job->v[i], *g = job->g[i];
    if (job->opt->alpha == ALPHA_NORM) {
#define CALL(a, w) sums_norm_kernel(&s, m, v, g, lo, hi, out, a, w)
        DISPATCH(CALL, s.async_mask, s.small_weight);
#undef CALL
    } else {
#define CALL(a, w) sums_count_kernel(&s, m, g, lo, hi, out, a, w)
        DISPATCH(CALL, s.async_mask, s.small_weight);
#undef CALL
    }
}

/* pass B over [lo, hi) of tensor i, in chunks from the end: the end of the range is what pass A read last, so
 * the first chunks still find m, v and g in cache when the range is larger than the cache */
static void range_apply(const Job *job, int64_t i, int64_t lo, int64_t hi, float alpha, float decay) {
    const Scalars s = scalars_for(job, i);
    const float lr = (float)job->opt->lr;
    for (int64_t end = hi; end > lo; end -= APPLY_CHUNK) {
        const int64_t start = end - APPLY_CHUNK > lo ? end - APPLY_CHUNK : lo;
        if (job->opt->momentum_free) {
            apply_momentum_free_kernel(&s, job->p[i], job->v[i], job->g[i], start, end, lr, alpha, decay);
            continue;
        }
#define CALL(a, w) apply_kernel(&s, job->p[i], job->m[i], job->v[i], job->g[i], start, end, lr, alpha, decay, a, w)
        DISPATCH(CALL, s.async_mask, s.small_weight);
#undef CALL
    }
}

/* The step rules (``_masking.step_scale``), the kernel's one copy of them: alpha from the sums (norm / count /
 * none, the clamp, 1 when the mask is empty) and the decay factor (1 - lr wd, or 1 where the mask is empty: such a
 * tensor is not moved). In fp32 as the reference. ``alphaadam_rule_f32`` exposes them for the test that feeds
 * this and the Python rule the same sums. */
static float alpha_of(const Job *job, int64_t i, const double sums[3]) {
    const Options *o = job->opt;
    const float sq_u = (float)sums[0], sq_masked = (float)sums[1], count = (float)sums[2];
    float value = 1.0f;
    if (o->alpha == ALPHA_NORM) {
        value = sq_masked > 0.0f ? sqrtf(sq_u / sq_masked) : 1.0f;
    } else if (o->alpha == ALPHA_COUNT) {
        value = (float)job->whole_numel[i] / (count + 1.0f);
    }
    if (o->alpha_max > 0.0 && value > (float)o->alpha_max) value = (float)o->alpha_max;
    return count > 0.0f ? value : 1.0f;
}

static float decay_of(const Job *job, const double sums[3]) {
    const float moved = sums[2] > 0.0 ? 1.0f : 0.0f;
    return 1.0f - (float)(job->opt->lr * job->opt->weight_decay) * moved;
}

/* sums of a mask="none" tensor without reading it: phi = 1, and alpha "norm" is exactly 1 (the sums of u^2 and
 * (phi u)^2 are equal); (1, 1, numel) keeps that ratio when the caller adds the sums of several shards */
static int skip_pass_a(const Job *job) { return job->opt->mask == MASK_NONE; }

static void whole_tensor(Job *job, int64_t i) {
    const int64_t n = job->numel[i];
    double sums[3] = {1.0, 1.0, (double)n};
    const int mode = job->opt->mode;
    if (mode != MODE_APPLY) {
        if (!skip_pass_a(job)) range_sums(job, i, 0, n, sums);
        memcpy(job->sums + 3 * i, sums, sizeof sums);
    }
    if (mode == MODE_STEP) {
        const float alpha = alpha_of(job, i, sums);
        job->alpha[i] = alpha;
        range_apply(job, i, 0, n, alpha, decay_of(job, sums));
    } else if (mode == MODE_APPLY) {
        range_apply(job, i, 0, n, job->alpha[i], job->decay[i]);
    }
}

static void barrier_wait(Job *job, int *sense) {
    *sense = !*sense;
    if (atomic_fetch_add(&job->barrier_count, 1) == job->threads - 1) {
        atomic_store(&job->barrier_count, 0);
        atomic_store(&job->barrier_sense, *sense);
    } else {
        int spins = 0;
        while (atomic_load(&job->barrier_sense) != *sense) {
            if (++spins > 2000) sched_yield(); /* an oversubscribed machine: let the others run */
        }
    }
}

typedef struct {
    Job *job;
    int thread;
} Worker;

static void *work(void *arg) {
    const Worker *worker = arg;
    Job *job = worker->job;
    const int t = worker->thread, threads = job->threads;
    const int mode = job->opt->mode;
    int sense = 0, spins = 0;
    while (atomic_load(&job->go) == 0) {
        if (++spins > 2000) sched_yield();
    }
    if (atomic_load(&job->go) < 0) return NULL;
    for (int64_t i = 0; i < job->n; i++) { /* whole tensors first: no waiting on the others */
        if (job->owner[i] == t) whole_tensor(job, i);
    }
    for (int64_t i = 0; i < job->n; i++) {
        if (job->owner[i] != -1) continue;
        const int64_t n = job->numel[i];
        const int64_t lo = n * t / threads, hi = n * (t + 1) / threads;
        double *mine = job->partial + 3 * (i * threads + t);
        if (mode != MODE_APPLY) {
            mine[0] = 1.0, mine[1] = 1.0, mine[2] = (double)(hi - lo);
            if (!skip_pass_a(job)) range_sums(job, i, lo, hi, mine);
        }
        if (mode == MODE_STEP) {
            barrier_wait(job, &sense);
            double sums[3] = {0.0, 0.0, 0.0};
            for (int k = 0; k < threads; k++) { /* the same order on every thread: the same alpha */
                for (int c = 0; c < 3; c++) sums[c] += job->partial[3 * (i * threads + k) + c];
            }
            if (skip_pass_a(job)) sums[0] = sums[1] = 1.0;
            const float alpha = alpha_of(job, i, sums);
            if (t == 0) {
                job->alpha[i] = alpha;
                memcpy(job->sums + 3 * i, sums, sizeof sums);
            }
            range_apply(job, i, lo, hi, alpha, decay_of(job, sums));
        } else if (mode == MODE_APPLY) {
            range_apply(job, i, lo, hi, job->alpha[i], job->decay[i]);
        }
    }
    return NULL;
}

/* alpha [n] and decay [n] from sums [n][3] and the whole tensors' counts, by the rules above. */
int alphaadam_rule_f32(int64_t n, const double *sums, const double *whole_numel, const Options *opt, float *alpha,
                       float *decay) {
    if (n < 0 || opt == NULL || (n > 0 && (sums == NULL || whole_numel == NULL || alpha == NULL || decay == NULL)))
        return -1;
    Job job = {.n = n, .whole_numel = whole_numel, .opt = opt};
    for (int64_t i = 0; i < n; i++) {
        alpha[i] = alpha_of(&job, i, sums + 3 * i);
        decay[i] = decay_of(&job, sums + 3 * i);
    }
    return 0;
}

/* Returns 0 on success, a negative number on a bad argument or a failed thread start. */
int alphaadam_cpu_f32(int64_t n, float *const *p, const float *const *g, float *const *m, float *const *v,
                      const int64_t *numel, const double *whole_numel, const double *steps, const Options *opt,
                      double *sums, float *alpha, const float *decay) {
    if (n < 0 || opt == NULL || opt->mode < MODE_STEP || opt->mode > MODE_APPLY) return -1;
    if (opt->momentum_free && opt->mode != MODE_APPLY) return -1;
    if (n == 0) return 0;
    int64_t total = 0;
    for (int64_t i = 0; i < n; i++) total += numel[i];
    int threads = opt->threads < 1 ? 1 : (opt->threads > MAX_THREADS ? MAX_THREADS : opt->threads);
    if (total / SPLIT_MIN < threads) threads = total / SPLIT_MIN > 1 ? (int)(total / SPLIT_MIN) : 1;

    int64_t *owner = malloc(sizeof(int64_t) * n);
    double *partial = calloc((size_t)(3 * n * threads), sizeof(double));
    int64_t *load = calloc((size_t)threads, sizeof(int64_t));
    if (owner == NULL || partial == NULL || load == NULL) {
        free(owner), free(partial), free(load);
        return -2;
    }
    for (int64_t i = 0; i < n; i++) { /* whole tensors to the least-loaded thread, in order */
        if (threads > 1 && numel[i] >= SPLIT_MIN) {
            owner[i] = -1;
            continue;
        }
        int best = 0;
        for (int t = 1; t < threads; t++) best = load[t] < load[best] ? t : best;
        owner[i] = best;
        load[best] += numel[i];
    }

    Job job = {.n = n, .p = p, .g = g, .m = m, .v = v, .numel = numel, .whole_numel = whole_numel,
               .steps = steps, .opt = opt, .sums = sums, .alpha = alpha, .decay = decay, .threads = threads,
               .owner = owner, .partial = partial};
    atomic_init(&job.barrier_count, 0);
    atomic_init(&job.barrier_sense, 0);
    atomic_init(&job.go, 0);
    Worker workers[MAX_THREADS];
    pthread_t handles[MAX_THREADS];
    int started = 1, status = 0;
    for (int t = 1; t < threads; t++, started++) {
        workers[t] = (Worker){&job, t};
        if (pthread_create(&handles[t], NULL, work, &workers[t]) != 0) break;
    }
    if (started < threads) status = -3; /* the split tensors' barriers would never open: run nothing */
    atomic_store(&job.go, status == 0 ? 1 : -1);
    if (status == 0) {
        workers[0] = (Worker){&job, 0};
        work(&workers[0]);
    }
    for (int t = 1; t < started; t++) pthread_join(handles[t], NULL);
    if (opt->mode == MODE_SUMS) { /* split tensors: add the per-thread sums */
        for (int64_t i = 0; status == 0 && i < n; i++) {
            if (owner[i] != -1) continue;
            for (int c = 0; c < 3; c++) {
                double total_c = 0.0;
                for (int t = 0; t < threads; t++) total_c += partial[3 * (i * threads + t) + c];
                sums[3 * i + c] = total_c;
            }
            if (skip_pass_a(&job)) sums[3 * i] = sums[3 * i + 1] = 1.0;
        }
    }
    free(owner), free(partial), free(load);
    return status;
}

/* ------------------------------------------------------------------------------------------------------------
 * AdaPM's element-wise tail for a low-rank / full / momentum-free tensor without mask and alpha (AdaPM's default):
 *
 *     v = v * beta2 + ((1 - beta2) * g) * g;     p = p * decay + coef * (used / (sqrt(v) + eps_scaled))
 *
 * or, with a compact second moment (second_moment="mini": ``denom`` given, v and g not touched), with the
 * caller's per-row denominators d (canonical rows: along each run of a transposed weight, one per run otherwise):
 *
 *     p = p * decay + coef * (used / d)
 *
 * over "regions": row segments of the canonical matrix, each a set of ``n_runs`` equally long contiguous runs
 * (rows of a row-major matrix, columns of a transposed one) with a run stride per array. ``used`` is the
 * segment's momentum (the low-rank block's m~, the full m, or g itself); ``coef = -lr sqrt(bc2) / bc1`` and
 * ``eps_scaled = eps sqrt(bc2)`` (adapm._structured_step's folded bias corrections). No reductions: the runs are
 * simply shared out over the threads.
 */
typedef struct {
    float *p;
    const float *g;
    float *v;
    const float *used;
    int64_t p_stride, g_stride, v_stride, used_stride; /* elements between consecutive runs */
    int64_t n_runs, run_len;
    float coef, decay, eps_scaled, beta2, one_minus_beta2;
    const float *denom;            /* NULL: Adam's v above; else the compact v's denominators */
    int64_t denom_stride, denom_run_stride; /* denom[k * denom_stride + j * denom_run_stride]: (1, 0) or (0, 1) */
} Region;

typedef struct {
    const Region *regions;
    int64_t n_regions;
    int threads, thread;
} TailWorker;

INLINE void tail_run(const Region *r, float *restrict p, const float *restrict g, float *restrict v,
                     const float *restrict used, int64_t lo, int64_t hi) {
    const float beta2 = r->beta2, one_minus_beta2 = r->one_minus_beta2, eps = r->eps_scaled, coef = r->coef,
                decay = r->decay;
#pragma omp simd
    for (int64_t k = lo; k < hi; k++) {
        const float gk = g[k];
        const float v_new = v[k] * beta2 + (one_minus_beta2 * gk) * gk;
        v[k] = v_new;
        p[k] = p[k] * decay + coef * (used[k] / (sqrtf(v_new) + eps));
    }
}

/* one run j of a region: Adam's v, or the compact v's denominators (one per element of the run, or one per run) */
static void region_run(const Region *r, int64_t j, int64_t lo, int64_t hi) {
    float *p = r->p + j * r->p_stride;
    const float *used = r->used + j * r->used_stride;
    if (r->denom == NULL) {
        tail_run(r, p, r->g + j * r->g_stride, r->v + j * r->v_stride, used, lo, hi);
        return;
    }
    const float coef = r->coef, decay = r->decay;
    if (r->denom_stride == 0) {
        const float d = r->denom[j * r->denom_run_stride];
#pragma omp simd
        for (int64_t k = lo; k < hi; k++) p[k] = p[k] * decay + coef * (used[k] / d);
    } else {
        const float *restrict d = r->denom + j * r->denom_run_stride;
#pragma omp simd
        for (int64_t k = lo; k < hi; k++) p[k] = p[k] * decay + coef * (used[k] / d[k * r->denom_stride]);
    }
}

static void *tail_work(void *arg) {
    const TailWorker *w = arg;
    int same_runs = w->n_regions > 0 && w->regions[0].n_runs >= w->threads;
    for (int64_t i = 1; same_runs && i < w->n_regions; i++) same_runs = w->regions[i].n_runs == w->regions[0].n_runs;
    if (same_runs) {
        /* the segments of one tensor side by side (e.g. q | k | v of a transposed c_attn: run j of every segment
         * is one column, contiguous in p, g and v): run j of every region in turn, so memory is read in order */
        const int64_t n_runs = w->regions[0].n_runs;
        const int64_t first = n_runs * w->thread / w->threads, last = n_runs * (w->thread + 1) / w->threads;
        for (int64_t j = first; j < last; j++) {
            for (int64_t i = 0; i < w->n_regions; i++) region_run(&w->regions[i], j, 0, w->regions[i].run_len);
        }
        return NULL;
    }
    for (int64_t i = 0; i < w->n_regions; i++) {
        const Region *r = &w->regions[i];
        if (r->n_runs >= w->threads) { /* whole runs per thread */
            const int64_t first = r->n_runs * w->thread / w->threads, last = r->n_runs * (w->thread + 1) / w->threads;
            for (int64_t j = first; j < last; j++) region_run(r, j, 0, r->run_len);
        } else { /* few long runs: cut each one */
            const int64_t lo = r->run_len * w->thread / w->threads, hi = r->run_len * (w->thread + 1) / w->threads;
            for (int64_t j = 0; j < r->n_runs; j++) region_run(r, j, lo, hi);
        }
    }
    return NULL;
}

/* Returns 0 on success, -1 on a bad argument. A thread that fails to start has its share run by the caller. */
int adapm_tail_f32(int64_t n_regions, const Region *regions, int32_t threads) {
    if (n_regions < 0 || (n_regions > 0 && regions == NULL)) return -1;
    int64_t total = 0;
    for (int64_t i = 0; i < n_regions; i++) total += regions[i].n_runs * regions[i].run_len;
    threads = threads < 1 ? 1 : (threads > MAX_THREADS ? MAX_THREADS : threads);
    if (total / SPLIT_MIN < threads) threads = total / SPLIT_MIN > 1 ? (int)(total / SPLIT_MIN) : 1;
    TailWorker workers[MAX_THREADS];
    pthread_t handles[MAX_THREADS];
    for (int t = 0; t < threads; t++) workers[t] = (TailWorker){regions, n_regions, threads, t};
    int started = 1;
    for (int t = 1; t < threads; t++, started++) {
        if (pthread_create(&handles[t], NULL, tail_work, &workers[t]) != 0) break;
    }
    if (started < threads) { /* run the missing workers' shares here: each share is independent */
        for (int t = started; t < threads; t++) tail_work(&workers[t]);
    }
    tail_work(&workers[0]);
    for (int t = 1; t < started; t++) pthread_join(handles[t], NULL);
    return 0;
}
