/*
 * loop: the trainer's step loop, checkpoints and evaluation (loop.h).
 */
#include "worker/train/loop.h"

#include <errno.h>
#include <fnmatch.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "worker/train/ckpt.h"
#include "worker/train/optim.h"

int tloop_pattern_match(const char *pattern, const char *name)
{
    if (!strcmp(pattern, "all") || !strcmp(pattern, "*"))
        return 1;
    if (strpbrk(pattern, "*?["))
        return fnmatch(pattern, name, 0) == 0;
    return strstr(name, pattern) != NULL;
}

int tloop_teacher_logp(struct tnet *teacher, const int32_t *ids, int T, float temperature,
                       float *logp, char **err)
{
    int V = tnet_vocab(teacher);
    if (tnet_logits(teacher, ids, T, logp, err) < 0)
        return -1;
    for (int t = 0; t < T; t++) {
        float *r = logp + (size_t)t * V;
        double mx = -INFINITY, s = 0;
        for (int i = 0; i < V; i++) {
            r[i] /= temperature;
            if (r[i] > mx)
                mx = r[i];
        }
        for (int i = 0; i < V; i++)
            s += exp(r[i] - mx);
        double lse = mx + log(s);
        for (int i = 0; i < V; i++)
            r[i] = (float)(r[i] - lse);
    }
    return 0;
}

/* The position mask of grad.h (1 = predicting ids[t+1] counts) from the data's target mask. */
static void pos_mask(const uint8_t *tmask, int T, uint8_t *out)
{
    for (int t = 0; t + 1 < T; t++)
        out[t] = tmask[t + 1];
    out[T - 1] = 0;
}

int tloop_eval_ce(struct tnet *net, const struct tdata *data, int val, int first, int count,
                  double *ce, char **err)
{
    int T = data->seq_len, V = tnet_vocab(net);
    float *logits = xmalloc(sizeof(float) * (size_t)T * (size_t)V);
    double sum = 0;
    long cnt = 0;
    for (int w = first; w < first + count; w++) {
        const uint8_t *m = NULL;
        const int32_t *ids =
            val ? tdata_val(data, w, &m) : data->ids + (size_t)w * (size_t)data->seq_len;
        if (!val && data->mask)
            m = data->mask + (size_t)w * (size_t)data->seq_len;
        if (tnet_logits(net, ids, T, logits, err) < 0) {
            free(logits);
            return -1;
        }
        for (int t = 0; t + 1 < T; t++) {
            if (m && !m[t + 1])
                continue;
            const float *r = logits + (size_t)t * V;
            double mx = -INFINITY, s = 0;
            for (int i = 0; i < V; i++)
                mx = r[i] > mx ? r[i] : mx;
            for (int i = 0; i < V; i++)
                s += exp(r[i] - mx);
            sum += mx + log(s) - r[ids[t + 1]];
            cnt++;
        }
    }
    free(logits);
    if (!cnt) {
        err_setf(err, "no target token to evaluate");
        return -1;
    }
    *ce = sum / (double)cnt;
    return 0;
}

