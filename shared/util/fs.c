/*
 * fs.c — file-system helpers (see fs.h).
 */
#include "fs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Create one directory; a new one is made durable by syncing its parent,
 * so a message acknowledged into it cannot vanish with it. */
static int mkdir_one(char *path, mode_t mode)
{
	if (mkdir(path, mode) == 0) {
		char *slash = strrchr(path, '/');
		if (slash && slash != path) {
			*slash = '\0';
			bool ok = fs_sync_dir(path);
			*slash = '/';
			if (!ok)
				return -1;
		} else if (!fs_sync_dir(slash ? "/" : ".")) {
			return -1;
		}
		return 0;
	}
	if (errno != EEXIST)
		return -1;
	struct stat st;
	if (stat(path, &st) != 0)
		return -1;
	if (!S_ISDIR(st.st_mode)) {
		errno = ENOTDIR;
		return -1;
	}
	return 0;
}

int fs_mkdir_p(const char *path, mode_t mode)
{
	char tmp[4096];
	if (snprintf(tmp, sizeof(tmp), "%s", path) >= (int)sizeof(tmp)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir_one(tmp, mode) != 0)
			return -1;
		*p = '/';
	}
	return mkdir_one(tmp, mode);
}

bool fs_write_all(int fd, const void *buf, size_t n)
{
	const char *p = buf;
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return false;
		if (w == 0) {
			errno = EIO;
			return false;
		}
		p += w;
		n -= (size_t)w;
	}
	return true;
}

bool fs_sync_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return false;
	bool ok = fsync(fd) == 0;
	int saved = errno;
	close(fd);
	errno = saved;
	return ok;
}
