/*
 * queue.c — the durable spool of a stage (see queue.h): the queue file
 * format, group commit on a commit thread, recovery at start-up, the
 * delivery scheduler and the offline administration used by rampartctl.
 *
 * Queue file, format version 1 (integers little-endian, CRC-32C):
 *
 *   preamble    32 bytes   "RAMPARTQ", u32 version, u32 flags (0),
 *                          u32 hdr_len, u32 nrcpt, u64 data_len
 *   header      hdr_len    envelope fields: u16 tag, u32 length, value.
 *                          Tags with bit 15 set are optional (skipped when
 *                          unknown); any other unknown tag makes the file
 *                          unreadable.  A T_RCPT field starts a recipient,
 *                          T_RCPT_ORCPT / T_RCPT_NOTIFY qualify the last one.
 *   retry       512 bytes  "RTRY", u32 attempts, i64 next_try_ms (0: due),
 *                          i64 last_try_ms, u16 error length, u16 flags
 *                          (1: the delay warning was sent; older files 0),
 *                          char last_error[480], u32 crc of the block
 *   recipients  nrcpt x 256 bytes: 'R', state char (P D F B), u16 reply
 *                          length, u32 attempts, i32 last code,
 *                          i64 updated_ms, char reply[232], u32 crc
 *   data        data_len   the message, byte for byte
 *   trailer     32 bytes   "RAMPQEND", u32 crc(preamble + header),
 *                          u32 crc(data), u64 file size, u32 0,
 *                          u32 crc of the trailer
 *
 * The preamble and header never change.  The retry block and the
 * recipient records have fixed widths, carry their own checksums and are
 * rewritten in place (pwrite + fdatasync).  A file whose size disagrees
 * with its preamble or trailer (truncated, trailing garbage), or whose
 * magic, version, checksums or fields are wrong, is moved to corrupt/ with
 * the reason.  Start-up reads only headers; the data checksum is checked
 * when a message is loaded for delivery.
 *
 * Concurrency.  A queue file is flock()ed (LOCK_EX) by whoever works on
 * it: the commit thread from creation in tmp/ until it is durable in
 * active/, the daemon while a message is out for delivery and its result
 * is being saved, rampartctl while it deletes, holds, releases or flushes
 * (with LOCK_NB: "busy" when the daemon has it).  A file is moved to
 * corrupt/ only under its lock, and the daemon re-reads a file under the
 * lock before each delivery, so offline changes are never overwritten.
 * Stale tmp/ files are those nobody holds a lock on.
 *
 * Threads.  All queue_* calls except the offline functions are made from
 * the event loop thread.  The commit thread only does file I/O and hands
 * finished jobs back through an eventfd watched by the event base, so the
 * queue never touches libevent from another thread and does not itself
 * need evthread_use_pthreads() (calling it in main() is harmless).
 *
 * Flush.  queue_flush() (offline) sets next_try to 0 in the files and
 * creates the marker file "flush" in the spool; the daemon rescans
 * active/ every rescan_ms (new files, e.g. released from hold, are picked
 * up; vanished ones forgotten) and, when the marker is present, re-reads
 * next_try of the waiting messages.  queue_flush_now() (SIGUSR1) rescans
 * at once and makes every waiting message due.
 */
#include "queue.h"
#include "../util/alloc.h"
#include "../util/buf.h"
#include "../util/id.h"
#include "../util/log.h"

#include <dirent.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>

#define QF_MAGIC        "RAMPARTQ"
#define QF_END_MAGIC    "RAMPQEND"
#define QF_VERSION      1u
#define PRE_SIZE        32u
#define RETRY_SIZE      512u
#define RETRY_ERR_OFF   28u
#define RETRY_ERR_MAX   (RETRY_SIZE - RETRY_ERR_OFF - 4u)   /* 480 */
#define RS_SIZE         256u
#define RS_REPLY_OFF    20u
#define RS_REPLY_MAX    (RS_SIZE - RS_REPLY_OFF - 4u)       /* 232 */
#define TRAILER_SIZE    32u
#define HDR_MAX         (16u << 20)
#define NRCPT_MAX       100000u
#define TAG_OPTIONAL    0x8000u

enum qf_tag {
	T_QID = 1, T_SENDER, T_CORRELATION, T_ARRIVAL, T_FLAGS, T_RET, T_ENVID,
	T_CLIENT_ADDR, T_CLIENT_NAME, T_CLIENT_HELO, T_CLIENT_PROTO, T_CLIENT_LOGIN,
	T_CLIENT_PORT,
	T_RCPT = 32, T_RCPT_ORCPT, T_RCPT_NOTIFY,
};
#define QF_FLAG_8BIT     1u
#define QF_FLAG_SMTPUTF8 2u

#define EXPIRED_REPLY   "5.4.7 message expired in queue"
/* The deliverer expires recipients at lifetime_ms and tells the sender
 * (stage.c); the queue's own expiry, which only logs, is a backstop for
 * recipients nobody expired this long after their time.  In between, a
 * recipient past its lifetime stays pending and is handed out again
 * within a second, so that the deliverer's expiry, with its report, runs
 * (an attempt that ended just after the lifetime used to fail them here,
 * unreported). */
#define EXPIRY_GRACE_MS (10LL * 60 * 1000)
#define FLUSH_MARKER    "flush"
#define BUSY_RETRY_MS   1000
#define WHY_MAX         256

/* ---- small helpers ------------------------------------------------------ */

static const uint32_t crc32c_table[256] = {
	0x00000000u, 0xf26b8303u, 0xe13b70f7u, 0x1350f3f4u, 0xc79a971fu, 0x35f1141cu,
	0x26a1e7e8u, 0xd4ca64ebu, 0x8ad958cfu, 0x78b2dbccu, 0x6be22838u, 0x9989ab3bu,
	0x4d43cfd0u, 0xbf284cd3u, 0xac78bf27u, 0x5e133c24u, 0x105ec76fu, 0xe235446cu,
	0xf165b798u, 0x030e349bu, 0xd7c45070u, 0x25afd373u, 0x36ff2087u, 0xc494a384u,
	0x9a879fa0u, 0x68ec1ca3u, 0x7bbcef57u, 0x89d76c54u, 0x5d1d08bfu, 0xaf768bbcu,
	0xbc267848u, 0x4e4dfb4bu, 0x20bd8edeu, 0xd2d60dddu, 0xc186fe29u, 0x33ed7d2au,
	0xe72719c1u, 0x154c9ac2u, 0x061c6936u, 0xf477ea35u, 0xaa64d611u, 0x580f5512u,
	0x4b5fa6e6u, 0xb93425e5u, 0x6dfe410eu, 0x9f95c20du, 0x8cc531f9u, 0x7eaeb2fau,
	0x30e349b1u, 0xc288cab2u, 0xd1d83946u, 0x23b3ba45u, 0xf779deaeu, 0x05125dadu,
	0x1642ae59u, 0xe4292d5au, 0xba3a117eu, 0x4851927du, 0x5b016189u, 0xa96ae28au,
	0x7da08661u, 0x8fcb0562u, 0x9c9bf696u, 0x6ef07595u, 0x417b1dbcu, 0xb3109ebfu,
	0xa0406d4bu, 0x522bee48u, 0x86e18aa3u, 0x748a09a0u, 0x67dafa54u, 0x95b17957u,
	0xcba24573u, 0x39c9c670u, 0x2a993584u, 0xd8f2b687u, 0x0c38d26cu, 0xfe53516fu,
	0xed03a29bu, 0x1f682198u, 0x5125dad3u, 0xa34e59d0u, 0xb01eaa24u, 0x42752927u,
	0x96bf4dccu, 0x64d4cecfu, 0x77843d3bu, 0x85efbe38u, 0xdbfc821cu, 0x2997011fu,
	0x3ac7f2ebu, 0xc8ac71e8u, 0x1c661503u, 0xee0d9600u, 0xfd5d65f4u, 0x0f36e6f7u,
	0x61c69362u, 0x93ad1061u, 0x80fde395u, 0x72966096u, 0xa65c047du, 0x5437877eu,
	0x4767748au, 0xb50cf789u, 0xeb1fcbadu, 0x197448aeu, 0x0a24bb5au, 0xf84f3859u,
	0x2c855cb2u, 0xdeeedfb1u, 0xcdbe2c45u, 0x3fd5af46u, 0x7198540du, 0x83f3d70eu,
	0x90a324fau, 0x62c8a7f9u, 0xb602c312u, 0x44694011u, 0x5739b3e5u, 0xa55230e6u,
	0xfb410cc2u, 0x092a8fc1u, 0x1a7a7c35u, 0xe811ff36u, 0x3cdb9bddu, 0xceb018deu,
	0xdde0eb2au, 0x2f8b6829u, 0x82f63b78u, 0x709db87bu, 0x63cd4b8fu, 0x91a6c88cu,
	0x456cac67u, 0xb7072f64u, 0xa457dc90u, 0x563c5f93u, 0x082f63b7u, 0xfa44e0b4u,
	0xe9141340u, 0x1b7f9043u, 0xcfb5f4a8u, 0x3dde77abu, 0x2e8e845fu, 0xdce5075cu,
	0x92a8fc17u, 0x60c37f14u, 0x73938ce0u, 0x81f80fe3u, 0x55326b08u, 0xa759e80bu,
	0xb4091bffu, 0x466298fcu, 0x1871a4d8u, 0xea1a27dbu, 0xf94ad42fu, 0x0b21572cu,
	0xdfeb33c7u, 0x2d80b0c4u, 0x3ed04330u, 0xccbbc033u, 0xa24bb5a6u, 0x502036a5u,
	0x4370c551u, 0xb11b4652u, 0x65d122b9u, 0x97baa1bau, 0x84ea524eu, 0x7681d14du,
	0x2892ed69u, 0xdaf96e6au, 0xc9a99d9eu, 0x3bc21e9du, 0xef087a76u, 0x1d63f975u,
	0x0e330a81u, 0xfc588982u, 0xb21572c9u, 0x407ef1cau, 0x532e023eu, 0xa145813du,
	0x758fe5d6u, 0x87e466d5u, 0x94b49521u, 0x66df1622u, 0x38cc2a06u, 0xcaa7a905u,
	0xd9f75af1u, 0x2b9cd9f2u, 0xff56bd19u, 0x0d3d3e1au, 0x1e6dcdeeu, 0xec064eedu,
	0xc38d26c4u, 0x31e6a5c7u, 0x22b65633u, 0xd0ddd530u, 0x0417b1dbu, 0xf67c32d8u,
	0xe52cc12cu, 0x1747422fu, 0x49547e0bu, 0xbb3ffd08u, 0xa86f0efcu, 0x5a048dffu,
	0x8ecee914u, 0x7ca56a17u, 0x6ff599e3u, 0x9d9e1ae0u, 0xd3d3e1abu, 0x21b862a8u,
	0x32e8915cu, 0xc083125fu, 0x144976b4u, 0xe622f5b7u, 0xf5720643u, 0x07198540u,
	0x590ab964u, 0xab613a67u, 0xb831c993u, 0x4a5a4a90u, 0x9e902e7bu, 0x6cfbad78u,
	0x7fab5e8cu, 0x8dc0dd8fu, 0xe330a81au, 0x115b2b19u, 0x020bd8edu, 0xf0605beeu,
	0x24aa3f05u, 0xd6c1bc06u, 0xc5914ff2u, 0x37faccf1u, 0x69e9f0d5u, 0x9b8273d6u,
	0x88d28022u, 0x7ab90321u, 0xae7367cau, 0x5c18e4c9u, 0x4f48173du, 0xbd23943eu,
	0xf36e6f75u, 0x0105ec76u, 0x12551f82u, 0xe03e9c81u, 0x34f4f86au, 0xc69f7b69u,
	0xd5cf889du, 0x27a40b9eu, 0x79b737bau, 0x8bdcb4b9u, 0x988c474du, 0x6ae7c44eu,
	0xbe2da0a5u, 0x4c4623a6u, 0x5f16d052u, 0xad7d5351u,
};

