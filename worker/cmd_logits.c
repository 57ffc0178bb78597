/*
 * cmd_logits: `exaq-worker logits --input DIR --ids FILE --out FILE [--n N] [--threads N]
 *             [--impl cpu|cuda] [--weights-only]`.
 *
 * Runs one forward pass of the model in DIR (any format the engine loads, quantized
 * compressed-tensors included) over the first N ids of FILE (little-endian uint32, as the
 * eval data) and writes the logits as float32 [N][vocab] little-endian to --out. It exists to
 * cross-check the engine against other implementations (docs/quantization.md shows the
 * transformers comparison) and its kernels against each other:
 *   --impl cuda      run every kernel through the CUDA backend (docs/cuda.md); fails with the
 *                    backend's reason when there is none;
 *   --weights-only   leave the activations of W8A8/FP8 linears unquantized, so that a loader
 *                    comparison sees the weights and scales alone (activation fake-quantization
 *                    amplifies any rounding difference between two implementations).
 */
#include "worker/cmd.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "kernels/cuda.h"
#include "worker/engine/calib.h"
#include "worker/engine/model.h"

int cmd_logits(int argc, char **argv)
{
    static const struct option opts[] = {
        { "input", required_argument, NULL, 'i' },   { "ids", required_argument, NULL, 'd' },
        { "out", required_argument, NULL, 'o' },     { "n", required_argument, NULL, 'n' },
        { "threads", required_argument, NULL, 't' }, { "impl", required_argument, NULL, 'm' },
        { "weights-only", no_argument, NULL, 'w' },  { NULL, 0, NULL, 0 },
    };
    const char *input = NULL, *idsf = NULL, *outf = NULL;
    int64_t n = 64, threads = 0, nids = 0, v;
    int32_t *ids = NULL;
    struct model *m = NULL;
    struct model_opts mo = { 0, KERN_IMPL_CPU, 0 };
    char *merr = NULL;
    float *logits = NULL;
    int c, rc = 1, weights_only = 0;

    optind = 1; /* argv[0] is "logits" */
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'i':
            input = optarg;
            break;
        case 'd':
            idsf = optarg;
            break;
        case 'o':
            outf = optarg;
            break;
        case 'n':
            if (parse_i64(optarg, &v) < 0 || v < 1 || v > 1 << 20) {
                fprintf(stderr, "exaq-worker logits: --n wants a positive count\n");
                return 1;
            }
            n = v;
            break;
        case 't':
            if (parse_i64(optarg, &threads) < 0 || threads < 1) {
                fprintf(stderr, "exaq-worker logits: --threads wants a positive count\n");
                return 1;
            }
            break;
        case 'm':
            if (!strcmp(optarg, "cpu")) {
                mo.impl = KERN_IMPL_CPU;
            } else if (!strcmp(optarg, "cuda")) {
                mo.impl = KERN_IMPL_CUDA;
            } else {
                fprintf(stderr, "exaq-worker logits: --impl wants cpu or cuda, not '%s'\n", optarg);
                return 1;
            }
            break;
        case 'w':
            weights_only = 1;
            break;
        default:
            return 1;
        }
    }
    if (!input || !idsf || !outf) {
        fprintf(stderr, "usage: exaq-worker logits --input DIR --ids FILE --out FILE [--n N] "
                        "[--threads N] [--impl cpu|cuda] [--weights-only]\n");
        return 1;
    }
    if (mo.impl == KERN_IMPL_CUDA) {
        const char *why = NULL;
        if (!cuda_api_get(&why)) {
            fprintf(stderr, "exaq-worker logits: --impl cuda: %s\n", why ? why : "unavailable");
            return 1;
        }
    }
    {
        char *e = NULL;
        if (calib_read_ids(idsf, &ids, &nids, &e) < 0) {
            fprintf(stderr, "exaq-worker logits: %s\n", e);
            free(e);
            return 1;
        }
    }
    if (nids < n) {
        fprintf(stderr, "exaq-worker logits: '%s' has %lld ids, fewer than --n %lld\n", idsf,
                (long long)nids, (long long)n);
        goto out;
    }
    mo.nthreads = (int)threads;
    if (model_load(&m, input, &mo, &merr) < 0) {
        fprintf(stderr, "exaq-worker logits: %s\n", merr ? merr : "cannot load the model");
        goto out;
    }
    if (weights_only)
        for (int l = 0; l < m->n_layers; l++)
            for (int w = 0; w < MODEL_LIN_COUNT; w++)
                if (m->layers[l].quant[w])
                    m->layers[l].quant[w]->act = QACT_NONE;
    logits = malloc((size_t)n * m->cfg.vocab_size * sizeof(float));
    if (!logits) {
        fprintf(stderr, "exaq-worker logits: out of memory\n");
        goto out;
    }
    if (model_forward(m, ids, (int)n, NULL, MODEL_LOGITS_ALL, logits, NULL, &merr) < 0) {
        fprintf(stderr, "exaq-worker logits: %s\n", merr ? merr : "forward failed");
        goto out;
    }
    if (file_write_all(outf, logits, (size_t)n * m->cfg.vocab_size * sizeof(float)) < 0) {
        fprintf(stderr, "exaq-worker logits: cannot write '%s'\n", outf);
        goto out;
    }
    printf("%lld x %d logits written to %s\n", (long long)n, m->cfg.vocab_size, outf);
    rc = 0;
out:
    free(logits);
    free(ids);
    free(merr);
    model_free(m);
    return rc;
}
