/*
 * linalg_cpu: the fast double-precision linear algebra of kernels/linalg.h.
 *
 * One packed GEMM serves everything: per K chunk of DKC, A is packed into DMR-row panels and B
 * into DNR-column panels (in parallel), then tasks over DMB-row blocks sweep the 6x8 double
 * micro-kernel (twelve 4-double accumulators, two B vectors and one broadcast: the 16 AVX
 * registers). The lower Cholesky is right-looking and blocked (LA_NB): factor the diagonal block
 * with the reference loops, L21 = A21 L11^-T through the explicit inverse of the small L11 (a
 * GEMM), A22 -= L21 L21^T on the lower triangle only. The triangular inverse is LAPACK's dtrtri
 * (lower, blocked from the bottom): X21 = -X22 L21 X11. The Cholesky solve runs forward and
 * backward substitution over column chunks of B in parallel.
 *
 * Scratch (par_scratch of the calling thread): slot 0 the A panels, slot 1 the B panels, slot 2
 * the block that feeds the GEMMs (L21 or X22 L21), slot 3 the small inverse L11^-1.
 */
#include "kernels/linalg.h"

#include <errno.h>
#include <math.h>
#include <string.h>

#include "kernels/par.h"

#pragma GCC diagnostic ignored "-Wpsabi"

typedef double v4d __attribute__((vector_size(32)));

#define DMR          6   /* micro-tile rows */
#define DNR          8   /* micro-tile columns (two 4-double vectors) */
#define DKC          256 /* K chunk packed at once */
#define DMB          48  /* rows per task: 8 micro-panels */
#define LA_NB        128 /* factorization block */

#define SLOT_AP      0
#define SLOT_BP      1
#define SLOT_S       2
#define SLOT_T       3

#define LA_MIN(a, b) ((a) < (b) ? (a) : (b))
#define LA_MAX(a, b) ((a) > (b) ? (a) : (b))

