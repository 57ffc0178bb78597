/*
 * linalg: the double-precision dense linear algebra the compression algorithms need (GPTQ's
 * inverse-Hessian factor, SparseGPT through it, heal's least-squares refit): a GEMM, the lower
 * Cholesky factorization, the in-place inverse of a lower-triangular matrix and the solve of
 * L L^T X = B. All matrices are row-major with an explicit row stride (ld, in elements).
 *
 * Variants (dispatch: the function without suffix, STYLE 3.5):
 *   *_ref   plain loops, one thread: the spec (kernels/ref/linalg_ref.c);
 *   *_cpu   (default) blocked (NB = 128) so that nearly all flops go through one packed 6x8
 *           double micro-kernel run on the par pool; the solve is threaded over right-hand-side
 *           columns (kernels/cpu/linalg_cpu.c).
 * The variants agree to rounding (tests/kernels/test_linalg.c). Dispatch returns 0, -EINVAL for
 * a bad argument, -EDOM when a factorization meets a pivot that is not positive and finite,
 * -ENOSYS for KERN_IMPL_CUDA. The _cpu variants use par_scratch slots 0-3 of the calling thread
 * (the packing buffers and the blocks that must survive the GEMMs); nothing else is allocated.
 */
#ifndef EXAQ_LINALG_H
#define EXAQ_LINALG_H

#include <stddef.h>

#include "kernels/kern.h"

/* dgemm flags. */
#define LINALG_TRANS_A 1u /* A(i,k) = A[k * lda + i] instead of A[i * lda + k] */
#define LINALG_TRANS_B 2u /* B(j,k) = B[k * ldb + j] instead of B[j * ldb + k] */
#define LINALG_A_LOWER 4u /* A(i,k) is known to be 0 for k > i: that work is skipped */
#define LINALG_C_LOWER 8u /* only the elements j <= i of C are written */

/* C[M][N] (row stride ldc) += alpha * sum_{k < K} A(i,k) B(j,k), i.e. C += alpha A B^T with the
 * operand layouts chosen by flags. C must not overlap A or B. M, N, K >= 0 (0 does nothing). */
int linalg_dgemm(enum kern_impl impl, int M, int N, int K, double alpha, const double *A,
                 size_t lda, const double *B, size_t ldb, double *C, size_t ldc, unsigned flags);
void linalg_dgemm_ref(int M, int N, int K, double alpha, const double *A, size_t lda,
                      const double *B, size_t ldb, double *C, size_t ldc, unsigned flags);
void linalg_dgemm_cpu(int M, int N, int K, double alpha, const double *A, size_t lda,
                      const double *B, size_t ldb, double *C, size_t ldc, unsigned flags);

/* In place lower Cholesky A = L L^T of the n x n SPD matrix A: the lower triangle (diagonal
 * included) is read and replaced by L; the strict upper triangle is never read or written.
 * 0, or -EDOM (A's lower triangle is then partly overwritten). */
int linalg_chol(enum kern_impl impl, double *A, int n, size_t lda);
int linalg_chol_ref(double *A, int n, size_t lda);
int linalg_chol_cpu(double *A, int n, size_t lda);

/* In place inverse of the lower-triangular n x n L (nonzero diagonal): the lower triangle is
 * replaced by L^-1; the strict upper triangle is never read or written. */
int linalg_trtri(enum kern_impl impl, double *L, int n, size_t lda);
void linalg_trtri_ref(double *L, int n, size_t lda);
void linalg_trtri_cpu(double *L, int n, size_t lda);

/* Solves L L^T X = B in place: B is [n][nrhs] with row stride ldb, L (lower triangle read) comes
 * from linalg_chol with row stride ldl. */
int linalg_chol_solve(enum kern_impl impl, const double *L, int n, size_t ldl, double *B, int nrhs,
                      size_t ldb);
void linalg_chol_solve_ref(const double *L, int n, size_t ldl, double *B, int nrhs, size_t ldb);
void linalg_chol_solve_cpu(const double *L, int n, size_t ldl, double *B, int nrhs, size_t ldb);

#endif
