/*
 * test_linalg: the fast double-precision linear algebra (kernels/linalg.h) against the plain-loop
 * reference on fresh random inputs, 1-3 threads, shapes that cross the 6x8 micro-tile, the 48-row
 * task, the 128 factorization block and the 256 K chunk, row strides wider than the matrices:
 *   - dgemm, all 16 flag combinations; the skipped parts (A above the diagonal with A_LOWER, C
 *     above it with C_LOWER, the padding of C) are never read or written;
 *   - chol: both variants reproduce A (L L^T = A within Higham's bound gamma_{n+1} |L||L^T|),
 *     agree with each other, leave the strict upper triangle alone, and report -EDOM for a matrix
 *     that is not positive definite (also when the bad pivot comes after the first block);
 *   - trtri: X L = I within the bound, variants agree, strict upper triangle untouched;
 *   - chol_solve: A X = B (small residual), variants agree;
 *   - argument errors and the CUDA dispatch.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "common/util.h"
#include "kernels/linalg.h"
#include "kernels/par.h"
#include "tests/kernels/check.h"

#define U53      (1.0 / 9007199254740992.0)
#define SENTINEL (-12345.678125)

static double *dnew(size_t n)
{
    double *p = malloc(sizeof(double) * (n ? n : 1));
    assert_non_null(p);
    return p;
}

static void fill_normal(double *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = check_normal();
}

/* A random SPD n x n matrix (row stride lda, the rest of each row = SENTINEL): G G^T / n + 0.05 I,
 * condition number in the hundreds. */
static double *spd_new(int n, size_t lda)
{
    double *G = dnew((size_t)n * n), *A = dnew((size_t)n * lda);
    fill_normal(G, (size_t)n * n);
    for (size_t i = 0; i < (size_t)n * lda; i++)
        A[i] = SENTINEL;
    for (int i = 0; i < n; i++)
        for (int j = 0; j <= i; j++) {
            double s = 0.0;
            for (int k = 0; k < n; k++)
                s += G[(size_t)i * n + k] * G[(size_t)j * n + k];
            s /= n;
            if (i == j)
                s += 0.05;
            A[(size_t)i * lda + j] = A[(size_t)j * lda + i] = s;
        }
    free(G);
    return A;
}

/* ---- dgemm ---- */

static int dgemm_case(int M, int N, int K, unsigned flags)
{
    char what[160];
    snprintf(what, sizeof(what), "dgemm M=%d N=%d K=%d flags=%u threads=%d", M, N, K, flags,
             par_nthreads());
    int ta = !!(flags & LINALG_TRANS_A), tb = !!(flags & LINALG_TRANS_B);
    /* Stored shapes: A is M x K (K x M when trans), B is N x K (K x N when trans). */
    int ar = ta ? K : M, ac = ta ? M : K, br = tb ? K : N, bc = tb ? N : K;
    size_t lda = (size_t)ac + 3, ldb = (size_t)bc + 1, ldc = (size_t)N + 5;
    double *A = dnew((size_t)ar * lda), *B = dnew((size_t)br * ldb);
    double *C0 = dnew((size_t)M * ldc), *Cr = dnew((size_t)M * ldc), *Cg = dnew((size_t)M * ldc);
    double *aA = dnew((size_t)ar * lda), *aB = dnew((size_t)br * ldb), *bnd = dnew((size_t)M * ldc);
    fill_normal(A, (size_t)ar * lda);
    fill_normal(B, (size_t)br * ldb);
    fill_normal(C0, (size_t)M * ldc);
    if (flags & LINALG_A_LOWER) /* A(i,k), k > i, must not be read */
        for (int i = 0; i < M; i++)
            for (int k = i + 1; k < K; k++)
                A[ta ? (size_t)k * lda + i : (size_t)i * lda + k] = NAN;
    for (int i = 0; i < M; i++)
        for (size_t j = 0; j < ldc; j++)
            if (j >= (size_t)N || ((flags & LINALG_C_LOWER) && j > (size_t)i))
                C0[(size_t)i * ldc + j] = SENTINEL;
    memcpy(Cr, C0, sizeof(double) * (size_t)M * ldc);
    memcpy(Cg, C0, sizeof(double) * (size_t)M * ldc);
    double alpha = check_uniform(-2.0f, 2.0f);
    assert_int_equal(linalg_dgemm(KERN_IMPL_REF, M, N, K, alpha, A, lda, B, ldb, Cr, ldc, flags),
                     0);
    assert_int_equal(linalg_dgemm(KERN_IMPL_CPU, M, N, K, alpha, A, lda, B, ldb, Cg, ldc, flags),
                     0);
    /* Bound: 2 gamma_K |alpha| (|A| |B|^T)_ij + u |C0_ij| per element. */
    for (size_t i = 0; i < (size_t)ar * lda; i++)
        aA[i] = isnan(A[i]) ? NAN : fabs(A[i]);
    for (size_t i = 0; i < (size_t)br * ldb; i++)
        aB[i] = fabs(B[i]);
    memset(bnd, 0, sizeof(double) * (size_t)M * ldc);
    linalg_dgemm_ref(M, N, K, 1.0, aA, lda, aB, ldb, bnd, ldc, flags);
    double gamma = K * U53 / (1.0 - K * U53);
    int rc = 0;
    for (int i = 0; i < M && rc == 0; i++)
        for (size_t j = 0; j < ldc; j++) {
            size_t e = (size_t)i * ldc + j;
            int skipped = j >= (size_t)N || ((flags & LINALG_C_LOWER) && j > (size_t)i);
            if (skipped) {
                if (memcmp(&Cg[e], &C0[e], sizeof(double)) ||
                    memcmp(&Cr[e], &C0[e], sizeof(double))) {
                    printf("%s: skipped element (%d,%zu) written\n", what, i, j);
                    rc = -1;
                    break;
                }
                continue;
            }
            double b = 2.0 * gamma * fabs(alpha) * bnd[e] + 2.0 * U53 * fabs(C0[e]) + 1e-300;
            if (!(fabs(Cg[e] - Cr[e]) <= 2.0 * b)) {
                printf("%s: (%d,%zu) got %.17g ref %.17g bound %g\n", what, i, j, Cg[e], Cr[e], b);
                rc = -1;
                break;
            }
        }
    free(A);
    free(B);
    free(C0);
    free(Cr);
    free(Cg);
    free(aA);
    free(aB);
    free(bnd);
    return rc;
}