static inline v4d ld4(const double *p)
{
    v4d v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static inline void st4(double *p, v4d v)
{
    memcpy(p, &v, sizeof(v));
}

/* t[6][8] = sum_k a[k][0..6) (x) b[k][0..8) over packed panels. */
static void dk(int kc, const double *restrict a, const double *restrict b, double *restrict t)
{
    v4d c00 = { 0 }, c01 = { 0 }, c10 = { 0 }, c11 = { 0 }, c20 = { 0 }, c21 = { 0 };
    v4d c30 = { 0 }, c31 = { 0 }, c40 = { 0 }, c41 = { 0 }, c50 = { 0 }, c51 = { 0 };
    for (int k = 0; k < kc; k++) {
        v4d b0 = ld4(b), b1 = ld4(b + 4), x;
        x = (v4d){ a[0], a[0], a[0], a[0] };
        c00 += x * b0;
        c01 += x * b1;
        x = (v4d){ a[1], a[1], a[1], a[1] };
        c10 += x * b0;
        c11 += x * b1;
        x = (v4d){ a[2], a[2], a[2], a[2] };
        c20 += x * b0;
        c21 += x * b1;
        x = (v4d){ a[3], a[3], a[3], a[3] };
        c30 += x * b0;
        c31 += x * b1;
        x = (v4d){ a[4], a[4], a[4], a[4] };
        c40 += x * b0;
        c41 += x * b1;
        x = (v4d){ a[5], a[5], a[5], a[5] };
        c50 += x * b0;
        c51 += x * b1;
        a += DMR;
        b += DNR;
    }
    st4(t + 0, c00);
    st4(t + 4, c01);
    st4(t + 8, c10);
    st4(t + 12, c11);
    st4(t + 16, c20);
    st4(t + 20, c21);
    st4(t + 24, c30);
    st4(t + 28, c31);
    st4(t + 32, c40);
    st4(t + 36, c41);
    st4(t + 40, c50);
    st4(t + 44, c51);
}

/* ---- packed GEMM ------------------------------------------------------------------------------
 */

struct dgemm {
    int M, N, K;
    double alpha;
    const double *A, *B;
    size_t lda, ldb;
    double *C;
    size_t ldc;
    int ta, tb, a_lower, c_lower;
};

struct dgemm_job {
    const struct dgemm *g;
    double *ap, *bp;
    int k0, kc, npa, npb, nrb;
};

static void pack_task(void *arg, int task, int tid)
{
    const struct dgemm_job *j = arg;
    const struct dgemm *g = j->g;
    (void)tid;
    if (task < j->npa) {
        int i0 = task * DMR, mr = LA_MIN(DMR, g->M - i0);
        if (g->a_lower && j->k0 > i0 + mr - 1)
            return; /* all zero: never read */
        double *d = j->ap + (size_t)task * j->kc * DMR;
        for (int r = 0; r < DMR; r++) {
            /* With a_lower, the elements k > i are zeros that are not read. */
            int kend = r >= mr ? 0 : g->a_lower ? LA_MIN(j->kc, i0 + r - j->k0 + 1) : j->kc;
            kend = LA_MAX(kend, 0);
            if (!g->ta) {
                const double *s = g->A + (size_t)(i0 + r) * g->lda + j->k0;
                for (int k = 0; k < kend; k++)
                    d[(size_t)k * DMR + r] = s[k];
            } else {
                for (int k = 0; k < kend; k++)
                    d[(size_t)k * DMR + r] = g->A[(size_t)(j->k0 + k) * g->lda + i0 + r];
            }
            for (int k = kend; k < j->kc; k++)
                d[(size_t)k * DMR + r] = 0.0;
        }
    } else {
        int q = task - j->npa, j0 = q * DNR, nr = LA_MIN(DNR, g->N - j0);
        double *d = j->bp + (size_t)q * j->kc * DNR;
        if (g->tb) {
            for (int k = 0; k < j->kc; k++) {
                const double *s = g->B + (size_t)(j->k0 + k) * g->ldb + j0;
                double *dk_ = d + (size_t)k * DNR;
                int c = 0;
                for (; c < nr; c++)
                    dk_[c] = s[c];
                for (; c < DNR; c++)
                    dk_[c] = 0.0;
            }
        } else {
            for (int c = 0; c < DNR; c++) {
                if (c >= nr) {
                    for (int k = 0; k < j->kc; k++)
                        d[(size_t)k * DNR + c] = 0.0;
                    continue;
                }
                const double *s = g->B + (size_t)(j0 + c) * g->ldb + j->k0;
                for (int k = 0; k < j->kc; k++)
                    d[(size_t)k * DNR + c] = s[k];
            }
        }
    }
}

static void tile_task(void *arg, int task, int tid)
{
    const struct dgemm_job *j = arg;
    const struct dgemm *g = j->g;
    (void)tid;
    /* With c_lower the last row blocks carry the most work: hand them out first. */
    int rb = j->nrb - 1 - task;
    int ib0 = rb * DMB, ib1 = LA_MIN(g->M, ib0 + DMB);
    int jend = g->c_lower ? LA_MIN(g->N, ib1) : g->N;
    double t[DMR * DNR];
    for (int j0 = 0; j0 < jend; j0 += DNR) {
        int nr = LA_MIN(DNR, g->N - j0);
        const double *bq = j->bp + (size_t)(j0 / DNR) * j->kc * DNR;
        for (int i0 = ib0; i0 < ib1; i0 += DMR) {
            int mr = LA_MIN(DMR, g->M - i0);
            if (g->c_lower && j0 > i0 + mr - 1)
                continue;
            if (g->a_lower && j->k0 > i0 + mr - 1)
                continue;
            /* C rows are ldc apart and this loop walks down a column of tiles, which the
             * hardware prefetcher does not follow: fetch them while the kernel runs. */
            for (int r = 0; r < mr; r++) {
                const double *cp = g->C + (size_t)(i0 + r) * g->ldc + j0;
                __builtin_prefetch(cp, 1, 3);
                __builtin_prefetch(cp + nr - 1, 1, 3);
            }
            dk(j->kc, j->ap + (size_t)(i0 / DMR) * j->kc * DMR, bq, t);
            int mask = g->c_lower && j0 + nr - 1 > i0;
            for (int r = 0; r < mr; r++) {
                double *crow = g->C + (size_t)(i0 + r) * g->ldc + j0;
                const double *tr = t + r * DNR;
                if (!mask && nr == DNR) {
                    v4d a = { g->alpha, g->alpha, g->alpha, g->alpha };
                    st4(crow, ld4(crow) + a * ld4(tr));
                    st4(crow + 4, ld4(crow + 4) + a * ld4(tr + 4));
                    continue;
                }
                for (int c = 0; c < nr; c++)
                    if (!mask || j0 + c <= i0 + r)
                        crow[c] += g->alpha * tr[c];
            }
        }
    }
}

static void dgemm_run(const struct dgemm *g)
{
    if (g->M <= 0 || g->N <= 0 || g->K <= 0)
        return;
    struct dgemm_job j = {
        g, NULL, NULL, 0, 0, (g->M + DMR - 1) / DMR, (g->N + DNR - 1) / DNR, (g->M + DMB - 1) / DMB
    };
    int kc_max = LA_MIN(DKC, g->K);
    j.ap = par_scratch(SLOT_AP, sizeof(double) * (size_t)j.npa * DMR * kc_max);
    j.bp = par_scratch(SLOT_BP, sizeof(double) * (size_t)j.npb * DNR * kc_max);
    for (int k0 = 0; k0 < g->K; k0 += DKC) {
        j.k0 = k0;
        j.kc = LA_MIN(DKC, g->K - k0);
        par_for(j.npa + j.npb, pack_task, &j);
        par_for(j.nrb, tile_task, &j);
    }
}

void linalg_dgemm_cpu(int M, int N, int K, double alpha, const double *A, size_t lda,
                      const double *B, size_t ldb, double *C, size_t ldc, unsigned flags)
{
    struct dgemm g = { M,
                       N,
                       K,
                       alpha,
                       A,
                       B,
                       lda,
                       ldb,
                       C,
                       ldc,
                       !!(flags & LINALG_TRANS_A),
                       !!(flags & LINALG_TRANS_B),
                       !!(flags & LINALG_A_LOWER),
                       !!(flags & LINALG_C_LOWER) };
    dgemm_run(&g);
}

/* ---- blocked Cholesky and triangular inverse ------------------------------------------------ */

/* X = L^-1 for the lower-triangular n x n block L (reads only its lower triangle) into the
 * dense n x n buffer X, zeros above the diagonal. */
static void trinv_dense(const double *L, size_t ldl, int n, double *X)
{
    memset(X, 0, sizeof(double) * (size_t)n * n);
    for (int j = 0; j < n; j++) {
        X[(size_t)j * n + j] = 1.0 / L[(size_t)j * ldl + j];
        for (int i = j + 1; i < n; i++) {
            const double *li = L + (size_t)i * ldl;
            double s = 0.0;
            for (int k = j; k < i; k++)
                s += li[k] * X[(size_t)k * n + j];
            X[(size_t)i * n + j] = -s / li[i];
        }
    }
}

int linalg_chol_cpu(double *A, int n, size_t lda)
{
    for (int k0 = 0; k0 < n; k0 += LA_NB) {
        int kb = LA_MIN(LA_NB, n - k0), m = n - k0 - kb;
        double *a11 = A + (size_t)k0 * lda + k0;
        int rc = linalg_chol_ref(a11, kb, lda);
        if (rc)
            return rc;
        if (m == 0)
            break;
        double *linv = par_scratch(SLOT_T, sizeof(double) * (size_t)kb * kb);
        trinv_dense(a11, lda, kb, linv);
        double *a21 = A + (size_t)(k0 + kb) * lda + k0;
        double *s = par_scratch(SLOT_S, sizeof(double) * (size_t)m * kb);
        memset(s, 0, sizeof(double) * (size_t)m * kb);
        struct dgemm g1 = { m, kb, kb, 1.0, a21, linv, lda, (size_t)kb, s, (size_t)kb, 0, 0, 0, 0 };
        dgemm_run(&g1);
        for (int i = 0; i < m; i++)
            memcpy(a21 + (size_t)i * lda, s + (size_t)i * kb, sizeof(double) * kb);
        double *a22 = A + (size_t)(k0 + kb) * lda + k0 + kb;
        struct dgemm g2 = { m, m, kb, -1.0, s, s, (size_t)kb, (size_t)kb, a22, lda, 0, 0, 0, 1 };
        dgemm_run(&g2);
    }
    return 0;
}

void linalg_trtri_cpu(double *A, int n, size_t lda)
{
    if (n <= 0)
        return;
    for (int j0 = ((n - 1) / LA_NB) * LA_NB; j0 >= 0; j0 -= LA_NB) {
        int jb = LA_MIN(LA_NB, n - j0), m = n - j0 - jb;
        double *a11 = A + (size_t)j0 * lda + j0;
        /* L11^-1 must survive the GEMMs below (they use slots 0-2 only). */
        double *linv = par_scratch(SLOT_T, sizeof(double) * (size_t)jb * jb);
        trinv_dense(a11, lda, jb, linv);
        if (m > 0) {
            double *x22 = A + (size_t)(j0 + jb) * lda + j0 + jb;
            double *a21 = A + (size_t)(j0 + jb) * lda + j0;
            double *tm = par_scratch(SLOT_S, sizeof(double) * (size_t)m * jb);
            memset(tm, 0, sizeof(double) * (size_t)m * jb);
            /* tm = X22 L21 (X22 lower: its strict upper part is neither read nor needed). */
            struct dgemm g1 = { m, jb, m, 1.0, x22, a21, lda, lda, tm, (size_t)jb, 0, 1, 1, 0 };
            dgemm_run(&g1);
            for (int i = 0; i < m; i++)
                memset(a21 + (size_t)i * lda, 0, sizeof(double) * jb);
            /* X21 = -tm X11. */
            struct dgemm g2 = { m,          jb,  jb,  -1.0, tm, linv, (size_t)jb,
                                (size_t)jb, a21, lda, 0,    1,  0,    0 };
            dgemm_run(&g2);
        }
        for (int i = 0; i < jb; i++)
            memcpy(a11 + (size_t)i * lda, linv + (size_t)i * jb, sizeof(double) * (i + 1));
    }
}

/* ---- Cholesky solve ------------------------------------------------------------------------- */

struct solve_job {
    const double *L;
    double *B;
    size_t ldl, ldb;
    int n, nrhs, chunk;
};

/* Forward then backward substitution for the columns [c0, c1) of B. */
static void solve_task(void *arg, int task, int tid)
{
    const struct solve_job *a = arg;
    (void)tid;
    int c0 = task * a->chunk, c1 = LA_MIN(a->nrhs, c0 + a->chunk), n = a->n;
    const double *L = a->L;
    double *B = a->B;
    /* L Y = B: row i of Y = (B_i - sum_{k<i} L[i][k] Y_k) / L[i][i]. */
    for (int i = 0; i < n; i++) {
        double *bi = B + (size_t)i * a->ldb;
        const double *Li = L + (size_t)i * a->ldl;
        for (int k = 0; k < i; k++) {
            double l = Li[k];
            const double *bk = B + (size_t)k * a->ldb;
            for (int c = c0; c < c1; c++)
                bi[c] -= l * bk[c];
        }
        for (int c = c0; c < c1; c++)
            bi[c] /= Li[i];
    }
    /* L^T X = Y: row i of X = (Y_i - sum_{k>i} L[k][i] X_k) / L[i][i], i from the end. */
    for (int i = n - 1; i >= 0; i--) {
        double *bi = B + (size_t)i * a->ldb;
        for (int k = i + 1; k < n; k++) {
            double l = L[(size_t)k * a->ldl + i];
            const double *bk = B + (size_t)k * a->ldb;
            for (int c = c0; c < c1; c++)
                bi[c] -= l * bk[c];
        }
        for (int c = c0; c < c1; c++)
            bi[c] /= L[(size_t)i * a->ldl + i];
    }
}

void linalg_chol_solve_cpu(const double *L, int n, size_t ldl, double *B, int nrhs, size_t ldb)
{
    if (n <= 0 || nrhs <= 0)
        return;
    int nt = par_nthreads();
    int chunk = LA_MAX(8, (nrhs + 2 * nt - 1) / (2 * nt));
    struct solve_job a = { L, B, ldl, ldb, n, nrhs, chunk };
    par_for((nrhs + chunk - 1) / chunk, solve_task, &a);
}

/* ---- dispatch ---------------------------------------------------------------------------------
 */

int linalg_dgemm(enum kern_impl impl, int M, int N, int K, double alpha, const double *A,
                 size_t lda, const double *B, size_t ldb, double *C, size_t ldc, unsigned flags)
{
    if (M < 0 || N < 0 || K < 0 || (M > 0 && N > 0 && !C) ||
        (M > 0 && N > 0 && K > 0 && (!A || !B)) || flags > 15u)
        return -EINVAL;
    switch (impl) {
    case KERN_IMPL_REF:
        linalg_dgemm_ref(M, N, K, alpha, A, lda, B, ldb, C, ldc, flags);
        return 0;
    case KERN_IMPL_CPU:
        linalg_dgemm_cpu(M, N, K, alpha, A, lda, B, ldb, C, ldc, flags);
        return 0;
    default:
        return -ENOSYS;
    }
}

int linalg_chol(enum kern_impl impl, double *A, int n, size_t lda)
{
    if (n < 0 || (n > 0 && (!A || lda < (size_t)n)))
        return -EINVAL;
    switch (impl) {
    case KERN_IMPL_REF:
        return linalg_chol_ref(A, n, lda);
    case KERN_IMPL_CPU:
        return linalg_chol_cpu(A, n, lda);
    default:
        return -ENOSYS;
    }
}

int linalg_trtri(enum kern_impl impl, double *L, int n, size_t lda)
{
    if (n < 0 || (n > 0 && (!L || lda < (size_t)n)))
        return -EINVAL;
    switch (impl) {
    case KERN_IMPL_REF:
        linalg_trtri_ref(L, n, lda);
        return 0;
    case KERN_IMPL_CPU:
        linalg_trtri_cpu(L, n, lda);
        return 0;
    default:
        return -ENOSYS;
    }
}

int linalg_chol_solve(enum kern_impl impl, const double *L, int n, size_t ldl, double *B, int nrhs,
                      size_t ldb)
{
    if (n < 0 || nrhs < 0 || (n > 0 && (!L || ldl < (size_t)n)) ||
        (n > 0 && nrhs > 0 && (!B || ldb < (size_t)nrhs)))
        return -EINVAL;
    switch (impl) {
    case KERN_IMPL_REF:
        linalg_chol_solve_ref(L, n, ldl, B, nrhs, ldb);
        return 0;
    case KERN_IMPL_CPU:
        linalg_chol_solve_cpu(L, n, ldl, B, nrhs, ldb);
        return 0;
    default:
        return -ENOSYS;
    }
}
