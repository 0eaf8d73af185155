/*
 * walproto.h: the bytes of a logical replication stream, parsed without I/O or allocation, so the
 * WAL source (walsource.c) only moves them and a fuzzer can reach every branch
 * (tests/fuzz/fuzz_walproto.c).  Integers on the wire are big-endian; times are microseconds
 * since 2000-01-01 UTC; positions (LSNs) are unsigned 64-bit.
 *
 * Frames are the payloads of CopyData messages in a START_REPLICATION ... LOGICAL stream:
 *   'w' XLogData:  int64 dataStart, int64 walEnd, int64 sendTime, then one pgoutput message
 *   'k' keepalive: int64 walEnd, int64 sendTime, byte replyRequested
 * pgoutput messages (protocol version 1) the relay reads; every other type is reported as
 * WALP_OTHER and skipped:
 *   'B' Begin:   int64 final_lsn, int64 commit_time, int32 xid
 *   'M' Message: int8 flags (1 = transactional), int64 lsn, prefix (NUL-terminated),
 *                int32 length, content
 *   'C' Commit:  int8 flags, int64 commit_lsn, int64 end_lsn, int64 commit_time
 */
#ifndef OUTBOX_WALPROTO_H
#define OUTBOX_WALPROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A frame of the stream. */
typedef struct {
    char kind;                  /* 'w' or 'k' */
    uint64_t wal_start;         /* 'w': dataStart */
    uint64_t wal_end;           /* both: the server's WAL end */
    int64_t send_time;          /* both */
    bool reply_requested;       /* 'k' */
    const uint8_t *data;        /* 'w': the pgoutput message, borrowed from the frame */
    size_t data_len;
} walp_frame_t;

enum { WALP_BEGIN = 'B', WALP_MESSAGE = 'M', WALP_COMMIT = 'C', WALP_OTHER = 0 };

/* A pgoutput message.  Pointers borrow from the buffer that was parsed. */
typedef struct {
    int type;                   /* WALP_BEGIN, WALP_MESSAGE, WALP_COMMIT or WALP_OTHER */
    uint8_t raw_type;           /* the type byte as received (for WALP_OTHER: which one) */
    /* Begin */
    uint64_t final_lsn;
    uint32_t xid;
    /* Begin and Commit */
    int64_t commit_time;
    /* Message */
    bool transactional;         /* flags & 1 */
    uint64_t lsn;
    const char *prefix;         /* NUL-terminated inside the buffer */
    size_t prefix_len;
    const uint8_t *content;
    size_t content_len;
    /* Commit */
    uint64_t commit_lsn, end_lsn;
} walp_msg_t;

/* Parses one CopyData payload.  0 with *f set; -1 when it is malformed (truncated, unknown
 * kind), with why written (NUL-terminated, at most why_size bytes). */
int walp_frame_parse(const uint8_t *buf, size_t len, walp_frame_t *f, char *why, size_t why_size);

/* Parses one pgoutput message (an XLogData frame's data).  0 with *m set (type WALP_OTHER for any
 * type the relay skips, without looking further); -1 when a Begin, Message or Commit is
 * malformed, with why written. */
int walp_msg_parse(const uint8_t *buf, size_t len, walp_msg_t *m, char *why, size_t why_size);

/* The standby status update ('r'): written, flushed and applied positions, the client's clock and
 * whether the server should answer at once.  Writes 34 bytes to out and returns 34. */
size_t walp_status_encode(uint8_t out[34], uint64_t written, uint64_t flushed, uint64_t applied,
                          int64_t now_pg_us, bool reply_requested);

/* The current time in the stream's unit: microseconds since 2000-01-01 UTC. */
int64_t walp_now_pg_us(void);

/* An LSN as PostgreSQL prints it ("16/B374D848"): 0 with *lsn set, -1 if s is not one. */
int walp_lsn_parse(const char *s, uint64_t *lsn);
/* Writes lsn as PostgreSQL prints it into out (at least 18 bytes) and returns out. */
char *walp_lsn_format(uint64_t lsn, char out[18]);

#endif
