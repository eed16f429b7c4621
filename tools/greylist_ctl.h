/*
 * greylist_ctl.h — `rampartctl greylist`: list, allow and purge the
 * entries of check "greylist" in the state store the stages share.
 *
 *   rampartctl [-c rampart.conf] [-n instance] greylist list [FILTER]
 *   rampartctl [-c rampart.conf] [-n instance] greylist allow CLIENT
 *   rampartctl [-c rampart.conf] [-n instance] greylist purge [FILTER]
 *
 * The store is opened from [state] (the LMDB file the stages of this host
 * share, or their Redis); the check's parameters (network prefixes,
 * delay, auto_allow_after) come from [check.greylist.INSTANCE] or
 * [check.greylist], as the instance's check reads them.
 */
#ifndef RAMPART_GREYLIST_CTL_H
#define RAMPART_GREYLIST_CTL_H

/* argv[0] is the subcommand (list, allow, purge).  Returns the exit
 * status: 0 done, 1 failed, 2 usage. */
int greylist_ctl_main(const char *config_path, const char *instance, int argc, char **argv);

#endif
