/*
 * syrk: H = beta * H + alpha * X^T . X, the Gram matrix accumulation GPTQ calibration runs over
 * every linear's inputs (X is [T][n] fp32, row-major: T tokens of an n-wide activation).
 *
 * Variants (dispatch: syrk()):
 *   syrk_ref   plain loops, double accumulation per element, one thread: the spec;
 *   syrk_cpu   (default) the blocked 6x16 GEMM of kernels/gemm.h on the upper triangle only
 *              (half the flops), then a tiled mirror into the lower triangle; threaded.
 * Both write the full symmetric n x n matrix. beta == 0 means H is not read.
 */
#ifndef EXAQ_SYRK_H
#define EXAQ_SYRK_H

#include "kernels/kern.h"

int syrk(enum kern_impl impl, float *H, const float *X, int T, int n, float alpha, float beta);
void syrk_ref(float *H, const float *X, int T, int n, float alpha, float beta);
void syrk_cpu(float *H, const float *X, int T, int n, float alpha, float beta);

#endif