static uint32_t crc32c_sw(uint32_t crc, const unsigned char *b, size_t n)
{
	while (n--)
		crc = crc32c_table[(crc ^ *b++) & 0xffu] ^ (crc >> 8);
	return crc;
}

#if defined(__x86_64__)
/* The SSE4.2 CRC32 instruction computes CRC-32C eight bytes at a time:
 * the message checksum is computed on every write and read of a queue
 * file, so this is on the hot path. */
__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const unsigned char *b, size_t n)
{
	uint64_t c = crc;
	while (n >= 8) {
		uint64_t v;
		memcpy(&v, b, 8);
		c = __builtin_ia32_crc32di(c, v);
		b += 8;
		n -= 8;
	}
	uint32_t c32 = (uint32_t)c;
	while (n--)
		c32 = __builtin_ia32_crc32qi(c32, *b++);
	return c32;
}
#endif

static uint32_t crc32c(uint32_t crc, const void *p, size_t n)
{
	const unsigned char *b = p;
	crc = ~crc;
#if defined(__x86_64__)
	if (__builtin_cpu_supports("sse4.2"))
		return ~crc32c_hw(crc, b, n);
#endif
	return ~crc32c_sw(crc, b, n);
}

uint32_t queue_crc32c(const void *p, size_t n)
{
	return crc32c(0, p, n);
}

static void put16(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)v;
	p[1] = (unsigned char)(v >> 8);
}

