/*
 * cmd_generate: `exaq-worker generate --input DIR (--prompt TEXT | --prompt-file F | --ids FILE)
 *               --max-new-tokens N [--chat] [--stop-eos] [--stop STR]... [--print-ids]
 *               [--threads N]`.
 *
 * Greedy generation on the CPU engine, a quick way to try a (compressed) model. The prompt is
 * the text (encoded with the model's tokenizer.json, no special tokens added) or the ids of
 * FILE (decimal token ids separated by whitespace). --chat wraps the text as one user message
 * with the model's chat template and its generation prompt. Without --stop-eos (and --stop)
 * exactly N tokens are generated; --stop-eos stops after an EOS id of generation_config.json
 * (kept in the output), --stop after a stop string. --print-ids prints the new ids on one
 * line, space-separated; otherwise the decoded new text (cut before a stop string) with no
 * newline added. Errors go to stderr with exit status 1.
 */
#include "worker/cmd.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "worker/engine/chat.h"
#include "worker/engine/generate.h"
#include "worker/engine/model.h"
#include "worker/engine/tokdata.h"

#define CMD "exaq-worker generate"

/* Decimal ids separated by whitespace; 0 with *ids, *n set, or -1 with a message printed. */
static int read_ids(const char *path, int32_t **ids, int *n)
{
    char *text = NULL, *p, *end;
    size_t len, cap = 64;
    if (file_read_all(path, &text, &len) != 0) {
        fprintf(stderr, CMD ": cannot read the ids file '%s'\n", path);
        return -1;
    }
    *ids = xmalloc(sizeof(int32_t) * cap);
    *n = 0;
    for (p = text;;) {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
            p++;
        if (!*p)
            break;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX ||
            (*end && *end != ' ' && *end != '\t' && *end != '\n' && *end != '\r')) {
            fprintf(stderr, CMD ": '%s': not a token id at byte %ld\n", path, (long)(p - text));
            free(text);
            free(*ids);
            *ids = NULL;
            return -1;
        }
        if ((size_t)*n == cap)
            *ids = xrealloc(*ids, sizeof(int32_t) * (cap *= 2));
        (*ids)[(*n)++] = (int32_t)v;
        p = end;
    }
    free(text);
    return 0;
}

