/*
 * testutil.c — shared unit-test helpers (see testutil.h).
 */
#include "testutil.h"

#include <stdarg.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util/buf.h"
#include "util/log.h"

int tu_mkdtemp(char *out, size_t outlen, const char *tag)
{
	const char *tmp = getenv("TMPDIR");
	if ((size_t)snprintf(out, outlen, "%s/rampart-%s-XXXXXX", tmp && *tmp ? tmp : "/tmp", tag) >= outlen)
		return -1;
	return mkdtemp(out) ? 0 : -1;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

void tu_rmtree(const char *dir)
{
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

void tu_rmtree_unless_kept(const char *dir)
{
	if (!getenv("RAMPART_TEST_KEEP"))
		tu_rmtree(dir);
	else
		fprintf(stderr, "kept %s\n", dir);
}

long long tu_mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- files, programs, the log -------------------------------------------- */

void tu_write_bytes(const char *path, const void *data, size_t len)
{
	FILE *fp = fopen(path, "wb");
	assert_non_null(fp);
	assert_int_equal(fwrite(data, 1, len, fp), len);
	assert_int_equal(fclose(fp), 0);
}

void tu_write_file(const char *path, const char *text)
{
	tu_write_bytes(path, text, strlen(text));
}

char *tu_read_file(const char *path, size_t *lenp)
{
	FILE *fp = fopen(path, "rb");
	if (!fp)
		return NULL;
	struct buf b = BUF_INIT;
	char tmp[4096];
	size_t n;
	while ((n = fread(tmp, 1, sizeof(tmp), fp)) > 0)
		buf_append(&b, tmp, n);
	fclose(fp);
	if (lenp)
		*lenp = b.len;
	return buf_steal(&b, NULL);
}

bool tu_file_has(const char *path, const char *what)
{
	FILE *fp = fopen(path, "r");
	if (!fp)
		return false;
	char line[4096];
	bool found = false;
	while (!found && fgets(line, sizeof(line), fp))
		found = strstr(line, what) != NULL;
	fclose(fp);
	return found;
}

int tu_run_prog(const char *out, char *const argv[])
{
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (fd < 0)
			_exit(126);
		dup2(fd, 1);
		dup2(fd, 2);
		execv(argv[0], argv);
		_exit(127);
	}
	int st;
	while (waitpid(pid, &st, 0) < 0)
		assert_int_equal(errno, EINTR);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int tu_log_open(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
	if (fd < 0)
		return -1;
	log_init("mx", "mx");
	log_set_fd(fd);
	return fd;
}

void tu_log_close(int fd)
{
	log_set_fd(2);
	close(fd);
}

void tu_assert_contains(const char *hay, const char *needle)
{
	if (!hay || !strstr(hay, needle))
		fail_msg("'%s' lacks '%s'", hay ? hay : "(null)", needle);
}

/* ---- a private redis-server ---------------------------------------------- */

int tu_free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sa);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	close(fd);
	return ntohs(sa.sin_port);
}

bool tu_redis_answers(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct timeval tv = { 0, 300000 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	bool ok = false;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 && write(fd, "PING\r\n", 6) == 6) {
		char b[64];
		ssize_t n = read(fd, b, sizeof(b));
		ok = n > 0 && (b[0] == '+' || b[0] == '-');
	}
	close(fd);
	return ok;
}

static pid_t tu_redis_spawn(struct tu_redis *r)
{
	char port[16], log[300];
	snprintf(port, sizeof(port), "%d", r->port);
	snprintf(log, sizeof(log), "%s/redis.log", r->dir);
	pid_t pid = fork();
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);      /* never outlive a crashed test */
		int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
		       "--appendonly", "no", "--requirepass", r->password, "--unixsocket", r->sock,
		       "--unixsocketperm", "700", "--dir", r->dir, "--daemonize", "no", (char *)NULL);
		_exit(127);
	}
	long long deadline = tu_mono_ms() + 10000;
	while (tu_mono_ms() < deadline) {
		if (tu_redis_answers(r->port))
			return pid;
		int st;
		if (waitpid(pid, &st, WNOHANG) == pid)
			return -1;              /* it died: port taken? */
		usleep(20000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	return -1;
}

bool tu_redis_start(struct tu_redis *r, const char *dir, const char *password, bool same_port)
{
	snprintf(r->dir, sizeof(r->dir), "%s", dir);
	snprintf(r->sock, sizeof(r->sock), "%s/redis.sock", dir);
	snprintf(r->password, sizeof(r->password), "%s", password);
	for (int attempt = 0; attempt < 10; attempt++) {
		if (!same_port || r->port <= 0)
			r->port = tu_free_port();
		r->pid = tu_redis_spawn(r);
		if (r->pid > 0)
			return true;
		usleep(100000);
	}
	return false;
}

void tu_redis_stop(struct tu_redis *r)
{
	if (r->pid <= 0)
		return;
	kill(r->pid, SIGCONT);
	kill(r->pid, SIGTERM);
	long long deadline = tu_mono_ms() + 5000;
	int st;
	while (waitpid(r->pid, &st, WNOHANG) == 0) {
		if (tu_mono_ms() > deadline) {
			kill(r->pid, SIGKILL);
			waitpid(r->pid, &st, 0);
			break;
		}
		usleep(10000);
	}
	r->pid = -1;
}
