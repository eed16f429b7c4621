/*
 * fs.h — small file-system helpers shared by the queue, Maildir delivery
 * and the stages.
 */
#ifndef RAMPART_FS_H
#define RAMPART_FS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* mkdir -p; every directory it creates is synced into its parent.  An
 * existing non-directory is ENOTDIR.  0 or -1 with errno. */
int fs_mkdir_p(const char *path, mode_t mode);
/* write() until done, retrying EINTR; false with errno on failure. */
bool fs_write_all(int fd, const void *p, size_t n);
/* fsync a directory by path; false with errno on failure. */
bool fs_sync_dir(const char *path);

#endif
