/*
 * cmd_tokenize: `exaq-worker tokenize (--input DIR | --tokenizer FILE) (--text FILE | --ids FILE)
 *               [--out FILE]`.
 *
 * Encodes a UTF-8 text file with the tokenizer.json of a model directory (or a given file),
 * exactly as the stages do (the whole file in one encode call, no special tokens added), and
 * writes the ids as little-endian uint32 to --out; or decodes a file of such ids back to text
 * (skip_special_tokens=False), written to --out or stdout. Prints a one-line summary on stderr.
 * It exists to check the tokenizer against other implementations (tests/integ/tokenize_cli.sh)
 * and to prepare `ids:` data for the eval and calibration stages.
 */
#include "worker/cmd.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "worker/engine/tokdata.h"
#include "worker/engine/tokenizer.h"

#define TOKENIZE_USAGE                                                                             \
    "usage: exaq-worker tokenize (--input DIR | --tokenizer FILE) (--text FILE | --ids FILE)\n"    \
    "                            [--out FILE]\n"

static int write_all(const char *path, const void *p, size_t n)
{
    FILE *f = path ? fopen(path, "wb") : stdout;
    if (!f) {
        fprintf(stderr, "exaq-worker tokenize: cannot write '%s': %s\n", path, strerror(errno));
        return -1;
    }
    size_t w = n ? fwrite(p, 1, n, f) : 0;
    int bad = w != n || fflush(f) != 0;
    if (path && fclose(f) != 0)
        bad = 1;
    if (bad) {
        fprintf(stderr, "exaq-worker tokenize: cannot write '%s'\n", path ? path : "stdout");
        return -1;
    }
    return 0;
}

int cmd_tokenize(int argc, char **argv)
{
    static const struct option opts[] = {
        { "input", required_argument, NULL, 'i' }, { "tokenizer", required_argument, NULL, 'k' },
        { "text", required_argument, NULL, 't' },  { "ids", required_argument, NULL, 'd' },
        { "out", required_argument, NULL, 'o' },   { NULL, 0, NULL, 0 },
    };
    const char *input = NULL, *tokf = NULL, *textf = NULL, *idsf = NULL, *outf = NULL;
    int c, rc = 1;
    optind = 1; /* argv[0] is "tokenize" */
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'i':
            input = optarg;
            break;
        case 'k':
            tokf = optarg;
            break;
        case 't':
            textf = optarg;
            break;
        case 'd':
            idsf = optarg;
            break;
        case 'o':
            outf = optarg;
            break;
        default:
            fprintf(stderr, TOKENIZE_USAGE);
            return 1;
        }
    }
    if (optind < argc || !input == !tokf || !textf == !idsf || (textf && !outf)) {
        fprintf(stderr, "exaq-worker tokenize: give one of --input and --tokenizer, one of --text "
                        "and --ids, and --out with --text\n" TOKENIZE_USAGE);
        return 1;
    }
    char *err = NULL;
    struct tok *t = input ? tokdata_tok_load(input, &err) : tok_load(tokf, &err);
    if (!t) {
        fprintf(stderr, "exaq-worker tokenize: %s\n", err ? err : "cannot load the tokenizer");
        free(err);
        return 1;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    double t0 = now_mono();
    if (textf) {
        if (tokdata_text_read(textf, t, &ids, &n, &err) < 0) {
            fprintf(stderr, "exaq-worker tokenize: %s\n", err ? err : textf);
            goto out;
        }
        double dt = now_mono() - t0;
        unsigned char *le = xmalloc(n * 4 + 1);
        for (size_t i = 0; i < n; i++) {
            uint32_t v = (uint32_t)ids[i];
            le[4 * i] = (unsigned char)v;
            le[4 * i + 1] = (unsigned char)(v >> 8);
            le[4 * i + 2] = (unsigned char)(v >> 16);
            le[4 * i + 3] = (unsigned char)(v >> 24);
        }
        int w = write_all(outf, le, n * 4);
        free(le);
        if (w < 0)
            goto out;
        fprintf(stderr, "tokenize: %s -> %zu ids in %.3f s\n", textf, n, dt);
    } else {
        if (tokdata_ids_read(idsf, &ids, &n, &err) < 0) {
            fprintf(stderr, "exaq-worker tokenize: %s\n", err ? err : idsf);
            goto out;
        }
        size_t len = 0;
        char *text = tok_decode_n(t, ids, n, &len);
        int w = write_all(outf, text, len);
        free(text);
        if (w < 0)
            goto out;
        fprintf(stderr, "tokenize: %s: %zu ids -> %zu bytes\n", idsf, n, len);
    }
    rc = 0;
out:
    free(ids);
    free(err);
    tok_free(t);
    return rc;
}