static void test_dgemm(void **state)
{
    (void)state;
    static const int shapes[][3] = { { 1, 1, 1 },     { 7, 9, 5 },      { 6, 8, 256 },
                                     { 50, 33, 300 }, { 97, 130, 129 }, { 130, 17, 513 } };
    int fails = 0, cases = 0;
    for (int th = 1; th <= 3; th++) {
        par_set_nthreads(th);
        for (unsigned f = 0; f < 16; f++)
            for (size_t s = 0; s < EXAQ_ARRAY_LEN(shapes); s++) {
                if (th > 1 && s + 2 < EXAQ_ARRAY_LEN(shapes))
                    continue; /* the small shapes run serially anyway */
                fails += dgemm_case(shapes[s][0], shapes[s][1], shapes[s][2], f) != 0;
                cases++;
            }
    }
    par_set_nthreads(0);
    printf("# %d dgemm cases, %d failed\n", cases, fails);
    assert_int_equal(fails, 0);
}

/* ---- chol, trtri, chol_solve ---- */

/* max_ij |(L L^T - A)_ij| / bound_ij over the lower triangle, bound = gamma_{n+1} (|L||L^T|). */
static double chol_backward(const double *L, const double *A, int n, size_t lda)
{
    double worst = 0.0, gamma = (n + 1) * U53 / (1.0 - (n + 1) * U53);
    for (int i = 0; i < n; i++)
        for (int j = 0; j <= i; j++) {
            double s = 0.0, a = 0.0;
            for (int k = 0; k <= j; k++) {
                s += L[(size_t)i * lda + k] * L[(size_t)j * lda + k];
                a += fabs(L[(size_t)i * lda + k] * L[(size_t)j * lda + k]);
            }
            double r = fabs(s - A[(size_t)i * lda + j]) / (gamma * a + 1e-300);
            worst = r > worst ? r : worst;
        }
    return worst;
}

/* max_ij |(X L - I)_ij| / (c n u (|X||L|)_ij + tiny) over the lower triangle. */
static double trtri_residual(const double *X, const double *L, int n, size_t lda)
{
    double worst = 0.0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j <= i; j++) {
            double s = 0.0, a = 0.0;
            for (int k = j; k <= i; k++) {
                s += X[(size_t)i * lda + k] * L[(size_t)k * lda + j];
                a += fabs(X[(size_t)i * lda + k] * L[(size_t)k * lda + j]);
            }
            double r = fabs(s - (i == j ? 1.0 : 0.0)) / (4.0 * n * U53 * a + 1e-300);
            worst = r > worst ? r : worst;
        }
    return worst;
}

static double max_rel_diff(const double *a, const double *b, int n, size_t lda, int lower)
{
    double md = 0.0, mx = 0.0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < (lower ? i + 1 : (int)lda); j++) {
            double d = fabs(a[(size_t)i * lda + j] - b[(size_t)i * lda + j]);
            md = d > md ? d : md;
            mx = fabs(b[(size_t)i * lda + j]) > mx ? fabs(b[(size_t)i * lda + j]) : mx;
        }
    return md / (mx + 1e-300);
}

