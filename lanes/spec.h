/*
 * spec: one stage's parameter object on its own, outside a lanes file.
 *
 * The lanes parser owns every default and rule of every stage spec (lanes/schema.c); these two
 * calls give the worker the same rules without a second copy. A spec is the JSON object a
 * stage's mapping becomes in a lanes file (docs/lanes.md), e.g. {"method":"rtn","scheme":"W8A16"}
 * for quantize.
 *
 * lanes_spec_complete: a partial spec, as written by hand for `exaq-worker run KIND --spec`,
 * becomes the canonical complete spec the lanes parser would give the same stage in a lanes
 * file: defaults applied, rules checked, unknown keys rejected with a hint, data paths made
 * absolute against base_dir (NULL: the current directory) and required to exist. There is no
 * top-level calibration block to inherit, and resource keys (retries, gpus, ...) are refused:
 * they belong to the lanes file.
 *
 * lanes_spec_check: what every stage the worker runs goes through. The spec must already be
 * complete: a field the parser would default is an error naming it ("spec: missing field
 * 'group_size' for quantize"), as is an unknown key ("spec: unknown key 'act_order' in quantize
 * stage (did you mean 'actorder'?)"), a duplicate key, a key the canonical spec drops, a wrong
 * type or value, or a relative data path. Data files are not opened; the stage does that.
 *
 * Both return 0, or -1 with *err set to a one-line message starting with "spec: " (new
 * string). lanes_spec_complete sets *out to the canonical JSON (new string) on success.
 */
#ifndef EXAQ_LANES_SPEC_H
#define EXAQ_LANES_SPEC_H

int lanes_spec_complete(const char *kind, const char *json, const char *base_dir, char **out,
                        char **err);
int lanes_spec_check(const char *kind, const char *json, char **err);

#endif
