/*
 * heal: closed-form least-squares repair of a depth-pruned EXAONE-4 model toward its unpruned
 * teacher (spec 3.5, the EXAONE-4 options 1 and 2), folded into existing weights so the
 * architecture and the checkpoint format do not change.
 *
 * A gap is a run of removed teacher layers t_first..t_last that followed kept layer i (student
 * layer s). The student's residual after layer s should equal the teacher's residual after
 * t_last, y*. Layer s ends with out = h_mid + g * rmsnorm(d), d = down_proj(a), where h_mid is
 * the residual after attention, a the down_proj input (silu(gate) * up), g the
 * post_feedforward_layernorm weight. With u = out - h_mid (the MLP branch) and
 * r = y* - h_mid (what the branch should have added), over all calibration tokens:
 *
 *   norm  (option 1, ReplaceMe diag): per channel j, t_j = argmin sum_t (t_j u_tj - r_tj)^2
 *         + lam (t_j - 1)^2 = (sum u r + lam) / (sum u^2 + lam), lam = ridge * mean_j sum u^2;
 *         folded exactly as g <- g * t.
 *   refit (option 2): pre-norm target D*_tj = r_tj / g_j * rms(d_t) (rms with the layer's eps),
 *         then down_proj W [hidden][inter] solves min ||A W'^T - D*||^2 + lam ||W' - W||^2:
 *         (A^T A + lam I) W'^T = A^T D* + lam W^T in double (Cholesky), lam = ridge *
 *         mean(diag(A^T A)). Approximate: the RMS of the new d is renormalised.
 *   both  refit, then the norm fold on top (measured better than the other order; see
 *         docs/pruning.md), or norm first when heal_opts.norm_first is set.
 *
 * Statistics are accumulated window by window (normal equations only; no activations are kept
 * across windows). Gaps are healed in order, each from the student stream with the earlier gaps
 * already healed. A gap before the first kept layer has no layer to fold into and is left as it
 * is (reported). Leading student layers identical to the teacher's are not run twice: their
 * output is taken from the teacher run.
 *
 * Functions return 0 or a negative errno-style code (-ECANCELED when tick asked to stop) and set
 * *err (a new string, free it) when err is not NULL.
 */
#ifndef EXAQ_HEAL_H
#define EXAQ_HEAL_H

#include <stdint.h>

#include "worker/engine/model.h"

enum heal_fold {
    HEAL_FOLD_NORM = 0,
    HEAL_FOLD_REFIT,
    HEAL_FOLD_BOTH,
};

struct heal_opts {
    enum heal_fold fold;
    double ridge;   /* >= 0, relative to the mean diagonal of the normal equations */
    int norm_first; /* HEAL_FOLD_BOTH only: 1 = norm fold then refit, 0 = refit then norm */
    /* Progress and cancellation (may be NULL): called after every window of every pass. */
    int (*tick)(void *arg, int done, int total);
    /* Log lines (may be NULL): one call per line, no newline. */
    void (*log)(void *arg, const char *line);
    void *arg; /* passed to tick and log */
};

struct heal_gap {
    int s_layer;         /* student layer folded into; -1: the gap precedes every kept layer */
    int t_first, t_last; /* removed teacher layers */
    double err_before;   /* sum over tokens of ||out - y*||^2 before healing */
    double err_after;    /* the same after healing (every gap healed) */
    double ref;          /* sum of ||y*||^2 */
    int norm_folded;     /* the norm fold was applied */
    int refitted;        /* down_proj was refitted */
};

struct heal_report {
    int n_gaps;
    struct heal_gap *gaps; /* owned */
    double err_before;     /* sum of err_before / sum of ref over the gaps */
    double err_after;
    int passes; /* passes over the calibration windows */
};

void heal_report_release(struct heal_report *r);

/*
 * Heals student in place. teacher is the unpruned model; kept[0..n_kept-1] are the teacher
 * layers the student's layers came from (increasing; n_kept == student->n_layers). Both models
 * must have the same dimensions. ids[n][seq_len] are the calibration windows. The folded weights
 * are stored in the student's dtype (norm weights rounded to it too), so the in-memory student
 * equals what model_save writes. rep receives the gaps and errors (release it).
 */
int heal_lsq(struct model *student, struct model *teacher, const int *kept, int n_kept,
             const int32_t *ids, int n, int seq_len, const struct heal_opts *o,
             struct heal_report *rep, char **err);

/* ---- the linear algebra, exposed for tests ------------------------------------------------- */

/* In place Cholesky A = L L^T of an n x n row-major symmetric matrix (the lower triangle is read
 * and overwritten by L; the upper triangle is left alone). 0, or -EDOM when A is not positive
 * definite in double precision. kernels/linalg.h's blocked Cholesky. */
int heal_cholesky(double *A, int n);

/* Solves L L^T X = B in place (B is [n][nrhs] row-major), L from heal_cholesky (kernels/linalg.h,
 * threaded over right-hand-side columns). */
void heal_cholesky_solve(const double *L, int n, double *B, int nrhs);

/* The norm fold's scales: t[j] = (B[j] + lam) / (A[j] + lam), lam = ridge * mean(A); t[j] = 1
 * when A[j] + lam is 0. */
void heal_norm_scales(const double *A, const double *B, int n, double ridge, double *t);

/*
 * The refit's solve. A [in][in] = sum a a^T, B [in][out] = sum a d*^T (both overwritten), W
 * [out][in] fp32: on entry the current weights (the ridge's prior), on return the solution of
 * (A + lam I) W'^T = B + lam W^T, lam = ridge * mean(diag A). When A + lam I is not positive
 * definite, lam is raised tenfold up to 8 times (*lam_used tells; may be NULL).
 * -EDOM when it never is, -EINVAL when A's diagonal is zero.
 */
int heal_refit_solve(double *A, double *B, int in, int out, double ridge, float *W,
                     double *lam_used, char **err);

#endif