static void logf_(const struct tloop_opts *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void logf_(const struct tloop_opts *o, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (o->log)
        o->log(o->cb_arg, line);
}

static void fmt_secs(double s, char *out, size_t n)
{
    if (s < 120)
        snprintf(out, n, "%.0fs", s);
    else if (s < 7200)
        snprintf(out, n, "%.0fm%02.0fs", floor(s / 60), fmod(s, 60));
    else
        snprintf(out, n, "%.0fh%02.0fm", floor(s / 3600), fmod(floor(s / 60), 60));
}

/* Checkpoint arrays: each slot's weights and both moments. */
static struct ckpt_arr *ckpt_arrays(struct tslot *s, int ns)
{
    struct ckpt_arr *a = xcalloc((size_t)ns * 3, sizeof(*a));
    for (int i = 0; i < ns; i++) {
        a[3 * i] = (struct ckpt_arr){ s[i].name, s[i].w, s[i].n };
        a[3 * i + 1] = (struct ckpt_arr){ "m", s[i].m, s[i].n };
        a[3 * i + 2] = (struct ckpt_arr){ "v", s[i].v, s[i].n };
    }
    return a;
}

int tloop_run(struct tnet *net, struct tslot *slots, int ns, const struct tloop_hooks *h,
              struct tdata *data, const struct tloop_opts *o, struct tloop_result *res, char **err)
{
    int T = data->seq_len, V = tnet_vocab(net), rc = -1;
    struct adamw aw = { 0.9, 0.999, 1e-8, o->weight_decay };
    float *tlogp = o->teacher ? xmalloc(sizeof(float) * (size_t)T * (size_t)V) : NULL;
    uint8_t *mask = xmalloc((size_t)T);
    struct ckpt_arr *ca = NULL;
    struct ckpt_state st = { 0 };
    uint64_t rng = o->seed ^ 0x5DEECE66DULL;
    long step0 = 0;
    double t0 = now_mono(), tail_sum = 0;
    long tail_n = 0, tail_from = o->steps - (o->steps / 10 > 0 ? o->steps / 10 : 1);
    memset(res, 0, sizeof(*res));
    for (int i = 0; i < ns; i++) {
        slots[i].m = xcalloc(slots[i].n, sizeof(float));
        slots[i].v = xcalloc(slots[i].n, sizeof(float));
    }
    if (o->ckpt_path && o->checkpoint_every > 0) {
        ca = ckpt_arrays(slots, ns);
        char *e = NULL;
        int r = ckpt_read(o->ckpt_path, o->fingerprint, &st, ca, 3 * ns, &e);
        if (r == 0 && st.step > 0 && st.step <= o->steps) {
            step0 = st.step;
            rng = st.rng;
            tail_sum = st.vals[0];
            tail_n = (long)st.vals[1];
            tdata_seek(data, st.data_pos);
            logf_(o, "train: resumed from step %ld of %ld (%s)", step0, o->steps, o->ckpt_path);
        } else if (r < 0) {
            /* Nothing was read into the arrays: start over from step 0. */
            logf_(o, "train: ignoring the checkpoint: %s", e);
        }
        free(e);
    }
    res->resumed_at = step0;
    long log_every = o->log_every > 0 ? o->log_every : 1;
    for (long step = step0; step < o->steps; step++) {
        if (o->cancelled && o->cancelled(o->cb_arg)) {
            rc = -ECANCELED;
            err_setf(err, "cancelled");
            goto out;
        }
        double lr = optim_lr(step, o->steps, o->warmup, o->lr, o->min_lr_ratio);
        tnet_zero_grad(net);
        if (h && h->materialize && h->materialize(h->arg, &rng, err) < 0)
            goto out;
        double loss_sum = 0;
        for (int b = 0; b < o->batch; b++) {
            const uint8_t *tm = NULL;
            const int32_t *ids = tdata_next(data, &tm);
            struct tloss L = { NULL, NULL, o->temperature, 1.0f };
            if (tm) {
                pos_mask(tm, T, mask);
                L.mask = mask;
            }
            if (o->teacher) {
                if (tloop_teacher_logp(o->teacher, ids, T, o->temperature, tlogp, err) < 0)
                    goto out;
                L.teacher_logp = tlogp;
                L.ce_weight = o->ce_weight;
            }
            double loss = 0;
            if (tnet_loss_grad(net, ids, T, &L, &loss, err) < 0)
                goto out;
            if (!isfinite(loss)) {
                err_setf(err, "the loss is %g at step %ld (lower lr?)", loss, step + 1);
                goto out;
            }
            loss_sum += loss;
        }
        if (h && h->slot_grads)
            h->slot_grads(h->arg);
        double sq = 0;
        for (int i = 0; i < ns; i++) {
            optim_scale(slots[i].g, slots[i].n, 1.0 / o->batch);
            sq += optim_sumsq(slots[i].g, slots[i].n);
        }
        double gnorm = sqrt(sq), c = optim_clip_factor(gnorm, o->grad_clip);
        for (int i = 0; i < ns; i++) {
            if (c < 1)
                optim_scale(slots[i].g, slots[i].n, c);
            adamw_step(&aw, step + 1, lr, slots[i].wd, slots[i].w, slots[i].g, slots[i].m,
                       slots[i].v, slots[i].n);
        }
        double loss = loss_sum / o->batch;
        res->last_loss = loss;
        if (step >= tail_from) {
            tail_sum += loss;
            tail_n++;
        }
        long done = step + 1;
        double el = now_mono() - t0;
        double tps = (double)(done - step0) * o->batch * T / (el > 0 ? el : 1e-9);
        if (done % log_every == 0 || done == o->steps || done == step0 + 1) {
            char eta[32], what[160];
            fmt_secs((double)(o->steps - done) * o->batch * T / (tps > 0 ? tps : 1), eta,
                     sizeof(eta));
            logf_(o, "train: step %ld/%ld loss %.5f lr %.3g grad_norm %.3g %.0f tok/s eta %s", done,
                  o->steps, loss, lr, gnorm, tps, eta);
            snprintf(what, sizeof(what), "loss %.4f, %.0f tok/s, eta %s", loss, tps, eta);
            if (o->progress)
                o->progress(o->cb_arg, (double)done, (double)o->steps, what);
        }
        if (ca && done % o->checkpoint_every == 0 && done < o->steps) {
            st.step = done;
            st.data_pos = data->pos;
            st.rng = rng;
            st.vals[0] = tail_sum;
            st.vals[1] = (double)tail_n;
            if (ckpt_write(o->ckpt_path, o->fingerprint, &st, ca, 3 * ns, err) < 0)
                goto out;
        }
    }
    /* The trained weights into the net (LoRA: merged) for the caller to save. */
    if (h && h->materialize && h->materialize(h->arg, NULL, err) < 0)
        goto out;
    res->steps = o->steps;
    res->avg_loss = tail_n ? tail_sum / (double)tail_n : res->last_loss;
    res->seconds = now_mono() - t0;
    res->tok_per_s =
        (double)(o->steps - step0) * o->batch * T / (res->seconds > 0 ? res->seconds : 1e-9);
    rc = 0;
out:
    for (int i = 0; i < ns; i++) {
        free(slots[i].m);
        free(slots[i].v);
        slots[i].m = slots[i].v = NULL;
    }
    free(ca);
    free(mask);
    free(tlogp);
    return rc;
}
