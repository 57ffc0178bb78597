/*
 * cmd_chat: `exaq-worker chat-template --input DIR --messages FILE.json [--tools FILE.json]
 *           [--no-generation-prompt] [--template NAME] [--kwargs JSON]`.
 *
 * Prints the prompt the model's chat template makes of the conversation in FILE.json (a JSON
 * list of messages), exactly what transformers' tokenizer.apply_chat_template(messages,
 * tools=..., tokenize=False, add_generation_prompt=...) returns, with no newline added.
 * --kwargs is a JSON object of extra template variables (e.g. {"enable_thinking": false});
 * --template picks a named template. Errors go to stderr with exit status 1.
 */
#include "worker/cmd.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "worker/engine/chat.h"

static char *read_text(const char *what, const char *path)
{
    char *text = NULL;
    size_t len = 0;
    if (file_read_all(path, &text, &len) != 0) {
        fprintf(stderr, "exaq-worker chat-template: cannot read %s file '%s'\n", what, path);
        return NULL;
    }
    if (strlen(text) != len) {
        fprintf(stderr, "exaq-worker chat-template: %s file '%s' holds a NUL byte\n", what, path);
        free(text);
        return NULL;
    }
    return text;
}

int cmd_chat_template(int argc, char **argv)
{
    static const struct option opts[] = {
        { "input", required_argument, NULL, 'i' },
        { "messages", required_argument, NULL, 'm' },
        { "tools", required_argument, NULL, 't' },
        { "no-generation-prompt", no_argument, NULL, 'n' },
        { "template", required_argument, NULL, 'T' },
        { "kwargs", required_argument, NULL, 'k' },
        { NULL, 0, NULL, 0 },
    };
    const char *input = NULL, *msgf = NULL, *toolsf = NULL;
    struct chat_input in = { 0 };
    in.add_generation_prompt = true;
    int c;
    optind = 1; /* argv[0] is "chat-template" */
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'i':
            input = optarg;
            break;
        case 'm':
            msgf = optarg;
            break;
        case 't':
            toolsf = optarg;
            break;
        case 'n':
            in.add_generation_prompt = false;
            break;
        case 'T':
            in.template_name = optarg;
            break;
        case 'k':
            in.kwargs_json = optarg;
            break;
        default:
            goto usage;
        }
    }
    if (!input || !msgf || optind != argc)
        goto usage;

    int rc = 1;
    char *msgs = NULL, *tools = NULL, *err = NULL;
    struct chat_template ct;
    struct buf out;
    buf_init(&out);
    if (!(msgs = read_text("messages", msgf)))
        return 1;
    if (toolsf && !(tools = read_text("tools", toolsf)))
        goto done;
    in.messages_json = msgs;
    in.tools_json = tools;
    if (chat_template_load(input, &ct, &err) != 0) {
        fprintf(stderr, "exaq-worker chat-template: %s\n", err);
        goto done;
    }
    if (chat_render(&ct, &in, &out, &err) != 0) {
        /* An error in the conversation or the tools names the file it came from. */
        if (!strncmp(err, "messages: ", 10))
            fprintf(stderr, "exaq-worker chat-template: messages file '%s': %s\n", msgf, err + 10);
        else if (toolsf && !strncmp(err, "tools: ", 7))
            fprintf(stderr, "exaq-worker chat-template: tools file '%s': %s\n", toolsf, err + 7);
        else
            fprintf(stderr, "exaq-worker chat-template: %s\n", err);
    } else if (fwrite(out.data ? out.data : "", 1, out.len, stdout) != out.len || fflush(stdout))
        fprintf(stderr, "exaq-worker chat-template: cannot write the prompt\n");
    else
        rc = 0;
    chat_template_release(&ct);
done:
    buf_release(&out);
    free(msgs);
    free(tools);
    free(err);
    return rc;
usage:
    fprintf(stderr, "usage: exaq-worker chat-template --input DIR --messages FILE.json "
                    "[--tools FILE.json]\n"
                    "                                 [--no-generation-prompt] [--template NAME] "
                    "[--kwargs JSON]\n");
    return 1;
}
