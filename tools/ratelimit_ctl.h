/*
 * ratelimit_ctl.h — `rampartctl ratelimit`: look at and reset the rate
 * limit buckets of check "ratelimit" in the state store the stages share.
 *
 *   rampartctl [-c rampart.conf] [-n instance] ratelimit show KIND:VALUE
 *   rampartctl [-c rampart.conf] [-n instance] ratelimit reset KIND:VALUE
 *   rampartctl [-c rampart.conf] [-n instance] ratelimit list [KIND]
 *
 * The store is opened from [state] (the LMDB file the stages of this host
 * share, or their Redis); the rules come from [check.ratelimit.INSTANCE]
 * or [check.ratelimit], as the instance's check reads them.
 */
#ifndef RAMPART_RATELIMIT_CTL_H
#define RAMPART_RATELIMIT_CTL_H

/* argv[0] is the subcommand (show, reset, list).  Returns the exit
 * status: 0 done, 1 failed, 2 usage. */
int ratelimit_ctl_main(const char *config_path, const char *instance, int argc, char **argv);

#endif
