/*
 * user_ctl.h — `rampartctl user ...` (the submission stage's accounts file)
 * and `rampartctl authfail ...` (its brute-force counters in the state
 * store).
 */
#ifndef RAMPART_USER_CTL_H
#define RAMPART_USER_CTL_H

int user_ctl_main(const char *path, const char *instance, int argc, char **argv);
int authfail_ctl_main(const char *path, const char *instance, int argc, char **argv);

#endif