int cmd_generate(int argc, char **argv)
{
    static const struct option opts[] = {
        { "input", required_argument, NULL, 'i' },
        { "prompt", required_argument, NULL, 'p' },
        { "prompt-file", required_argument, NULL, 'f' },
        { "ids", required_argument, NULL, 'd' },
        { "max-new-tokens", required_argument, NULL, 'n' },
        { "chat", no_argument, NULL, 'c' },
        { "stop-eos", no_argument, NULL, 'e' },
        { "stop", required_argument, NULL, 's' },
        { "print-ids", no_argument, NULL, 'I' },
        { "threads", required_argument, NULL, 't' },
        { NULL, 0, NULL, 0 },
    };
    const char *input = NULL, *prompt = NULL, *promptf = NULL, *idsf = NULL;
    const char **stops = NULL;
    int nstop = 0, chat = 0, stop_eos = 0, print_ids = 0, c;
    long max_new = -1, threads = 1;
    char *end;
    optind = 1; /* argv[0] is "generate" */
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'i':
            input = optarg;
            break;
        case 'p':
            prompt = optarg;
            break;
        case 'f':
            promptf = optarg;
            break;
        case 'd':
            idsf = optarg;
            break;
        case 'n':
            max_new = strtol(optarg, &end, 10);
            if (*end || end == optarg || max_new < 0 || max_new > (1 << 24)) {
                fprintf(stderr, CMD ": --max-new-tokens takes an integer in [0, 16777216]\n");
                free(stops);
                return 1;
            }
            break;
        case 'c':
            chat = 1;
            break;
        case 'e':
            stop_eos = 1;
            break;
        case 's':
            stops = xrealloc(stops, sizeof(*stops) * (size_t)(nstop + 1));
            stops[nstop++] = optarg;
            break;
        case 'I':
            print_ids = 1;
            break;
        case 't':
            threads = strtol(optarg, &end, 10);
            if (*end || end == optarg || threads < 1 || threads > 1024) {
                fprintf(stderr, CMD ": --threads takes an integer in [1, 1024]\n");
                free(stops);
                return 1;
            }
            break;
        default:
            goto usage;
        }
    }
    if (!input || max_new < 0 || optind != argc || (!!prompt + !!promptf + !!idsf) != 1)
        goto usage;
    if (chat && idsf) {
        fprintf(stderr, CMD ": --chat needs a text prompt (--prompt or --prompt-file)\n");
        free(stops);
        return 1;
    }

    int rc = 1, n_ids = 0, n_eos = 0;
    char msg[512], *err = NULL, *text = NULL;
    int32_t *ids = NULL, *eos = NULL;
    struct tok *t = NULL;
    struct model *m = NULL;
    struct gen_result res = { 0 };
    struct buf pb;
    buf_init(&pb);
    {
        char *e = NULL;
        if (!(t = tokdata_tok_load(input, &e))) {
            fprintf(stderr, CMD ": %s\n", e);
            free(e);
            goto done;
        }
    }
    if (idsf) {
        if (read_ids(idsf, &ids, &n_ids) != 0)
            goto done;
    } else {
        size_t len;
        if (promptf) {
            if (file_read_all(promptf, &text, &len) != 0) {
                fprintf(stderr, CMD ": cannot read the prompt file '%s'\n", promptf);
                goto done;
            }
        } else {
            text = xstrdup(prompt);
        }
        if (chat) {
            struct chat_template ct;
            if (chat_template_load(input, &ct, &err) != 0) {
                fprintf(stderr, CMD ": %s\n", err);
                goto done;
            }
            int crc = gen_chat_wrap(&ct, text, &pb, &err);
            chat_template_release(&ct);
            if (crc) {
                fprintf(stderr, CMD ": %s\n", err);
                goto done;
            }
        } else {
            buf_puts(&pb, text);
        }
        n_ids = tok_encode(t, pb.data ? pb.data : "", pb.len, &ids, msg, sizeof(msg));
        if (n_ids < 0) {
            fprintf(stderr, CMD ": cannot encode the prompt: %s\n", msg);
            goto done;
        }
    }
    if (n_ids < 1) {
        fprintf(stderr, CMD ": the prompt is empty\n");
        goto done;
    }
    if (stop_eos && gen_eos_load(input, &eos, &n_eos, &err) != 0) {
        fprintf(stderr, CMD ": %s\n", err);
        goto done;
    }
    if (stop_eos && n_eos == 0)
        fprintf(stderr, CMD ": note: the model names no eos_token_id; --stop-eos stops nothing\n");
    struct model_opts mo = { (int)threads, KERN_IMPL_CPU, 0 };
    if (model_load(&m, input, &mo, &err) != 0) {
        fprintf(stderr, CMD ": cannot load the model in '%s': %s\n", input, err);
        goto done;
    }
    struct gen_opts go = { 0 };
    go.max_new_tokens = (int)max_new;
    go.eos = eos;
    go.n_eos = n_eos;
    go.stop = stops;
    go.n_stop = nstop;
    go.tok = t;
    const int32_t *pp = ids;
    if (gen_greedy(m, &pp, &n_ids, 1, &go, &res, &err) != 0) {
        fprintf(stderr, CMD ": %s\n", err);
        goto done;
    }
    if (print_ids) {
        for (int i = 0; i < res.n; i++)
            printf(i ? " %d" : "%d", (int)res.ids[i]);
        printf("\n");
    } else {
        fputs(res.text ? res.text : "", stdout);
    }
    rc = fflush(stdout) ? 1 : 0;
    if (rc)
        fprintf(stderr, CMD ": cannot write the output\n");
done:
    gen_result_release(&res);
    model_free(m);
    tok_free(t);
    buf_release(&pb);
    free(ids);
    free(eos);
    free(text);
    free(err);
    free(stops);
    return rc;
usage:
    free(stops);
    fprintf(stderr, "usage: " CMD " --input DIR (--prompt TEXT | --prompt-file F | --ids FILE)\n"
                    "         --max-new-tokens N [--chat] [--stop-eos] [--stop STR]... "
                    "[--print-ids] [--threads N]\n");
    return 1;
}