static int factor_case(int n, size_t lda, int nrhs)
{
    char what[160];
    snprintf(what, sizeof(what), "n=%d lda=%zu nrhs=%d threads=%d", n, lda, nrhs, par_nthreads());
    size_t nn = (size_t)n * lda;
    double *A = spd_new(n, lda), *Lr = dnew(nn), *Lg = dnew(nn);
    /* The strict upper triangle becomes a sentinel: it must be neither read nor written. */
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            A[(size_t)i * lda + j] = SENTINEL;
    memcpy(Lr, A, sizeof(double) * nn);
    memcpy(Lg, A, sizeof(double) * nn);
    int rc = 0;
    assert_int_equal(linalg_chol(KERN_IMPL_REF, Lr, n, lda), 0);
    assert_int_equal(linalg_chol(KERN_IMPL_CPU, Lg, n, lda), 0);
    for (size_t i = 0; i < nn && rc == 0; i++)
        if ((i % lda) > i / lda && memcmp(&Lg[i], &A[i], sizeof(double))) {
            printf("chol %s: upper/padding element %zu changed\n", what, i);
            rc = -1;
        }
    double be_r = chol_backward(Lr, A, n, lda), be_g = chol_backward(Lg, A, n, lda);
    double d = max_rel_diff(Lg, Lr, n, lda, 1);
    if (!(be_r <= 2.0) || !(be_g <= 2.0) || !(d <= 1e-11)) {
        printf("chol %s: backward error / bound ref %g cpu %g, cpu-ref %g\n", what, be_r, be_g, d);
        rc = -1;
    }

    /* trtri on the cpu factor. */
    double *Xr = dnew(nn), *Xg = dnew(nn);
    memcpy(Xr, Lg, sizeof(double) * nn);
    memcpy(Xg, Lg, sizeof(double) * nn);
    assert_int_equal(linalg_trtri(KERN_IMPL_REF, Xr, n, lda), 0);
    assert_int_equal(linalg_trtri(KERN_IMPL_CPU, Xg, n, lda), 0);
    for (size_t i = 0; i < nn && rc == 0; i++)
        if ((i % lda) > i / lda && memcmp(&Xg[i], &A[i], sizeof(double))) {
            printf("trtri %s: upper/padding element %zu changed\n", what, i);
            rc = -1;
        }
    double tr_r = trtri_residual(Xr, Lg, n, lda), tr_g = trtri_residual(Xg, Lg, n, lda);
    d = max_rel_diff(Xg, Xr, n, lda, 1);
    if (!(tr_r <= 1.0) || !(tr_g <= 1.0) || !(d <= 1e-10)) {
        printf("trtri %s: residual / bound ref %g cpu %g, cpu-ref %g\n", what, tr_r, tr_g, d);
        rc = -1;
    }

    /* chol_solve: A X = B. */
    size_t ldb = (size_t)nrhs + 2;
    double *B = dnew((size_t)n * ldb), *Br = dnew((size_t)n * ldb), *Bg = dnew((size_t)n * ldb);
    fill_normal(B, (size_t)n * ldb);
    memcpy(Br, B, sizeof(double) * (size_t)n * ldb);
    memcpy(Bg, B, sizeof(double) * (size_t)n * ldb);
    assert_int_equal(linalg_chol_solve(KERN_IMPL_REF, Lg, n, lda, Br, nrhs, ldb), 0);
    assert_int_equal(linalg_chol_solve(KERN_IMPL_CPU, Lg, n, lda, Bg, nrhs, ldb), 0);
    double worst = 0.0, bmax = 0.0;
    for (int i = 0; i < n; i++)
        for (int c = 0; c < (int)ldb; c++) {
            if (c >= nrhs) {
                if (Bg[(size_t)i * ldb + c] != B[(size_t)i * ldb + c]) {
                    printf("solve %s: padding written\n", what);
                    rc = -1;
                }
                continue;
            }
            /* Residual of the cpu solution against the full symmetric A. */
            double s = 0.0;
            for (int k = 0; k < n; k++) {
                double a = k <= i ? A[(size_t)i * lda + k] : A[(size_t)k * lda + i];
                s += a * Bg[(size_t)k * ldb + c];
            }
            double r = fabs(s - B[(size_t)i * ldb + c]);
            worst = r > worst ? r : worst;
            bmax = fabs(B[(size_t)i * ldb + c]) > bmax ? fabs(B[(size_t)i * ldb + c]) : bmax;
        }
    d = max_rel_diff(Bg, Br, n, ldb, 0);
    if (!(worst <= 1e-11 * bmax * n) || !(d <= 1e-10)) {
        printf("solve %s: residual %g (|B| %g), cpu-ref %g\n", what, worst, bmax, d);
        rc = -1;
    }
    free(A);
    free(Lr);
    free(Lg);
    free(Xr);
    free(Xg);
    free(B);
    free(Br);
    free(Bg);
    return rc;
}