static void put32(unsigned char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static void put64(unsigned char *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get16(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8;
}

static uint32_t get32(const unsigned char *p)
{
	uint32_t v = 0;
	for (int i = 3; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static uint64_t get64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void iso8601(char *out, size_t n, time_t t)
{
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Length of s cut to at most max bytes without splitting a UTF-8 sequence. */
static size_t text_cut(const char *s, size_t max)
{
	size_t n = strlen(s);
	if (n <= max)
		return n;
	n = max;
	while (n > 0 && ((unsigned char)s[n] & 0xc0u) == 0x80u)
		n--;
	return n;
}

/* Bounded string copy (always terminated). */
static void scopy(char *dst, size_t n, const char *src)
{
	size_t len = strnlen(src, n - 1);
	memcpy(dst, src, len);
	dst[len] = '\0';
}

static bool is_dot(const char *name)
{
	return name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'));
}

static int pread_full(int fd, void *buf, size_t n, off_t off)
{
	char *p = buf;
	while (n > 0) {
		ssize_t r = pread(fd, p, n, off);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return errno;
		}
		if (r == 0)
			return -1;          /* end of file */
		p += r;
		n -= (size_t)r;
		off += r;
	}
	return 0;
}

static int pwrite_full(int fd, const void *buf, size_t n, off_t off)
{
	const char *p = buf;
	while (n > 0) {
		ssize_t w = pwrite(fd, p, n, off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return errno;
		}
		if (w == 0)
			return EIO;
		p += w;
		n -= (size_t)w;
		off += w;
	}
	return 0;
}

/* write() loop: short writes are continued, EINTR retried; the errno of a
 * failure (ENOSPC, EDQUOT, EIO ...) is returned, 0 on success. */
static int write_full(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return errno;
		}
		if (w == 0)
			return EIO;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int sync_fd(int fd, bool data_only)
{
	int r = data_only ? fdatasync(fd) : fsync(fd);
	return r < 0 ? errno : 0;
}

/* Does name in dirfd still refer to the file open on fd? */
static bool same_file(int dirfd, const char *name, int fd)
{
	struct stat a, b;
	if (fstat(fd, &a) < 0 || fstatat(dirfd, name, &b, AT_SYMLINK_NOFOLLOW) < 0)
		return false;
	return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

/* rename that never replaces an existing file (falls back to link+unlink
 * on file systems without RENAME_NOREPLACE). */
static int rename_noreplace(int from, const char *name, int to, const char *newname)
{
	if (renameat2(from, name, to, newname, RENAME_NOREPLACE) == 0)
		return 0;
	if (errno != EINVAL && errno != ENOSYS)
		return errno;
	if (linkat(from, name, to, newname, 0) < 0)
		return errno;
	if (unlinkat(from, name, 0) < 0) {
		int e = errno;
		unlinkat(to, newname, 0);
		return e;
	}
	return 0;
}

/* ---- spool directories --------------------------------------------------- */

struct spool {
	int root, tmp, active, hold, corrupt, failed, quarantine;
};

static const char *const spool_subdirs[] = { "tmp", "active", "hold", "corrupt", "failed", "quarantine" };
/* Made by a newer version: a spool from before it lacks the directory
 * until the daemon next starts; offline, it is then just empty. */
#define SPOOL_LATE_SUBDIR "quarantine"

static void spool_close(struct spool *sp)
{
	int *fds[] = { &sp->root, &sp->tmp, &sp->active, &sp->hold, &sp->corrupt, &sp->failed, &sp->quarantine };
	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
		if (*fds[i] >= 0)
			close(*fds[i]);
		*fds[i] = -1;
	}
}

static bool spool_open(const char *dir, bool create, struct spool *sp, char *why, size_t whylen)
{
	int *fds[] = { &sp->tmp, &sp->active, &sp->hold, &sp->corrupt, &sp->failed, &sp->quarantine };
	bool made = false;
	sp->root = sp->tmp = sp->active = sp->hold = sp->corrupt = sp->failed = sp->quarantine = -1;
	if (create && mkdir(dir, 0700) < 0 && errno != EEXIST) {
		snprintf(why, whylen, "mkdir %s: %s", dir, strerror(errno));
		return false;
	}
	sp->root = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (sp->root < 0) {
		snprintf(why, whylen, "open %s: %s", dir, strerror(errno));
		return false;
	}
	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
		if (create) {
			if (mkdirat(sp->root, spool_subdirs[i], 0700) == 0)
				made = true;
			else if (errno != EEXIST) {
				snprintf(why, whylen, "mkdir %s/%s: %s", dir, spool_subdirs[i],
					 strerror(errno));
				spool_close(sp);
				return false;
			}
		}
		*fds[i] = openat(sp->root, spool_subdirs[i],
				 O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
		if (*fds[i] < 0 && !create && errno == ENOENT && strcmp(spool_subdirs[i], SPOOL_LATE_SUBDIR) == 0)
			continue;
		if (*fds[i] < 0) {
			snprintf(why, whylen, "open %s/%s: %s", dir, spool_subdirs[i],
				 strerror(errno));
			spool_close(sp);
			return false;
		}
	}
	if (made && fsync(sp->root) < 0) {
		snprintf(why, whylen, "fsync %s: %s", dir, strerror(errno));
		spool_close(sp);
		return false;
	}
	return true;
}

static DIR *open_dir(int dirfd)
{
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	DIR *d = fdopendir(fd);
	if (!d)
		close(fd);
	return d;
}

/* Move a file that cannot be read aside into corrupt/ (the caller holds
 * its lock), keeping its name or adding ".N" if that is taken. */
static bool move_to_corrupt(struct spool *sp, int from, const char *name, const char *reason)
{
	char dst[NAME_MAX + 16];
	const char *qid = id_valid(name) ? name : NULL;
	snprintf(dst, sizeof(dst), "%s", name);
	for (int i = 1;; i++) {
		int e = rename_noreplace(from, name, sp->corrupt, dst);
		if (e == 0)
			break;
		if (e != EEXIST || i > 1000) {
			log_error(NULL, qid, "queue_corrupt_move_failed", "file=%s reason=%s error=%s",
				  name, reason, strerror(e));
			return false;
		}
		snprintf(dst, sizeof(dst), "%s.%d", name, i);
	}
	if (fsync(sp->corrupt) < 0 || fsync(from) < 0)
		log_error(NULL, qid, "queue_corrupt_sync_failed", "file=%s error=%s", name,
			  strerror(errno));
	log_error(NULL, qid, "queue_file_corrupt", "file=%s reason=%s moved_to=%s", name, reason,
		  dst);
	return true;
}

/* ---- queue file encoding ------------------------------------------------- */

#define RETRY_WARNED    1u          /* retry flag: delay warning sent */

struct retry {
	unsigned attempts;
	unsigned flags;             /* RETRY_* */
	long long next_try_ms;      /* 0: due now */
	long long last_try_ms;
	char err[RETRY_ERR_MAX + 1];
};

static void retry_encode(unsigned char *o, const struct retry *r)
{
	size_t n = text_cut(r->err, RETRY_ERR_MAX);
	memset(o, 0, RETRY_SIZE);
	memcpy(o, "RTRY", 4);
	put32(o + 4, r->attempts);
	put64(o + 8, (uint64_t)r->next_try_ms);
	put64(o + 16, (uint64_t)r->last_try_ms);
	put16(o + 24, (uint32_t)n);
	put16(o + 26, r->flags);
	memcpy(o + RETRY_ERR_OFF, r->err, n);
	put32(o + RETRY_SIZE - 4, crc32c(0, o, RETRY_SIZE - 4));
}

static const char *retry_decode(const unsigned char *in, struct retry *r)
{
	if (memcmp(in, "RTRY", 4) != 0)
		return "bad retry block marker";
	if (get32(in + RETRY_SIZE - 4) != crc32c(0, in, RETRY_SIZE - 4))
		return "retry block checksum mismatch";
	size_t n = get16(in + 24);
	if (n > RETRY_ERR_MAX || memchr(in + RETRY_ERR_OFF, 0, n))
		return "bad last error in retry block";
	r->attempts = get32(in + 4);
	r->next_try_ms = (long long)get64(in + 8);
	r->last_try_ms = (long long)get64(in + 16);
	r->flags = get16(in + 26);
	memcpy(r->err, in + RETRY_ERR_OFF, n);
	r->err[n] = '\0';
	return NULL;
}

static bool valid_state(int c)
{
	return c == RCPT_PENDING || c == RCPT_DONE || c == RCPT_FAILED || c == RCPT_BOUNCED;
}

static void rs_encode(unsigned char *o, const struct env_rcpt *r, unsigned attempts,
		      long long updated_ms)
{
	const char *reply = r->last_reply ? r->last_reply : "";
	size_t n = text_cut(reply, RS_REPLY_MAX);
	memset(o, 0, RS_SIZE);
	o[0] = 'R';
	o[1] = (unsigned char)(valid_state((int)r->state) ? r->state : RCPT_PENDING);
	put16(o + 2, (uint32_t)n);
	put32(o + 4, attempts);
	put32(o + 8, (uint32_t)r->last_code);
	put64(o + 12, (uint64_t)updated_ms);
	memcpy(o + RS_REPLY_OFF, reply, n);
	put32(o + RS_SIZE - 4, crc32c(0, o, RS_SIZE - 4));
}

static const char *rs_decode(const unsigned char *in, struct envelope *env, struct env_rcpt *r,
			     unsigned *attempts, long long *updated_ms)
{
	if (in[0] != 'R')
		return "bad recipient record marker";
	if (get32(in + RS_SIZE - 4) != crc32c(0, in, RS_SIZE - 4))
		return "recipient record checksum mismatch";
	if (!valid_state(in[1]))
		return "bad recipient state";
	size_t n = get16(in + 2);
	if (n > RS_REPLY_MAX || memchr(in + RS_REPLY_OFF, 0, n))
		return "bad recipient reply";
	r->state = (enum rcpt_state)in[1];
	*attempts = get32(in + 4);
	r->last_code = (int)(int32_t)get32(in + 8);
	*updated_ms = (long long)get64(in + 12);
	r->last_reply = n ? pool_strndup(env->pool, (const char *)in + RS_REPLY_OFF, n) : NULL;
	return NULL;
}

static void tlv(struct buf *b, unsigned tag, const void *v, size_t n)
{
	unsigned char h[6];
	put16(h, tag);
	put32(h + 2, (uint32_t)n);
	buf_append(b, h, sizeof(h));
	buf_append(b, v, n);
}

static void tlv_str(struct buf *b, unsigned tag, const char *s)
{
	if (s)
		tlv(b, tag, s, strlen(s));
}

static void tlv_u32(struct buf *b, unsigned tag, uint32_t v)
{
	unsigned char x[4];
	put32(x, v);
	tlv(b, tag, x, sizeof(x));
}

/* Serialise a whole new queue file into b.  The data checksum and the
 * trailer checksum are filled in later by qf_seal() (commit thread). */
static bool qf_build(struct buf *b, const char *qid, const struct envelope *env, const char *data,
		     size_t len, const char *note, size_t *data_off, char *why, size_t whylen)
{
	unsigned char blk[RETRY_SIZE > RS_SIZE ? RETRY_SIZE : RS_SIZE];
	unsigned char x[8];
	if (env->nrcpt > NRCPT_MAX) {
		snprintf(why, whylen, "too many recipients (%zu)", env->nrcpt);
		return false;
	}
	memset(blk, 0, PRE_SIZE);
	buf_append(b, blk, PRE_SIZE);
	tlv_str(b, T_QID, qid);
	tlv_str(b, T_SENDER, env->sender ? env->sender : "");
	tlv_str(b, T_CORRELATION, env->correlation_id);
	put64(x, (uint64_t)(int64_t)env->arrival);
	tlv(b, T_ARRIVAL, x, 8);
	tlv_u32(b, T_FLAGS, (env->body_8bit ? QF_FLAG_8BIT : 0) | (env->smtputf8 ? QF_FLAG_SMTPUTF8 : 0));
	tlv_str(b, T_RET, env->ret);
	tlv_str(b, T_ENVID, env->envid);
	tlv_str(b, T_CLIENT_ADDR, env->client.addr);
	tlv_str(b, T_CLIENT_NAME, env->client.name);
	tlv_str(b, T_CLIENT_HELO, env->client.helo);
	tlv_str(b, T_CLIENT_PROTO, env->client.proto);
	tlv_str(b, T_CLIENT_LOGIN, env->client.login);
	tlv_u32(b, T_CLIENT_PORT, (uint32_t)env->client.port);
	for (size_t i = 0; i < env->nrcpt; i++) {
		const struct env_rcpt *r = &env->rcpts[i];
		tlv_str(b, T_RCPT, r->addr ? r->addr : "");
		tlv_str(b, T_RCPT_ORCPT, r->orcpt);
		if (r->notify)
			tlv_u32(b, T_RCPT_NOTIFY, r->notify);
	}
	size_t hdr_len = b->len - PRE_SIZE;
	if (hdr_len > HDR_MAX) {
		snprintf(why, whylen, "envelope too large (%zu bytes)", hdr_len);
		return false;
	}
	unsigned char *pre = (unsigned char *)b->data;
	memcpy(pre, QF_MAGIC, 8);
	put32(pre + 8, QF_VERSION);
	put32(pre + 12, 0);
	put32(pre + 16, (uint32_t)hdr_len);
	put32(pre + 20, (uint32_t)env->nrcpt);
	put64(pre + 24, (uint64_t)len);
	uint32_t hcrc = crc32c(0, b->data, PRE_SIZE + hdr_len);

	struct retry r = { 0 };
	if (note)
		snprintf(r.err, sizeof(r.err), "%s", note);
	retry_encode(blk, &r);
	buf_append(b, blk, RETRY_SIZE);
	for (size_t i = 0; i < env->nrcpt; i++) {
		rs_encode(blk, &env->rcpts[i], 0, 0);
		buf_append(b, blk, RS_SIZE);
	}
	*data_off = b->len;
	buf_append(b, data, len);
	memset(blk, 0, TRAILER_SIZE);
	memcpy(blk, QF_END_MAGIC, 8);
	put32(blk + 8, hcrc);
	put64(blk + 16, (uint64_t)(b->len + TRAILER_SIZE));
	buf_append(b, blk, TRAILER_SIZE);
	return true;
}

static void qf_seal(char *file, size_t file_len, size_t data_off, size_t data_len)
{
	unsigned char *tr = (unsigned char *)file + file_len - TRAILER_SIZE;
	put32(tr + 12, crc32c(0, file + data_off, data_len));
	put32(tr + 28, crc32c(0, tr, 28));
}

/* ---- queue file parsing -------------------------------------------------- */

struct qfile {
	char qid[ID_LEN + 1];
	struct envelope *env;
	struct retry retry;
	unsigned *rattempts;        /* per recipient */
	long long *rupdated;        /* per recipient */
	uint32_t nrcpt;
	uint64_t data_len;
	off_t retry_off, rcpt_off, data_off, size;
	char *data;                 /* loaded with full=true, NUL-terminated */
};

static void qf_free(struct qfile *f)
{
	envelope_free(f->env);
	free(f->rattempts);
	free(f->rupdated);
	free(f->data);
	memset(f, 0, sizeof(*f));
}

static bool is_binary_tag(unsigned tag)
{
	return tag == T_ARRIVAL || tag == T_FLAGS || tag == T_CLIENT_PORT || tag == T_RCPT_NOTIFY;
}

static const char *parse_header(const unsigned char *p, size_t len, struct qfile *f)
{
	const unsigned char *end = p + len;
	struct envelope *env = f->env;
	struct env_rcpt *cur = NULL;
	bool have_qid = false, have_sender = false, have_arrival = false;

	while (p < end) {
		if ((size_t)(end - p) < 6)
			return "truncated header field";
		unsigned tag = get16(p);
		size_t n = get32(p + 2);
		p += 6;
		if (n > (size_t)(end - p))
			return "header field overruns the header";
		const char *s = (const char *)p;
		if (!is_binary_tag(tag) && memchr(s, 0, n))
			return "NUL byte in a header text field";
		if (is_binary_tag(tag) && n != (tag == T_ARRIVAL ? 8u : 4u))
			return "bad length of a numeric header field";
		switch (tag) {
		case T_QID:
			if (n != ID_LEN)
				return "bad queue id field";
			memcpy(f->qid, s, n);
			f->qid[n] = '\0';
			if (!id_valid(f->qid))
				return "bad queue id field";
			have_qid = true;
			break;
		case T_SENDER:
			env->sender = pool_strndup(env->pool, s, n);
			have_sender = true;
			break;
		case T_CORRELATION: env->correlation_id = pool_strndup(env->pool, s, n); break;
		case T_ARRIVAL:
			env->arrival = (time_t)(int64_t)get64(p);
			have_arrival = true;
			break;
		case T_FLAGS:
			env->body_8bit = (get32(p) & QF_FLAG_8BIT) != 0;
			env->smtputf8 = (get32(p) & QF_FLAG_SMTPUTF8) != 0;
			break;
		case T_RET: env->ret = pool_strndup(env->pool, s, n); break;
		case T_ENVID: env->envid = pool_strndup(env->pool, s, n); break;
		case T_CLIENT_ADDR: env->client.addr = pool_strndup(env->pool, s, n); break;
		case T_CLIENT_NAME: env->client.name = pool_strndup(env->pool, s, n); break;
		case T_CLIENT_HELO: env->client.helo = pool_strndup(env->pool, s, n); break;
		case T_CLIENT_PROTO: env->client.proto = pool_strndup(env->pool, s, n); break;
		case T_CLIENT_LOGIN: env->client.login = pool_strndup(env->pool, s, n); break;
		case T_CLIENT_PORT: env->client.port = (int)(int32_t)get32(p); break;
		case T_RCPT:
			if (env->nrcpt >= f->nrcpt)
				return "more recipients than the preamble declares";
			cur = envelope_add_rcpt(env, pool_strndup(env->pool, s, n));
			break;
		case T_RCPT_ORCPT:
			if (!cur)
				return "recipient attribute before any recipient";
			cur->orcpt = pool_strndup(env->pool, s, n);
			break;
		case T_RCPT_NOTIFY:
			if (!cur)
				return "recipient attribute before any recipient";
			cur->notify = get32(p);
			break;
		default:
			if (!(tag & TAG_OPTIONAL))
				return "unknown mandatory header field";
			break;
		}
		p += n;
	}
	if (!have_qid || !have_sender || !have_arrival)
		return "missing mandatory header field";
	if (env->nrcpt != f->nrcpt)
		return "fewer recipients than the preamble declares";
	return NULL;
}

static void io_why(char *why, size_t whylen, const char *what, int rc)
{
	if (rc < 0)
		snprintf(why, whylen, "%s: unexpected end of file", what);
	else
		snprintf(why, whylen, "%s: %s", what, strerror(rc));
}

/* Read and check a queue file open on fd.  With full, also the message
 * bytes (and their checksum).  expect_qid, if not NULL, must match the id
 * recorded in the file.  On failure why says what is wrong. */
static bool qf_read(int fd, const char *expect_qid, bool full, struct qfile *f, char *why,
		    size_t whylen)
{
	unsigned char pre[PRE_SIZE], tr[TRAILER_SIZE];
	unsigned char *mid = NULL;
	const char *e;
	struct stat st;
	int rc;

	memset(f, 0, sizeof(*f));
	if (fstat(fd, &st) < 0) {
		io_why(why, whylen, "fstat", errno);
		return false;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(why, whylen, "not a regular file");
		return false;
	}
	uint64_t size = (uint64_t)st.st_size;
	if (size < PRE_SIZE + RETRY_SIZE + TRAILER_SIZE) {
		snprintf(why, whylen, "truncated (%llu bytes)", (unsigned long long)size);
		return false;
	}
	if ((rc = pread_full(fd, pre, PRE_SIZE, 0)) != 0) {
		io_why(why, whylen, "read", rc);
		return false;
	}
	if (memcmp(pre, QF_MAGIC, 8) != 0) {
		snprintf(why, whylen, "not a queue file (bad magic)");
		return false;
	}
	if (get32(pre + 8) != QF_VERSION) {
		snprintf(why, whylen, "unsupported format version %u", (unsigned)get32(pre + 8));
		return false;
	}
	uint32_t hdr_len = get32(pre + 16);
	f->nrcpt = get32(pre + 20);
	f->data_len = get64(pre + 24);
	if (hdr_len > HDR_MAX || f->nrcpt > NRCPT_MAX) {
		snprintf(why, whylen, "header sizes out of range");
		return false;
	}
	uint64_t fixed = (uint64_t)PRE_SIZE + hdr_len + RETRY_SIZE + (uint64_t)f->nrcpt * RS_SIZE +
			 TRAILER_SIZE;
	if (f->data_len > size || fixed + f->data_len != size) {
		snprintf(why, whylen, "%s (file has %llu bytes, preamble says %llu)",
			 f->data_len > size || fixed + f->data_len > size ? "truncated"
									  : "trailing garbage",
			 (unsigned long long)size,
			 f->data_len > size ? 0ULL : (unsigned long long)(fixed + f->data_len));
		return false;
	}
	if ((rc = pread_full(fd, tr, TRAILER_SIZE, (off_t)(size - TRAILER_SIZE))) != 0) {
		io_why(why, whylen, "read", rc);
		return false;
	}
	if (memcmp(tr, QF_END_MAGIC, 8) != 0) {
		snprintf(why, whylen, "end marker missing (truncated or overwritten)");
		return false;
	}
	if (get32(tr + 28) != crc32c(0, tr, 28) || get64(tr + 16) != size) {
		snprintf(why, whylen, "bad trailer");
		return false;
	}
	size_t midlen = (size_t)hdr_len + RETRY_SIZE + (size_t)f->nrcpt * RS_SIZE;
	mid = xmalloc(midlen);
	if ((rc = pread_full(fd, mid, midlen, PRE_SIZE)) != 0) {
		io_why(why, whylen, "read", rc);
		goto fail;
	}
	if (crc32c(crc32c(0, pre, PRE_SIZE), mid, hdr_len) != get32(tr + 8)) {
		snprintf(why, whylen, "header checksum mismatch");
		goto fail;
	}
	f->env = envelope_new();
	if ((e = parse_header(mid, hdr_len, f)) != NULL) {
		snprintf(why, whylen, "%s", e);
		goto fail;
	}
	if (expect_qid && strcmp(expect_qid, f->qid) != 0) {
		snprintf(why, whylen, "queue id %s does not match the file name", f->qid);
		goto fail;
	}
	if ((e = retry_decode(mid + hdr_len, &f->retry)) != NULL) {
		snprintf(why, whylen, "%s", e);
		goto fail;
	}
	f->rattempts = xcalloc(f->nrcpt ? f->nrcpt : 1, sizeof(*f->rattempts));
	f->rupdated = xcalloc(f->nrcpt ? f->nrcpt : 1, sizeof(*f->rupdated));
	for (uint32_t i = 0; i < f->nrcpt; i++) {
		e = rs_decode(mid + hdr_len + RETRY_SIZE + (size_t)i * RS_SIZE, f->env,
			      &f->env->rcpts[i], &f->rattempts[i], &f->rupdated[i]);
		if (e) {
			snprintf(why, whylen, "recipient %u: %s", (unsigned)i + 1, e);
			goto fail;
		}
	}
	f->retry_off = (off_t)PRE_SIZE + hdr_len;
	f->rcpt_off = f->retry_off + RETRY_SIZE;
	f->data_off = f->rcpt_off + (off_t)f->nrcpt * RS_SIZE;
	f->size = (off_t)size;
	if (full) {
		if (f->data_len > SIZE_MAX - 1) {
			snprintf(why, whylen, "message too large for memory");
			goto fail;
		}
		f->data = xmalloc((size_t)f->data_len + 1);
		if ((rc = pread_full(fd, f->data, (size_t)f->data_len, f->data_off)) != 0) {
			io_why(why, whylen, "read", rc);
			goto fail;
		}
		f->data[f->data_len] = '\0';
		if (crc32c(0, f->data, (size_t)f->data_len) != get32(tr + 12)) {
			snprintf(why, whylen, "message checksum mismatch");
			goto fail;
		}
	}
	free(mid);
	return true;
fail:
	free(mid);
	qf_free(f);
	return false;
}

/* ---- in-memory state ----------------------------------------------------- */

enum item_state {
	IT_COMMITTING,              /* being made durable by the commit thread */
	IT_WAITING,                 /* in active/, timer armed for its next try */
	IT_READY,                   /* due, waiting for a delivery slot */
	IT_ACTIVE,                  /* handed to the deliverer, file locked */
	IT_SAVING,                  /* result being written, file still locked */
	IT_PARKED,                  /* given back untried by the deliverer, until
				       it calls queue_item_unpark() */
};

struct queue_item {
	struct queue *q;
	char qid[ID_LEN + 1];
	enum item_state st;
	long long due_ms;
	time_t arrival;
	off_t retry_off;            /* where the retry block is (for refresh) */
	unsigned gen;               /* last rescan that saw the file */
	struct event *timer;
	struct queue_item *hnext;               /* hash chain */
	struct queue_item *prev, *next;         /* all items */
	struct queue_item *rnext;               /* ready FIFO */
	/* while IT_ACTIVE / IT_SAVING */
	int fd;                     /* open and flock()ed */
	struct qfile f;
	unsigned char *was_pending; /* per recipient, at hand-out */
	char *defer_reason;
	char last_temp[RETRY_ERR_MAX + 1];
	bool flush;                 /* queue_flush_now() while IT_SAVING */
};

enum job_kind { JOB_SUBMIT, JOB_SAVE };

struct seg {
	off_t off;
	size_t len;
	const unsigned char *p;
};

struct job {
	struct job *next;
	enum job_kind kind;
	struct queue_item *it;
	char qid[ID_LEN + 1];
	int err;                    /* errno of the failed step, 0 if fine */
	const char *step;
	int fd;
	/* JOB_SUBMIT */
	char *file;
	size_t file_len, data_off, data_len, nrcpt;
	bool renamed;
	bool quarantine;            /* into quarantine/, not active/: never delivered */
	char *sender, *correlation;
	queue_submit_cb cb;
	void *cb_arg;
	/* JOB_SAVE */
	bool remove;                /* unlink instead of saving */
	bool keep_failed;           /* ... but move it to failed/: a recipient failed */
	unsigned char *img;         /* retry block + recipient records */
	struct seg *segs;
	size_t nsegs;
};

struct queue {
	struct event_base *base;
	struct queue_opts opts;
	char *dir, *log_id;
	struct spool sp;

	struct queue_item **hash;
	size_t hsize, nitems;
	struct queue_item *all;
	struct queue_item *ready_head, *ready_tail;
	unsigned nactive;
	unsigned gen;
	bool pumping, started, closing, paused;
	queue_deliver_fn deliver;
	void *deliver_arg;
	struct event *rescan_ev, *done_ev;
	int efd;

	pthread_t thread;
	bool thread_running;
	pthread_mutex_t mu;         /* guards the fields below */
	pthread_cond_t cv;
	struct job *jobs, *jobs_tail, *done, *done_tail;
	bool stopping;
	unsigned long long syncs;

	struct queue_stats stats;   /* counters, event loop thread only */
};

static unsigned long hash_qid(const char *s)
{
	uint64_t h = 14695981039346656037ULL;
	while (*s) {
		h ^= (unsigned char)*s++;
		h *= 1099511628211ULL;
	}
	return (unsigned long)h;
}

static struct queue_item *item_find(struct queue *q, const char *qid)
{
	for (struct queue_item *it = q->hash[hash_qid(qid) & (q->hsize - 1)]; it; it = it->hnext)
		if (strcmp(it->qid, qid) == 0)
			return it;
	return NULL;
}

static void hash_grow(struct queue *q)
{
	size_t nsize = q->hsize * 2;
	struct queue_item **nh = xcalloc(nsize, sizeof(*nh));
	for (size_t i = 0; i < q->hsize; i++) {
		struct queue_item *it = q->hash[i], *next;
		for (; it; it = next) {
			next = it->hnext;
			size_t b = hash_qid(it->qid) & (nsize - 1);
			it->hnext = nh[b];
			nh[b] = it;
		}
	}
	free(q->hash);
	q->hash = nh;
	q->hsize = nsize;
}

static struct queue_item *item_new(struct queue *q, const char *qid)
{
	struct queue_item *it = xcalloc(1, sizeof(*it));
	it->q = q;
	snprintf(it->qid, sizeof(it->qid), "%s", qid);
	it->fd = -1;
	if (q->nitems >= q->hsize)
		hash_grow(q);
	size_t b = hash_qid(qid) & (q->hsize - 1);
	it->hnext = q->hash[b];
	q->hash[b] = it;
	it->next = q->all;
	if (q->all)
		q->all->prev = it;
	q->all = it;
	q->nitems++;
	return it;
}

/* Drop what a delivery loaded. */
static void item_unload(struct queue_item *it)
{
	qf_free(&it->f);
	free(it->was_pending);
	it->was_pending = NULL;
	free(it->defer_reason);
	it->defer_reason = NULL;
	if (it->fd >= 0)
		close(it->fd);
	it->fd = -1;
}

/* Forget an item (not in the ready list). */
static void item_forget(struct queue *q, struct queue_item *it)
{
	struct queue_item **pp = &q->hash[hash_qid(it->qid) & (q->hsize - 1)];
	while (*pp && *pp != it)
		pp = &(*pp)->hnext;
	if (*pp)
		*pp = it->hnext;
	if (it->prev)
		it->prev->next = it->next;
	else
		q->all = it->next;
	if (it->next)
		it->next->prev = it->prev;
	q->nitems--;
	if (it->timer)
		event_free(it->timer);
	item_unload(it);
	free(it);
}

static long long backoff_ms(const struct queue *q, unsigned attempts)
{
	long long d = q->opts.retry_min_ms, max = q->opts.retry_max_ms;
	for (unsigned i = 1; i < attempts && d < max; i++)
		d = d > max / 2 ? max : d * 2;
	return d < max ? d : max;
}

static int fault(struct queue *q, const char *step)
{
	return q->opts.fault ? q->opts.fault(q->opts.fault_arg, step) : 0;
}

/* ---- the commit thread: make batches of jobs durable --------------------- */

static void job_free(struct job *j)
{
	free(j->file);
	free(j->sender);
	free(j->correlation);
	free(j->img);
	free(j->segs);
	free(j);
}

static void job_fail(struct job *j, const char *step, int err)
{
	j->step = step;
	j->err = err;
}

/* Where a new message goes: active/, or quarantine/. */
static int submit_dir(const struct queue *q, const struct job *j)
{
	return j->quarantine ? q->sp.quarantine : q->sp.active;
}

/* Write a new message under tmp/ and rename it into active/ (quarantine/). */
static void prepare_submit(struct queue *q, struct job *j)
{
	int e;
	j->fd = -1;
	if ((e = fault(q, "open")) != 0) {
		job_fail(j, "open", e);
		return;
	}
	j->fd = openat(q->sp.tmp, j->qid, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (j->fd < 0) {
		job_fail(j, "open", errno);
		return;
	}
	/* the lock tells start-up clean-up that this tmp file is alive */
	if (flock(j->fd, LOCK_EX) < 0) {
		e = errno;
		goto undo_tmp;
	}
	qf_seal(j->file, j->file_len, j->data_off, j->data_len);
	if ((e = fault(q, "write")) != 0 || (e = write_full(j->fd, j->file, j->file_len)) != 0) {
		job_fail(j, "write", e);
		goto undo;
	}
	free(j->file);
	j->file = NULL;
	if ((e = fault(q, "rename")) != 0 ||
	    (e = rename_noreplace(q->sp.tmp, j->qid, submit_dir(q, j), j->qid)) != 0) {
		job_fail(j, "rename", e);
		goto undo;
	}
	j->renamed = true;
	return;
undo_tmp:
	job_fail(j, "lock", e);
undo:
	unlinkat(q->sp.tmp, j->qid, 0);
	close(j->fd);
	j->fd = -1;
}

static void write_segments(struct job *j)
{
	for (size_t i = 0; i < j->nsegs && !j->err; i++) {
		int e = pwrite_full(j->fd, j->segs[i].p, j->segs[i].len, j->segs[i].off);
		if (e)
			job_fail(j, "update", e);
	}
}

/* Write a delivery result in place, or remove a finished message. */
static void prepare_save(struct queue *q, struct job *j)
{
	if (j->remove && j->keep_failed) {
		/* A recipient failed: until a delivery status notification
		 * has been queued for it, the message itself is the only
		 * record, so it moves to failed/ instead of going away. */
		write_segments(j);
		if (j->err)
			return;
		int e = rename_noreplace(q->sp.active, j->qid, q->sp.failed, j->qid);
		if (e)
			job_fail(j, "move to failed", e);
		return;
	}
	if (j->remove) {
		if (unlinkat(q->sp.active, j->qid, 0) == 0)
			return;
		int e = errno;
		write_segments(j);     /* keep the states if the file stays */
		job_fail(j, "unlink", e);
		return;
	}
	write_segments(j);
}

/* Process one batch: do every job's writes, then one sync for all of
 * them.  Returns the number of sync calls made. */
static unsigned long long run_batch(struct queue *q, struct job **batch, size_t n)
{
	unsigned long long syncs = 0;
	struct job *one = NULL;
	size_t ok = 0;
	int e = 0;

	for (size_t i = 0; i < n; i++) {
		struct job *j = batch[i];
		if (!j->err)
			(j->kind == JOB_SUBMIT ? prepare_submit : prepare_save)(q, j);
		if (!j->err) {
			ok++;
			one = j;
		}
	}
	if (ok > 0 && (e = fault(q, "sync")) == 0) {
		if (ok == 1 && one->kind == JOB_SUBMIT) {
			syncs++;
			e = sync_fd(one->fd, false);
			if (!e) {
				syncs++;
				e = sync_fd(submit_dir(q, one), false);
			}
		} else if (ok == 1) {
			syncs++;
			if (one->remove && one->keep_failed) {
				e = sync_fd(one->fd, true);
				if (!e) {
					syncs++;
					e = sync_fd(q->sp.failed, false);
				}
				if (!e) {
					syncs++;
					e = sync_fd(q->sp.active, false);
				}
			} else {
				e = one->remove ? sync_fd(q->sp.active, false) : sync_fd(one->fd, true);
			}
		} else {
			syncs++;
			e = syncfs(q->sp.root) < 0 ? errno : 0;
		}
	}
	for (size_t i = 0; i < n; i++) {
		struct job *j = batch[i];
		if (e && !j->err) {
			job_fail(j, "sync", e);
			if (j->kind == JOB_SUBMIT && j->renamed)
				unlinkat(submit_dir(q, j), j->qid, 0);
		}
		/* closing releases the lock: rampartctl may act on the file
		 * from here on, before the event loop hears of it */
		if (j->fd >= 0) {
			close(j->fd);
			j->fd = -1;
		}
	}
	return syncs;
}

static void notify_loop(struct queue *q)
{
	uint64_t one = 1;
	while (write(q->efd, &one, sizeof(one)) < 0 && errno == EINTR)
		;
}

static void *commit_main(void *arg)
{
	struct queue *q = arg;
	struct job **batch = xmalloc(q->opts.batch_max * sizeof(*batch));

	pthread_mutex_lock(&q->mu);
	for (;;) {
		while (!q->jobs && !q->stopping)
			pthread_cond_wait(&q->cv, &q->mu);
		if (!q->jobs)
			break;
		size_t n = 0;
		while (q->jobs && n < q->opts.batch_max) {
			batch[n++] = q->jobs;
			q->jobs = q->jobs->next;
		}
		if (!q->jobs)
			q->jobs_tail = NULL;
		pthread_mutex_unlock(&q->mu);

		unsigned long long syncs = run_batch(q, batch, n);

		pthread_mutex_lock(&q->mu);
		q->syncs += syncs;
		for (size_t i = 0; i < n; i++) {
			batch[i]->next = NULL;
			if (q->done_tail)
				q->done_tail->next = batch[i];
			else
				q->done = batch[i];
			q->done_tail = batch[i];
		}
		pthread_mutex_unlock(&q->mu);
		notify_loop(q);
		pthread_mutex_lock(&q->mu);
	}
	pthread_mutex_unlock(&q->mu);
	free(batch);
	return NULL;
}

static void complete_job(struct queue *q, struct job *j);

/* Hand a job to the commit thread, or run it at once without one. */
static void enqueue(struct queue *q, struct job *j)
{
	if (!q->thread_running) {
		q->syncs += run_batch(q, &j, 1);
		complete_job(q, j);
		return;
	}
	pthread_mutex_lock(&q->mu);
	j->next = NULL;
	if (q->jobs_tail)
		q->jobs_tail->next = j;
	else
		q->jobs = j;
	q->jobs_tail = j;
	pthread_cond_signal(&q->cv);
	pthread_mutex_unlock(&q->mu);
}

static void process_done(struct queue *q)
{
	pthread_mutex_lock(&q->mu);
	struct job *list = q->done;
	q->done = q->done_tail = NULL;
	pthread_mutex_unlock(&q->mu);
	while (list) {
		struct job *j = list;
		list = j->next;
		complete_job(q, j);
	}
}

static void done_cb(evutil_socket_t fd, short what, void *arg)
{
	uint64_t v;
	(void)what;
	if (read(fd, &v, sizeof(v)) < 0 && errno != EAGAIN && errno != EINTR)
		log_error(NULL, NULL, "queue_eventfd_read_failed", "error=%s", strerror(errno));
	process_done(arg);
}

/* ---- scheduler ------------------------------------------------------------ */

static void pump(struct queue *q);

static void ready_push(struct queue *q, struct queue_item *it)
{
	it->st = IT_READY;
	it->rnext = NULL;
	if (q->ready_tail)
		q->ready_tail->rnext = it;
	else
		q->ready_head = it;
	q->ready_tail = it;
}

static void item_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct queue_item *it = arg;
	(void)fd;
	(void)what;
	if (it->st != IT_WAITING)
		return;
	ready_push(it->q, it);
	pump(it->q);
}

/* Make it wait for due (ready at once if due has passed); no pumping. */
static void arm(struct queue *q, struct queue_item *it, long long due, long long now)
{
	it->st = IT_WAITING;
	it->due_ms = due;
	if (it->timer)
		evtimer_del(it->timer);
	if (!q->started || q->closing)
		return;
	if (due <= now) {
		ready_push(q, it);
		return;
	}
	if (!it->timer) {
		it->timer = evtimer_new(q->base, item_timer_cb, it);
		if (!it->timer)
			log_fatal(NULL, it->qid, "queue_timer_failed", "error=%s", "evtimer_new");
	}
	long long delay = due - now;
	struct timeval tv = { .tv_sec = (time_t)(delay / 1000),
			      .tv_usec = (suseconds_t)(delay % 1000) * 1000 };
	evtimer_add(it->timer, &tv);
}

static void schedule(struct queue *q, struct queue_item *it, long long due)
{
	arm(q, it, due, now_ms());
	pump(q);
}

static void finish(struct queue *q, struct queue_item *it, bool attempted);

/* Lock, load and check a due message, then hand it to the deliverer. */
static void dispatch(struct queue *q, struct queue_item *it)
{
	long long now = now_ms();
	char why[WHY_MAX];
	int fd = openat(q->sp.active, it->qid, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0) {
		if (errno == ENOENT) {
			log_info(NULL, it->qid, "queue_message_gone", "reason=%s",
				 "no longer in active/ (deleted or held)");
			item_forget(q, it);
		} else {
			log_error(NULL, it->qid, "queue_open_failed", "error=%s", strerror(errno));
			arm(q, it, now + q->opts.retry_min_ms, now);
		}
		return;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		/* rampartctl is working on it: try again shortly */
		log_debug(NULL, it->qid, "queue_message_busy", "retry_ms=%d", BUSY_RETRY_MS);
		close(fd);
		arm(q, it, now + BUSY_RETRY_MS, now);
		return;
	}
	if (!same_file(q->sp.active, it->qid, fd)) {
		log_info(NULL, it->qid, "queue_message_gone", "reason=%s",
			 "moved while being opened");
		close(fd);
		item_forget(q, it);
		return;
	}
	if (!qf_read(fd, it->qid, true, &it->f, why, sizeof(why))) {
		move_to_corrupt(&q->sp, q->sp.active, it->qid, why);
		q->stats.corrupt++;
		close(fd);
		item_forget(q, it);
		return;
	}
	struct envelope *env = it->f.env;
	it->fd = fd;
	it->arrival = env->arrival;
	it->retry_off = it->f.retry_off;
	it->was_pending = xcalloc(env->nrcpt ? env->nrcpt : 1, 1);
	for (size_t i = 0; i < env->nrcpt; i++)
		it->was_pending[i] = env->rcpts[i].state == RCPT_PENDING;
	it->last_temp[0] = '\0';
	it->st = IT_ACTIVE;
	q->nactive++;
	size_t pending = envelope_pending(env);
	if (pending == 0) {
		finish(q, it, false);
		return;
	}
	log_info(NULL, it->qid, "delivery_attempt", "attempt=%u pending=%zu nrcpt=%zu",
		 it->f.retry.attempts + 1, pending, env->nrcpt);
	q->deliver(q->deliver_arg, it);
}

static void pump(struct queue *q)
{
	if (q->pumping)
		return;         /* the outer call keeps going */
	q->pumping = true;
	while (q->deliver && !q->closing && !q->paused && q->nactive < q->opts.max_active && q->ready_head) {
		struct queue_item *it = q->ready_head;
		q->ready_head = it->rnext;
		if (!q->ready_head)
			q->ready_tail = NULL;
		it->rnext = NULL;
		dispatch(q, it);
	}
	q->pumping = false;
}

/* A recipient failed for good (5xx or expired).
 *
 * DSN hook: when DSN generation lands (a later issue), this is where the
 * bounce is queued — a queue_submit() of the DSN with the null sender,
 * made durable before the original file is saved or removed, after which
 * the recipient is marked RCPT_BOUNCED.  Until then the failure is
 * reported by this "bounce" log line only. */
static void bounce(struct queue *q, struct queue_item *it, size_t i)
{
	const struct envelope *env = it->f.env;
	const struct env_rcpt *r = &env->rcpts[i];
	(void)q;
	log_error(NULL, it->qid, "bounce", "rcpt=%s code=%d reply=%s sender=%s", r->addr,
		  r->last_code, r->last_reply ? r->last_reply : "", env->sender);
}

static void add_seg(struct job *j, off_t off, const unsigned char *p, size_t len)
{
	struct seg *last = j->nsegs ? &j->segs[j->nsegs - 1] : NULL;
	if (last && last->off + (off_t)last->len == off) {
		last->len += len;
		return;
	}
	j->segs[j->nsegs].off = off;
	j->segs[j->nsegs].len = len;
	j->segs[j->nsegs].p = p;
	j->nsegs++;
}

/* End of a delivery: apply expiry, log outcomes, compute the next try and
 * hand the file update (or removal) to the commit thread. */
static void finish(struct queue *q, struct queue_item *it, bool attempted)
{
	struct qfile *f = &it->f;
	struct envelope *env = f->env;
	long long now = now_ms();
	long long expiry = (long long)env->arrival * 1000 + q->opts.lifetime_ms;

	if (attempted) {
		f->retry.attempts++;
		f->retry.last_try_ms = now;
	}
	for (size_t i = 0; i < env->nrcpt; i++) {
		struct env_rcpt *r = &env->rcpts[i];
		if (!it->was_pending[i])
			continue;
		if (attempted)
			f->rattempts[i]++;
		f->rupdated[i] = now;
		if (r->state == RCPT_PENDING && now >= expiry + EXPIRY_GRACE_MS) {
			r->state = RCPT_FAILED;
			r->last_reply = pool_strdup(env->pool, EXPIRED_REPLY);
			log_warn(NULL, it->qid, "expired", "rcpt=%s age_s=%lld reply=%s", r->addr,
				 (long long)(now / 1000 - (long long)env->arrival), EXPIRED_REPLY);
			q->stats.expired++;
		}
		switch (r->state) {
		case RCPT_DONE:
			log_info(NULL, it->qid, "delivered", "rcpt=%s code=%d reply=%s", r->addr,
				 r->last_code, r->last_reply ? r->last_reply : "");
			q->stats.delivered++;
			break;
		case RCPT_FAILED:
		case RCPT_BOUNCED:
			bounce(q, it, i);
			q->stats.failed++;
			break;
		default:
			log_info(NULL, it->qid, "deferred", "rcpt=%s code=%d reply=%s", r->addr,
				 r->last_code, r->last_reply ? r->last_reply : "");
			q->stats.deferred++;
			break;
		}
	}
	size_t pending = envelope_pending(env);
	struct job *j = xcalloc(1, sizeof(*j));
	j->kind = JOB_SAVE;
	j->it = it;
	j->fd = it->fd;
	memcpy(j->qid, it->qid, sizeof(j->qid));
	j->remove = pending == 0;
	for (size_t i = 0; i < env->nrcpt; i++)
		if (env->rcpts[i].state == RCPT_FAILED)
			j->keep_failed = true;
	if (pending > 0) {
		if (it->defer_reason)
			snprintf(f->retry.err, sizeof(f->retry.err), "%s", it->defer_reason);
		else if (it->last_temp[0])
			snprintf(f->retry.err, sizeof(f->retry.err), "%s", it->last_temp);
		else if (attempted)
			snprintf(f->retry.err, sizeof(f->retry.err), "%s",
				 "no result from the deliverer");
		f->retry.err[text_cut(f->retry.err, RETRY_ERR_MAX)] = '\0';
		long long next = now + backoff_ms(q, f->retry.attempts);
		if (next > expiry)
			next = expiry > now ? expiry : now + 1000;
		f->retry.next_try_ms = next;
		it->due_ms = next;
		char ts[32];
		iso8601(ts, sizeof(ts), (time_t)(next / 1000));
		log_info(NULL, it->qid, "retry_scheduled",
			 "attempts=%u pending=%zu delay_ms=%lld next_try=%s last_error=%s",
			 f->retry.attempts, pending, next - now, ts, f->retry.err);
	}
	/* the records of the recipients handed out, and the retry block */
	size_t nr = env->nrcpt;
	j->img = xmalloc(RETRY_SIZE + nr * RS_SIZE);
	j->segs = xmalloc((nr + 1) * sizeof(*j->segs));
	retry_encode(j->img, &f->retry);
	add_seg(j, f->retry_off, j->img, RETRY_SIZE);
	for (size_t i = 0; i < nr; i++) {
		if (!it->was_pending[i])
			continue;
		unsigned char *p = j->img + RETRY_SIZE + i * RS_SIZE;
		rs_encode(p, &env->rcpts[i], f->rattempts[i], f->rupdated[i]);
		add_seg(j, f->rcpt_off + (off_t)(i * RS_SIZE), p, RS_SIZE);
	}
	it->st = IT_SAVING;
	q->nactive--;
	enqueue(q, j);
	pump(q);
}

static void complete_job(struct queue *q, struct job *j)
{
	struct queue_item *it = j->it;
	if (j->kind == JOB_SUBMIT) {
		char qid[ID_LEN + 1];
		memcpy(qid, j->qid, sizeof(qid));
		if (j->err) {
			log_error(NULL, qid, "queue_write_failed", "step=%s error=%s", j->step,
				  strerror(j->err));
			item_forget(q, it);
			if (j->cb)
				j->cb(j->cb_arg, false, qid);
		} else if (j->quarantine) {
			q->stats.quarantined++;
			log_info(NULL, qid, "quarantined", "sender=%s nrcpt=%zu size=%zu correlation=%s",
				 j->sender, j->nrcpt, j->data_len, j->correlation);
			item_forget(q, it);
			if (j->cb)
				j->cb(j->cb_arg, true, qid);
		} else {
			q->stats.accepted++;
			log_info(NULL, qid, "queued", "sender=%s nrcpt=%zu size=%zu correlation=%s",
				 j->sender, j->nrcpt, j->data_len, j->correlation);
			it->st = IT_WAITING;
			if (j->cb)
				j->cb(j->cb_arg, true, qid);
			schedule(q, it, now_ms());
		}
		job_free(j);
		return;
	}
	if (j->err)
		log_error(NULL, j->qid, j->remove ? "queue_remove_failed" : "queue_update_failed",
			  "step=%s error=%s", j->step, strerror(j->err));
	it->fd = -1;                    /* closed by the commit thread */
	if (j->remove && !j->err) {
		log_info(NULL, j->qid, "removed", "reason=%s", "no recipient pending");
		item_forget(q, it);
	} else {
		long long now = now_ms();
		long long due = j->remove ? now + q->opts.retry_min_ms : it->due_ms;
		if (it->flush)
			due = now;
		it->flush = false;
		item_unload(it);
		schedule(q, it, due);
	}
	job_free(j);
}

/* ---- recovery and rescans ------------------------------------------------- */

/* Remove tmp/ files that no live process holds a lock on. */
static void clean_tmp(struct queue *q)
{
	DIR *d = open_dir(q->sp.tmp);
	struct dirent *de;
	if (!d) {
		log_error(NULL, NULL, "queue_scan_failed", "dir=%s error=%s", "tmp", strerror(errno));
		return;
	}
	while ((de = readdir(d)) != NULL) {
		const char *name = de->d_name;
		if (is_dot(name))
			continue;
		const char *qid = id_valid(name) ? name : NULL;
		int fd = openat(q->sp.tmp, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
		if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) < 0) {
			close(fd);
			continue;       /* being written by a live process */
		}
		if (unlinkat(q->sp.tmp, name, 0) == 0)
			log_info(NULL, qid, "queue_tmp_removed", "file=%s", name);
		else
			log_warn(NULL, qid, "queue_tmp_remove_failed", "file=%s error=%s", name,
				 strerror(errno));
		if (fd >= 0)
			close(fd);
	}
	closedir(d);
}

/* A file in active/ the daemon does not know yet: check and index it. */
static void load_item(struct queue *q, const char *name, long long now)
{
	char why[WHY_MAX];
	struct qfile f;
	int fd = openat(q->sp.active, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0) {
		if (errno == ELOOP) {
			log_warn(NULL, NULL, "queue_foreign_file", "dir=%s file=%s", "active", name);
		} else if (errno != ENOENT) {
			log_error(NULL, id_valid(name) ? name : NULL, "queue_open_failed",
				  "file=%s error=%s", name, strerror(errno));
		}
		return;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0 || !same_file(q->sp.active, name, fd)) {
		close(fd);      /* busy or moving: a later scan picks it up */
		return;
	}
	if (!id_valid(name)) {
		move_to_corrupt(&q->sp, q->sp.active, name, "not a queue file name");
		q->stats.corrupt++;
		close(fd);
		return;
	}
	if (!qf_read(fd, name, false, &f, why, sizeof(why))) {
		move_to_corrupt(&q->sp, q->sp.active, name, why);
		q->stats.corrupt++;
		close(fd);
		return;
	}
	close(fd);
	struct queue_item *it = item_new(q, name);
	it->arrival = f.env->arrival;
	it->retry_off = f.retry_off;
	it->gen = q->gen;
	long long due = f.retry.next_try_ms;
	qf_free(&f);
	arm(q, it, due < now ? now : due, now);
}

/* After an offline flush: pick up an earlier next_try from the file. */
static void refresh_item(struct queue *q, struct queue_item *it, long long now)
{
	unsigned char blk[RETRY_SIZE];
	struct retry r;
	int fd = openat(q->sp.active, it->qid, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0)
		return;
	if (pread_full(fd, blk, RETRY_SIZE, it->retry_off) == 0 && !retry_decode(blk, &r) &&
	    r.next_try_ms < it->due_ms)
		arm(q, it, r.next_try_ms < now ? now : r.next_try_ms, now);
	close(fd);
}

/* Index new files of active/, forget waiting messages whose file went
 * away (deleted or held offline), and honour the flush marker. */
static void rescan(struct queue *q)
{
	DIR *d = open_dir(q->sp.active);
	struct dirent *de;
	if (!d) {
		log_error(NULL, NULL, "queue_scan_failed", "dir=%s error=%s", "active",
			  strerror(errno));
		return;
	}
	bool refresh = unlinkat(q->sp.root, FLUSH_MARKER, 0) == 0;
	long long now = now_ms();
	q->gen++;
	while ((de = readdir(d)) != NULL) {
		if (is_dot(de->d_name))
			continue;
		struct queue_item *it = id_valid(de->d_name) ? item_find(q, de->d_name) : NULL;
		if (!it) {
			load_item(q, de->d_name, now);
			continue;
		}
		it->gen = q->gen;
		if (refresh && it->st == IT_WAITING)
			refresh_item(q, it, now);
	}
	closedir(d);
	for (struct queue_item *it = q->all, *next; it; it = next) {
		next = it->next;
		if (it->st == IT_WAITING && it->gen != q->gen) {
			log_info(NULL, it->qid, "queue_message_gone", "reason=%s",
				 "no longer in active/ (deleted or held)");
			item_forget(q, it);
		}
	}
	pump(q);
}

static void rescan_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	rescan(arg);
}

/* ---- daemon API ------------------------------------------------------------- */

static void queue_free(struct queue *q)
{
	for (struct queue_item *it = q->all, *next; it; it = next) {
		next = it->next;
		if (it->timer)
			event_free(it->timer);
		item_unload(it);    /* abandoned deliveries: lock released, file untouched */
		free(it);
	}
	if (q->rescan_ev)
		event_free(q->rescan_ev);
	if (q->done_ev)
		event_free(q->done_ev);
	if (q->efd >= 0)
		close(q->efd);
	spool_close(&q->sp);
	pthread_mutex_destroy(&q->mu);
	pthread_cond_destroy(&q->cv);
	free(q->hash);
	free(q->dir);
	free(q->log_id);
	free(q);
}

struct queue *queue_open(struct event_base *base, const struct queue_opts *opts, char *why,
			 size_t whylen)
{
	if (!opts || !opts->dir || !*opts->dir) {
		snprintf(why, whylen, "no spool directory");
		return NULL;
	}
	struct queue *q = xcalloc(1, sizeof(*q));
	q->base = base;
	q->opts = *opts;
	q->dir = xstrdup(opts->dir);
	q->log_id = xstrdup(opts->log_id ? opts->log_id : "queue");
	q->opts.dir = q->dir;
	q->opts.log_id = q->log_id;
	if (q->opts.retry_min_ms <= 0)
		q->opts.retry_min_ms = 60 * 1000LL;
	if (q->opts.retry_max_ms <= 0)
		q->opts.retry_max_ms = 3600 * 1000LL;
	if (q->opts.retry_max_ms < q->opts.retry_min_ms)
		q->opts.retry_max_ms = q->opts.retry_min_ms;
	if (q->opts.lifetime_ms <= 0)
		q->opts.lifetime_ms = 5 * 86400 * 1000LL;
	if (q->opts.lifetime_ms > 100LL * 365 * 86400 * 1000)
		q->opts.lifetime_ms = 100LL * 365 * 86400 * 1000;
	if (q->opts.max_active == 0)
		q->opts.max_active = 20;
	if (q->opts.batch_max == 0)
		q->opts.batch_max = 256;
	if (q->opts.rescan_ms <= 0)
		q->opts.rescan_ms = 30 * 1000LL;
	q->efd = -1;
	q->hsize = 1024;
	q->hash = xcalloc(q->hsize, sizeof(*q->hash));
	pthread_mutex_init(&q->mu, NULL);
	pthread_cond_init(&q->cv, NULL);
	if (!spool_open(q->dir, true, &q->sp, why, whylen)) {
		queue_free(q);
		return NULL;
	}
	clean_tmp(q);
	rescan(q);
	if (base) {
		q->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (q->efd < 0) {
			snprintf(why, whylen, "eventfd: %s", strerror(errno));
			queue_free(q);
			return NULL;
		}
		q->done_ev = event_new(base, q->efd, EV_READ | EV_PERSIST, done_cb, q);
		if (!q->done_ev || event_add(q->done_ev, NULL) < 0) {
			snprintf(why, whylen, "cannot watch the commit eventfd");
			queue_free(q);
			return NULL;
		}
		int e = pthread_create(&q->thread, NULL, commit_main, q);
		if (e) {
			snprintf(why, whylen, "commit thread: %s", strerror(e));
			queue_free(q);
			return NULL;
		}
		q->thread_running = true;
	}
	log_info(NULL, NULL, "queue_opened", "queue=%s dir=%s messages=%zu corrupt=%llu mode=%s",
		 q->log_id, q->dir, q->nitems, q->stats.corrupt, base ? "daemon" : "offline");
	return q;
}

void queue_close(struct queue *q)
{
	if (!q)
		return;
	q->closing = true;
	if (q->thread_running) {
		pthread_mutex_lock(&q->mu);
		q->stopping = true;
		pthread_cond_signal(&q->cv);
		pthread_mutex_unlock(&q->mu);
		pthread_join(q->thread, NULL);
		q->thread_running = false;
	}
	process_done(q);        /* submit callbacks of the last batches run here */
	log_info(NULL, NULL, "queue_closed", "queue=%s messages=%zu syncs=%llu", q->log_id,
		 q->nitems, q->syncs);
	queue_free(q);
}

void queue_pause(struct queue *q)
{
	q->paused = true;
}

size_t queue_active(const struct queue *q)
{
	return q->nactive;
}

void queue_start(struct queue *q, queue_deliver_fn deliver, void *arg)
{
	if (!q->base) {
		log_error(NULL, NULL, "queue_start_offline", "queue=%s", q->log_id);
		return;
	}
	q->deliver = deliver;
	q->deliver_arg = arg;
	q->started = true;
	long long now = now_ms();
	for (struct queue_item *it = q->all; it; it = it->next)
		if (it->st == IT_WAITING)
			arm(q, it, it->due_ms, now);
	if (!q->rescan_ev) {
		q->rescan_ev = event_new(q->base, -1, EV_PERSIST, rescan_cb, q);
		if (!q->rescan_ev)
			log_fatal(NULL, NULL, "queue_timer_failed", "error=%s", "event_new");
		struct timeval tv = { .tv_sec = (time_t)(q->opts.rescan_ms / 1000),
				      .tv_usec = (suseconds_t)(q->opts.rescan_ms % 1000) * 1000 };
		evtimer_add(q->rescan_ev, &tv);
	}
	pump(q);
}

void queue_flush_now(struct queue *q)
{
	rescan(q);
	long long now = now_ms();
	size_t n = 0;
	for (struct queue_item *it = q->all; it; it = it->next) {
		if (it->st == IT_WAITING) {
			arm(q, it, now, now);
			n++;
		} else if (it->st == IT_SAVING) {
			it->flush = true;       /* due at once when its save completes */
			n++;
		}
	}
	log_info(NULL, NULL, "queue_flush", "queue=%s messages=%zu", q->log_id, n);
	pump(q);
}

static void submit(struct queue *q, const struct envelope *env, const char *data, size_t len, const char *reason,
		   queue_submit_cb cb, void *arg)
{
	char qid[ID_LEN + 1];
	char why[WHY_MAX];
	do
		id_new(qid);
	while (item_find(q, qid));

	struct job *j = xcalloc(1, sizeof(*j));
	struct buf b = BUF_INIT;
	j->kind = JOB_SUBMIT;
	j->quarantine = reason != NULL;
	j->fd = -1;
	memcpy(j->qid, qid, sizeof(qid));
	j->cb = cb;
	j->cb_arg = arg;
	j->nrcpt = env->nrcpt;
	j->data_len = len;
	j->sender = xstrdup(env->sender ? env->sender : "");
	j->correlation = env->correlation_id ? xstrdup(env->correlation_id) : NULL;
	if (qf_build(&b, qid, env, data ? data : "", len, reason, &j->data_off, why, sizeof(why))) {
		j->file = buf_steal(&b, &j->file_len);
	} else {
		buf_free(&b);
		log_error(NULL, qid, "queue_submit_refused", "reason=%s", why);
		job_fail(j, "encode", EFBIG);
	}
	j->it = item_new(q, qid);
	j->it->st = IT_COMMITTING;
	j->it->arrival = env->arrival;
	enqueue(q, j);
}

void queue_submit(struct queue *q, const struct envelope *env, const char *data, size_t len,
		  queue_submit_cb cb, void *arg)
{
	submit(q, env, data, len, NULL, cb, arg);
}

void queue_quarantine(struct queue *q, const struct envelope *env, const char *data, size_t len, const char *reason,
		      queue_submit_cb cb, void *arg)
{
	submit(q, env, data, len, reason && *reason ? reason : "quarantined", cb, arg);
}

const char *queue_item_id(const struct queue_item *it)
{
	return it->qid;
}

struct envelope *queue_item_envelope(struct queue_item *it)
{
	return it->f.env;
}

const char *queue_item_data(struct queue_item *it, size_t *len)
{
	if (len)
		*len = (size_t)it->f.data_len;
	return it->f.data;
}

bool queue_item_warned(const struct queue_item *it)
{
	return (it->f.retry.flags & RETRY_WARNED) != 0;
}

void queue_item_set_warned(struct queue_item *it)
{
	if (it->st == IT_ACTIVE)
		it->f.retry.flags |= RETRY_WARNED;
}

unsigned queue_item_attempts(const struct queue_item *it)
{
	return it->f.retry.attempts;
}

void queue_item_result(struct queue_item *it, size_t rcpt_index, int code, const char *reply)
{
	struct envelope *env = it->f.env;
	if (it->st != IT_ACTIVE || rcpt_index >= env->nrcpt) {
		log_error(NULL, it->qid, "queue_bad_result", "rcpt_index=%zu", rcpt_index);
		return;
	}
	struct env_rcpt *r = &env->rcpts[rcpt_index];
	if (r->state != RCPT_PENDING || !it->was_pending[rcpt_index]) {
		log_warn(NULL, it->qid, "queue_result_ignored", "rcpt=%s state=%c code=%d", r->addr,
			 (char)r->state, code);
		return;
	}
	r->last_code = code;
	r->last_reply = reply ? pool_strdup(env->pool, reply) : NULL;
	if (code >= 200 && code < 300) {
		r->state = RCPT_DONE;
	} else if (code >= 500 && code < 600) {
		r->state = RCPT_FAILED;
	} else {
		/* "addr: 451 4.3.0 text": the code once, whether or not the
		 * reply text starts with it. */
		bool has_code = reply && strlen(reply) > 3 && isdigit((unsigned char)reply[0]) &&
				isdigit((unsigned char)reply[1]) && isdigit((unsigned char)reply[2]) && reply[3] == ' ';
		if (has_code)
			snprintf(it->last_temp, sizeof(it->last_temp), "%s: %s", r->addr, reply);
		else
			snprintf(it->last_temp, sizeof(it->last_temp), "%s: %d %s", r->addr, code, reply ? reply : "");
	}
}

void queue_item_bounced(struct queue_item *it, size_t rcpt_index)
{
	struct envelope *env = it->f.env;
	if (it->st != IT_ACTIVE || rcpt_index >= env->nrcpt || env->rcpts[rcpt_index].state != RCPT_FAILED)
		return;
	env->rcpts[rcpt_index].state = RCPT_BOUNCED;
}

void queue_item_defer(struct queue_item *it, const char *reason)
{
	struct envelope *env = it->f.env;
	if (it->st != IT_ACTIVE)
		return;
	const char *text = reason ? reason : "delivery deferred";
	for (size_t i = 0; i < env->nrcpt; i++) {
		struct env_rcpt *r = &env->rcpts[i];
		if (r->state == RCPT_PENDING && it->was_pending[i]) {
			r->last_code = 0;
			r->last_reply = pool_strdup(env->pool, text);
		}
	}
	free(it->defer_reason);
	it->defer_reason = xstrdup(text);
}

void queue_item_done(struct queue *q, struct queue_item *it)
{
	if (it->q != q || it->st != IT_ACTIVE) {
		log_error(NULL, it->qid, "queue_bad_done", "state=%d", (int)it->st);
		return;
	}
	finish(q, it, true);
}

void queue_item_park(struct queue *q, struct queue_item *it)
{
	if (it->q != q || it->st != IT_ACTIVE) {
		log_error(NULL, it->qid, "queue_bad_park", "state=%d", (int)it->st);
		return;
	}
	item_unload(it);                /* closing the file releases its lock */
	it->st = IT_PARKED;
	q->nactive--;
	log_debug(NULL, it->qid, "delivery_parked", "active=%u", q->nactive);
	pump(q);
}

void queue_item_unpark(struct queue *q, struct queue_item *it)
{
	if (it->q != q || it->st != IT_PARKED) {
		log_error(NULL, it->qid, "queue_bad_unpark", "state=%d", (int)it->st);
		return;
	}
	schedule(q, it, now_ms());
}

static size_t count_dir(int dirfd)
{
	size_t n = 0;
	DIR *d = open_dir(dirfd);
	struct dirent *de;
	if (!d)
		return 0;
	while ((de = readdir(d)) != NULL)
		if (!is_dot(de->d_name))
			n++;
	closedir(d);
	return n;
}

void queue_get_stats(struct queue *q, struct queue_stats *st)
{
	*st = q->stats;
	st->messages = 0;
	st->oldest = 0;
	for (const struct queue_item *it = q->all; it; it = it->next) {
		if (it->st == IT_COMMITTING)
			continue;
		st->messages++;
		if (!st->oldest || it->arrival < st->oldest)
			st->oldest = it->arrival;
	}
	st->held = count_dir(q->sp.hold);
	st->quarantined_msgs = count_dir(q->sp.quarantine);
	st->failed_msgs = count_dir(q->sp.failed);
	pthread_mutex_lock(&q->mu);
	st->syncs = q->syncs;
	pthread_mutex_unlock(&q->mu);
}

/* ---- offline administration (rampartctl) ---------------------------------- */

struct place {
	const char *where;
	int fd;
};

#define NPLACES 5
static void places(const struct spool *sp, struct place out[NPLACES])
{
	out[0] = (struct place){ "active", sp->active };
	out[1] = (struct place){ "hold", sp->hold };
	out[2] = (struct place){ "corrupt", sp->corrupt };
	out[3] = (struct place){ "failed", sp->failed };
	out[4] = (struct place){ "quarantine", sp->quarantine };
}

/* Which directory holds qid (validated by the caller); -1 if none. */
static int locate(const struct spool *sp, const char *qid, const char **where)
{
	struct place pl[NPLACES];
	struct stat st;
	places(sp, pl);
	for (int i = 0; i < NPLACES; i++)
		if (pl[i].fd >= 0 && fstatat(pl[i].fd, qid, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode)) {
			*where = pl[i].where;
			return pl[i].fd;
		}
	return -1;
}

/* Open and lock (LOCK_NB) dirfd/qid for an administrative change. */
static int open_locked(int dirfd, const char *qid, int flags, char *why, size_t whylen)
{
	int fd = openat(dirfd, qid, flags | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0) {
		snprintf(why, whylen, errno == ENOENT ? "no such message" : "open: %s",
			 strerror(errno));
		return -1;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		snprintf(why, whylen, "busy: the message is being delivered or changed");
		close(fd);
		return -1;
	}
	if (!same_file(dirfd, qid, fd)) {
		snprintf(why, whylen, "no such message (moved meanwhile)");
		close(fd);
		return -1;
	}
	return fd;
}

/* Open the spool and find a message; false with why if not possible. */
static bool admin_find(const char *dir, const char *qid, struct spool *sp, int *dirfd,
		       const char **where, char *why, size_t whylen)
{
	if (!id_valid(qid)) {
		snprintf(why, whylen, "invalid queue id");
		return false;
	}
	if (!spool_open(dir, false, sp, why, whylen))
		return false;
	*dirfd = locate(sp, qid, where);
	if (*dirfd < 0) {
		snprintf(why, whylen, "no such message");
		spool_close(sp);
		return false;
	}
	return true;
}

/* Read a file that may be updated concurrently (no lock): a torn read of a
 * record being rewritten fails its checksum, so try again briefly. */
static bool read_unlocked(int dirfd, const char *name, bool check_qid, struct qfile *f,
			  char *why, size_t whylen, off_t *size)
{
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	struct stat st;
	if (fd < 0) {
		snprintf(why, whylen, "open: %s", strerror(errno));
		return false;
	}
	*size = fstat(fd, &st) == 0 ? st.st_size : 0;
	for (int i = 0; i < NPLACES; i++) {
		if (qf_read(fd, check_qid ? name : NULL, false, f, why, whylen)) {
			close(fd);
			return true;
		}
		struct timespec ts = { 0, 20 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
	close(fd);
	return false;
}

static int list_dir(const struct place *pl, queue_list_cb cb, void *arg)
{
	int n = 0;
	DIR *d = open_dir(pl->fd);
	struct dirent *de;
	if (!d)
		return 0;
	while ((de = readdir(d)) != NULL) {
		struct queue_entry e;
		struct qfile f;
		off_t size;
		if (is_dot(de->d_name))
			continue;
		memset(&e, 0, sizeof(e));
		scopy(e.qid, sizeof(e.qid), de->d_name);
		e.where = pl->where;
		bool check = strcmp(pl->where, "corrupt") != 0;
		char why[WHY_MAX];
		if (read_unlocked(pl->fd, de->d_name, check, &f, why, sizeof(why), &size)) {
			e.arrival = f.env->arrival;
			e.next_try = (time_t)(f.retry.next_try_ms / 1000);
			e.attempts = f.retry.attempts;
			e.size = (size_t)f.data_len;
			snprintf(e.sender, sizeof(e.sender), "%s", f.env->sender);
			e.nrcpt = f.env->nrcpt;
			e.npending = envelope_pending(f.env);
			snprintf(e.last_error, sizeof(e.last_error), "%s", f.retry.err);
			qf_free(&f);
		} else {
			e.size = (size_t)size;
			snprintf(e.last_error, sizeof(e.last_error), "unreadable: %s", why);
		}
		if (cb)
			cb(arg, &e);
		n++;
	}
	closedir(d);
	return n;
}

int queue_list(const char *dir, queue_list_cb cb, void *arg)
{
	struct spool sp;
	struct place pl[NPLACES];
	char why[WHY_MAX];
	int n = 0;
	if (!spool_open(dir, false, &sp, why, sizeof(why)))
		return -1;
	places(&sp, pl);
	for (int i = 0; i < NPLACES; i++)
		n += list_dir(&pl[i], cb, arg);
	spool_close(&sp);
	return n;
}

/* Print s with control characters made visible (terminal safety). */
static void put_safe(FILE *out, const char *s)
{
	for (; s && *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c < 0x20 || c == 0x7f)
			fprintf(out, "\\x%02x", c);
		else
			fputc(c, out);
	}
}

static void show_field(FILE *out, const char *key, const char *val)
{
	fprintf(out, "%-14s ", key);
	put_safe(out, val ? val : "-");
	fputc('\n', out);
}

static const char *state_name(enum rcpt_state s)
{
	switch (s) {
	case RCPT_PENDING: return "pending";
	case RCPT_DONE: return "delivered";
	case RCPT_FAILED: return "failed";
	case RCPT_BOUNCED: return "bounced";
	}
	return "?";
}

static void show_time_ms(FILE *out, const char *key, long long ms, const char *zero)
{
	char ts[32];
	if (ms <= 0) {
		show_field(out, key, zero);
		return;
	}
	iso8601(ts, sizeof(ts), (time_t)(ms / 1000));
	show_field(out, key, ts);
}

bool queue_show(const char *dir, const char *qid, FILE *out)
{
	struct spool sp;
	struct qfile f;
	const char *where = NULL;
	char why[WHY_MAX], num[64];
	int dirfd;
	off_t size;
	if (!admin_find(dir, qid, &sp, &dirfd, &where, why, sizeof(why)))
		return false;
	show_field(out, "queue_id:", qid);
	show_field(out, "location:", where);
	if (!read_unlocked(dirfd, qid, strcmp(where, "corrupt") != 0, &f, why, sizeof(why),
			   &size)) {
		snprintf(num, sizeof(num), "%lld bytes", (long long)size);
		show_field(out, "file_size:", num);
		show_field(out, "unreadable:", why);
		spool_close(&sp);
		return true;
	}
	const struct envelope *env = f.env;
	show_time_ms(out, "arrival:", (long long)env->arrival * 1000, "-");
	fprintf(out, "%-14s <", "sender:");
	put_safe(out, env->sender);
	fputs(">\n", out);
	snprintf(num, sizeof(num), "%llu bytes", (unsigned long long)f.data_len);
	show_field(out, "size:", num);
	show_field(out, "correlation:", env->correlation_id);
	show_field(out, "body:", env->body_8bit ? "8BITMIME" : "7BIT");
	show_field(out, "smtputf8:", env->smtputf8 ? "yes" : "no");
	show_field(out, "dsn_ret:", env->ret);
	show_field(out, "dsn_envid:", env->envid);
	show_field(out, "client_addr:", env->client.addr);
	show_field(out, "client_name:", env->client.name);
	show_field(out, "client_helo:", env->client.helo);
	show_field(out, "client_proto:", env->client.proto);
	show_field(out, "client_login:", env->client.login);
	snprintf(num, sizeof(num), "%d", env->client.port);
	show_field(out, "client_port:", num);
	snprintf(num, sizeof(num), "%u", f.retry.attempts);
	show_field(out, "attempts:", num);
	show_time_ms(out, "last_try:", f.retry.last_try_ms, "never");
	show_time_ms(out, "next_try:", f.retry.next_try_ms, "now");
	show_field(out, "last_error:", f.retry.err[0] ? f.retry.err : NULL);
	show_field(out, "delay_warned:", f.retry.flags & RETRY_WARNED ? "yes" : "no");
	fprintf(out, "%-14s %zu (%zu pending)\n", "recipients:", env->nrcpt,
		envelope_pending(env));
	for (size_t i = 0; i < env->nrcpt; i++) {
		const struct env_rcpt *r = &env->rcpts[i];
		fputs("  <", out);
		put_safe(out, r->addr);
		fprintf(out, "> state=%s attempts=%u code=%d", state_name(r->state),
			f.rattempts[i], r->last_code);
		if (r->orcpt) {
			fputs(" orcpt=", out);
			put_safe(out, r->orcpt);
		}
		if (r->notify)
			fprintf(out, " notify=%u", r->notify);
		fputs(" reply=\"", out);
		put_safe(out, r->last_reply ? r->last_reply : "");
		fputs("\"\n", out);
	}
	qf_free(&f);
	spool_close(&sp);
	return true;
}

bool queue_delete(const char *dir, const char *qid, char *why, size_t whylen)
{
	struct spool sp;
	const char *where;
	int dirfd;
	if (!admin_find(dir, qid, &sp, &dirfd, &where, why, whylen))
		return false;
	int fd = open_locked(dirfd, qid, O_RDONLY, why, whylen);
	bool ok = false;
	if (fd >= 0) {
		if (unlinkat(dirfd, qid, 0) < 0)
			snprintf(why, whylen, "unlink: %s", strerror(errno));
		else if (fsync(dirfd) < 0)
			snprintf(why, whylen, "fsync: %s", strerror(errno));
		else
			ok = true;
		close(fd);
	}
	if (ok)
		log_info(NULL, qid, "queue_deleted", "from=%s", where);
	spool_close(&sp);
	return ok;
}

/* Move a locked message between two directories, durably. */
static bool move_msg(int from, int to, const char *qid, char *why, size_t whylen)
{
	int e = rename_noreplace(from, qid, to, qid);
	if (e) {
		snprintf(why, whylen, "rename: %s", strerror(e));
		return false;
	}
	if (fsync(to) < 0 || fsync(from) < 0) {
		snprintf(why, whylen, "fsync: %s", strerror(errno));
		return false;
	}
	return true;
}

bool queue_hold(const char *dir, const char *qid, char *why, size_t whylen)
{
	struct spool sp;
	const char *where;
	int dirfd;
	if (!admin_find(dir, qid, &sp, &dirfd, &where, why, whylen))
		return false;
	bool ok = false;
	if (dirfd != sp.active) {
		snprintf(why, whylen, "message is in %s/, not active/", where);
	} else {
		int fd = open_locked(sp.active, qid, O_RDONLY, why, whylen);
		if (fd >= 0) {
			ok = move_msg(sp.active, sp.hold, qid, why, whylen);
			close(fd);
		}
	}
	if (ok)
		log_info(NULL, qid, "queue_held", "from=%s", where);
	spool_close(&sp);
	return ok;
}

/* Set next_try to 0 in a locked file (fd open read-write). */
static bool make_due(int fd, const char *qid, char *why, size_t whylen)
{
	struct qfile f;
	unsigned char blk[RETRY_SIZE];
	if (!qf_read(fd, qid, false, &f, why, whylen))
		return false;
	bool ok = true;
	if (f.retry.next_try_ms != 0) {
		f.retry.next_try_ms = 0;
		retry_encode(blk, &f.retry);
		int e = pwrite_full(fd, blk, RETRY_SIZE, f.retry_off);
		if (!e)
			e = sync_fd(fd, true);
		if (e) {
			snprintf(why, whylen, "update: %s", strerror(e));
			ok = false;
		}
	}
	qf_free(&f);
	return ok;
}

static void touch_flush_marker(const struct spool *sp)
{
	int fd = openat(sp->root, FLUSH_MARKER, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd >= 0)
		close(fd);
}

bool queue_release(const char *dir, const char *qid, char *why, size_t whylen)
{
	struct spool sp;
	const char *where;
	int dirfd;
	if (!admin_find(dir, qid, &sp, &dirfd, &where, why, whylen))
		return false;
	bool ok = false;
	if (dirfd != sp.hold && dirfd != sp.quarantine) {
		snprintf(why, whylen, "message is in %s/, not on hold or in quarantine", where);
	} else {
		int fd = open_locked(dirfd, qid, O_RDWR, why, whylen);
		if (fd >= 0) {
			char err[WHY_MAX];
			/* due at once; an unreadable file goes back anyway and the
			 * daemon moves it to corrupt/ with the reason */
			if (!make_due(fd, qid, err, sizeof(err)))
				log_warn(NULL, qid, "queue_release_unreadable", "reason=%s", err);
			ok = move_msg(dirfd, sp.active, qid, why, whylen);
			close(fd);
		}
	}
	if (ok)
		log_info(NULL, qid, "queue_released", "from=%s to=%s", where, "active");
	spool_close(&sp);
	return ok;
}

/* Failed (or bounced) recipients of qid become pending again, the retry
 * count starts over and the message is due now; from failed/ or hold/ it
 * goes back to active/.  For a message a next hop refused by mistake. */
bool queue_requeue(const char *dir, const char *qid, char *why, size_t whylen)
{
	struct spool sp;
	const char *where;
	int dirfd;
	if (!admin_find(dir, qid, &sp, &dirfd, &where, why, whylen))
		return false;
	bool ok = false;
	if (dirfd == sp.corrupt) {
		snprintf(why, whylen, "message is in corrupt/: it cannot be read");
		spool_close(&sp);
		return false;
	}
	int fd = open_locked(dirfd, qid, O_RDWR, why, whylen);
	if (fd >= 0) {
		struct qfile f;
		if (qf_read(fd, qid, false, &f, why, whylen)) {
			size_t n = 0;
			int e = 0;
			unsigned char rec[RS_SIZE];
			for (uint32_t i = 0; i < f.nrcpt && !e; i++) {
				struct env_rcpt *r = &f.env->rcpts[i];
				if (r->state != RCPT_FAILED && r->state != RCPT_BOUNCED)
					continue;
				r->state = RCPT_PENDING;
				rs_encode(rec, r, 0, now_ms());
				e = pwrite_full(fd, rec, RS_SIZE, f.rcpt_off + (off_t)i * RS_SIZE);
				n++;
			}
			unsigned char blk[RETRY_SIZE];
			f.retry.attempts = 0;
			f.retry.next_try_ms = 0;
			retry_encode(blk, &f.retry);
			if (!e)
				e = pwrite_full(fd, blk, RETRY_SIZE, f.retry_off);
			if (!e)
				e = sync_fd(fd, true);
			if (e)
				snprintf(why, whylen, "update: %s", strerror(e));
			else if (n == 0 && envelope_pending(f.env) == 0)
				snprintf(why, whylen, "no recipient left to deliver");
			else
				ok = dirfd == sp.active || move_msg(dirfd, sp.active, qid, why, whylen);
			if (ok)
				log_info(NULL, qid, "queue_requeued", "from=%s recipients=%zu", where, n);
			qf_free(&f);
		}
		close(fd);
	}
	if (ok)
		touch_flush_marker(&sp);
	spool_close(&sp);
	return ok;
}

int queue_flush(const char *dir, const char *qid)
{
	struct spool sp;
	char why[WHY_MAX];
	int n = 0;
	if (qid && !id_valid(qid))
		return -1;
	if (!spool_open(dir, false, &sp, why, sizeof(why)))
		return -1;
	if (qid) {
		int fd = open_locked(sp.active, qid, O_RDWR, why, sizeof(why));
		if (fd < 0) {
			spool_close(&sp);
			return -1;
		}
		if (make_due(fd, qid, why, sizeof(why)))
			n = 1;
		close(fd);
	} else {
		DIR *d = open_dir(sp.active);
		struct dirent *de;
		if (!d) {
			spool_close(&sp);
			return -1;
		}
		while ((de = readdir(d)) != NULL) {
			if (!id_valid(de->d_name))
				continue;
			/* busy ones are out for delivery: they get a new time anyway */
			int fd = open_locked(sp.active, de->d_name, O_RDWR, why, sizeof(why));
			if (fd < 0)
				continue;
			if (make_due(fd, de->d_name, why, sizeof(why)))
				n++;
			close(fd);
		}
		closedir(d);
	}
	touch_flush_marker(&sp);
	log_info(NULL, qid, "queue_flush_requested", "messages=%d", n);
	spool_close(&sp);
	return n;
}
