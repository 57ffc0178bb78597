/* test_slurm: what exaqd makes of each Slurm job state (proto/vocab.h, used by daemon/slurm.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "proto/vocab.h"

static void check(const char *state, bool terminal, enum fail_class want, bool no_retry)
{
    enum fail_class c = FAIL_LOST;
    bool nr = true;
    bool t = vocab_slurm_state_ended(state, &c, &nr);
    if (t != terminal || c != want || nr != no_retry)
        fail_msg("state '%s': terminal %d class %s no_retry %d; want %d %s %d", state ? state : "",
                 t, fail_class_name(c), nr, terminal, fail_class_name(want), no_retry);
}

static void test_states(void **state)
{
    (void)state;
    /* live states */
    check("PENDING", false, FAIL_NONE, false);
    check("RUNNING", false, FAIL_NONE, false);
    check("CONFIGURING", false, FAIL_NONE, false);
    check("COMPLETING", false, FAIL_NONE, false);
    check("SUSPENDED", false, FAIL_NONE, false);
    check("REQUEUED", false, FAIL_NONE, false);
    check(NULL, false, FAIL_NONE, false);
    /* ended: the outcome file decides COMPLETED and FAILED */
    check("COMPLETED", true, FAIL_NONE, false);
    check("FAILED", true, FAIL_ERROR, false);
    check("CANCELLED", true, FAIL_CANCELLED, false);
    check("CANCELLED by 0", true, FAIL_CANCELLED, false); /* as sacct writes it */
    check("TIMEOUT", true, FAIL_TIMEOUT, false);
    check("DEADLINE", true, FAIL_TIMEOUT, false);
    check("OUT_OF_MEMORY", true, FAIL_OOM, false);
    /* the cluster's fault: back to pending, no retry used */
    check("NODE_FAIL", true, FAIL_INTERRUPTED, true);
    check("PREEMPTED", true, FAIL_INTERRUPTED, true);
    check("BOOT_FAIL", true, FAIL_INTERRUPTED, true);
    /* a prefix is not a state */
    check("CANCELLEDX", false, FAIL_NONE, false);
    check("TIME", false, FAIL_NONE, false);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_states),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