static void test_factor(void **state)
{
    (void)state;
    static const int ns[] = { 1, 2, 7, 127, 128, 129, 261 };
    int fails = 0, cases = 0;
    for (int th = 1; th <= 3; th++) {
        par_set_nthreads(th);
        for (size_t a = 0; a < EXAQ_ARRAY_LEN(ns); a++) {
            if (th > 1 && ns[a] < 100)
                continue;
            size_t lda = (size_t)ns[a] + (size_t)check_rand_int(0, 3);
            fails += factor_case(ns[a], lda, check_rand_int(1, 40)) != 0;
            cases++;
        }
    }
    par_set_nthreads(0);
    printf("# %d factorization cases, %d failed\n", cases, fails);
    assert_int_equal(fails, 0);
}

static void test_not_spd(void **state)
{
    (void)state;
    for (int impl = KERN_IMPL_REF; impl <= KERN_IMPL_CPU; impl++) {
        /* The bad pivot in the first block, after it, and a NaN. */
        static const int where[] = { 0, 3, 150, 199 };
        for (size_t w = 0; w < EXAQ_ARRAY_LEN(where); w++) {
            int n = 200;
            double *A = spd_new(n, (size_t)n);
            A[(size_t)where[w] * n + where[w]] = -1.0;
            assert_int_equal(linalg_chol((enum kern_impl)impl, A, n, (size_t)n), -EDOM);
            free(A);
        }
        double *A = spd_new(150, 150);
        A[140 * 150 + 3] = NAN;
        assert_int_equal(linalg_chol((enum kern_impl)impl, A, 150, 150), -EDOM);
        free(A);
    }
}

static void test_errors(void **state)
{
    (void)state;
    double A[4] = { 4, 0, 2, 5 }, B[2] = { 1, 2 };
    assert_int_equal(linalg_chol(KERN_IMPL_CUDA, A, 2, 2), -ENOSYS);
    assert_int_equal(linalg_trtri(KERN_IMPL_CUDA, A, 2, 2), -ENOSYS);
    assert_int_equal(linalg_chol_solve(KERN_IMPL_CUDA, A, 2, 2, B, 1, 1), -ENOSYS);
    assert_int_equal(linalg_dgemm(KERN_IMPL_CUDA, 1, 1, 1, 1.0, A, 1, A, 1, B, 1, 0), -ENOSYS);
    assert_int_equal(linalg_chol(KERN_IMPL_CPU, A, -1, 2), -EINVAL);
    assert_int_equal(linalg_chol(KERN_IMPL_CPU, NULL, 2, 2), -EINVAL);
    assert_int_equal(linalg_chol(KERN_IMPL_CPU, A, 2, 1), -EINVAL);
    assert_int_equal(linalg_chol_solve(KERN_IMPL_CPU, A, 2, 2, B, 2, 1), -EINVAL);
    assert_int_equal(linalg_dgemm(KERN_IMPL_CPU, 1, 1, 1, 1.0, A, 1, A, 1, B, 1, 16u), -EINVAL);
    /* A = [[4, .], [2, 5]] = L L^T with L = [[2, 0], [1, 2]]; L^-1 = [[.5, 0], [-.25, .5]];
     * A x = (1, 2): x = (1/16, 3/8). */
    assert_int_equal(linalg_chol(KERN_IMPL_CPU, A, 2, 2), 0);
    assert_true(A[0] == 2 && A[1] == 0 && A[2] == 1 && A[3] == 2);
    double x[2] = { 1, 2 };
    assert_int_equal(linalg_chol_solve(KERN_IMPL_CPU, A, 2, 2, x, 1, 1), 0);
    assert_true(fabs(x[0] - 1.0 / 16) < 1e-15 && fabs(x[1] - 3.0 / 8) < 1e-15);
    assert_int_equal(linalg_trtri(KERN_IMPL_CPU, A, 2, 2), 0);
    assert_true(A[0] == 0.5 && A[2] == -0.25 && A[3] == 0.5);
}

int main(void)
{
    check_seed();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dgemm),
        cmocka_unit_test(test_factor),
        cmocka_unit_test(test_not_spd),
        cmocka_unit_test(test_errors),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    par_shutdown();
    return rc;
}
