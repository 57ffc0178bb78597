/*
 * linalg_ref: the specification of the double-precision linear algebra of kernels/linalg.h
 * (plain loops, one thread, the textbook algorithms).
 */
#include "kernels/linalg.h"

#include <errno.h>
#include <math.h>

void linalg_dgemm_ref(int M, int N, int K, double alpha, const double *A, size_t lda,
                      const double *B, size_t ldb, double *C, size_t ldc, unsigned flags)
{
    for (int i = 0; i < M; i++) {
        int jend = (flags & LINALG_C_LOWER) && i + 1 < N ? i + 1 : N;
        for (int j = 0; j < jend; j++) {
            double s = 0.0;
            for (int k = 0; k < K; k++) {
                if ((flags & LINALG_A_LOWER) && k > i)
                    break;
                double a =
                    (flags & LINALG_TRANS_A) ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                double b =
                    (flags & LINALG_TRANS_B) ? B[(size_t)k * ldb + j] : B[(size_t)j * ldb + k];
                s += a * b;
            }
            C[(size_t)i * ldc + j] += alpha * s;
        }
    }
}

/* Cholesky-Banachiewicz, row by row. */
int linalg_chol_ref(double *A, int n, size_t lda)
{
    for (int j = 0; j < n; j++) {
        double *aj = A + (size_t)j * lda;
        double d = aj[j];
        for (int k = 0; k < j; k++)
            d -= aj[k] * aj[k];
        if (!(d > 0.0) || !isfinite(d))
            return -EDOM;
        d = sqrt(d);
        aj[j] = d;
        for (int i = j + 1; i < n; i++) {
            double *ai = A + (size_t)i * lda;
            double s = ai[j];
            for (int k = 0; k < j; k++)
                s -= ai[k] * aj[k];
            ai[j] = s / d;
        }
    }
    return 0;
}

/* Column by column from the last: when column j is reached, columns > j hold the inverse X of
 * the trailing block, and X[i][j] = -(sum_{j<k<=i} X[i][k] L[k][j]) / L[j][j], computed for i
 * from the bottom so that L[k][j] (k < i) is still unread when X[i][j] replaces L[i][j]. */
void linalg_trtri_ref(double *L, int n, size_t lda)
{
    for (int j = n - 1; j >= 0; j--) {
        double ljj = L[(size_t)j * lda + j];
        for (int i = n - 1; i > j; i--) {
            const double *xi = L + (size_t)i * lda;
            double s = 0.0;
            for (int k = j + 1; k <= i; k++)
                s += xi[k] * L[(size_t)k * lda + j];
            L[(size_t)i * lda + j] = -s / ljj;
        }
        L[(size_t)j * lda + j] = 1.0 / ljj;
    }
}

/* Forward substitution L Y = B, then backward L^T X = Y. */
void linalg_chol_solve_ref(const double *L, int n, size_t ldl, double *B, int nrhs, size_t ldb)
{
    for (int c = 0; c < nrhs; c++) {
        for (int i = 0; i < n; i++) {
            double s = B[(size_t)i * ldb + c];
            for (int k = 0; k < i; k++)
                s -= L[(size_t)i * ldl + k] * B[(size_t)k * ldb + c];
            B[(size_t)i * ldb + c] = s / L[(size_t)i * ldl + i];
        }
        for (int i = n - 1; i >= 0; i--) {
            double s = B[(size_t)i * ldb + c];
            for (int k = i + 1; k < n; k++)
                s -= L[(size_t)k * ldl + i] * B[(size_t)k * ldb + c];
            B[(size_t)i * ldb + c] = s / L[(size_t)i * ldl + i];
        }
    }
}
