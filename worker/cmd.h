/*
 * cmd: exaq-worker subcommands that live outside main.c. Each takes the arguments after the
 * subcommand name (argv[0] is the subcommand) and returns the exit status.
 */
#ifndef EXAQ_CMD_H
#define EXAQ_CMD_H

int cmd_logits(int argc, char **argv);
int cmd_chat_template(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);

#endif
